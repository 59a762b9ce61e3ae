"""Server settings: where to bind, how much work to accept, how much to keep (``unclip serve`` options)."""

from __future__ import annotations

from dataclasses import dataclass

from unclip.pipeline.bounds import (
    MAX_BEST_OF,
    MAX_ETA,
    MAX_FRAMES,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_SEED,
    MAX_STEPS,
    MAX_THETAS,
    MIN_FRAMES,
    THETA_RANGE,
)
from unclip.pipeline.options import MAX_PROMPT_CHARS

# The hard ceilings are unclip.pipeline.bounds (re-exported here); a server applies lower ones (RequestLimits).
MAX_THETA = THETA_RANGE[1]
MAX_UPLOAD_SIDE = 4096

__all__ = [
    "MAX_BEST_OF", "MAX_ETA", "MAX_FRAMES", "MAX_GUIDANCE", "MAX_IMAGES", "MAX_PROMPT_CHARS", "MAX_SEED", "MAX_STEPS",
    "MAX_THETA", "MAX_THETAS", "MAX_UPLOAD_SIDE", "MIN_FRAMES", "THETA_RANGE", "RequestLimits", "ServeConfig",
]  # fmt: skip


@dataclass(frozen=True)
class RequestLimits:
    """The limits one server applies to requests: its request schemas, ``/docs`` and ``/api/v1/config`` show them.

    The defaults are the hard ceilings of :mod:`unclip.pipeline.bounds`; :attr:`ServeConfig.limits` lowers
    ``max_images`` (which also bounds frames and thetas, each an image) and ``max_steps``.
    """

    max_images: int = MAX_IMAGES
    max_frames: int = MAX_FRAMES
    max_thetas: int = MAX_THETAS
    max_steps: int = MAX_STEPS
    max_guidance: float = MAX_GUIDANCE
    max_eta: float = MAX_ETA
    max_best_of: int = MAX_BEST_OF
    max_seed: int = MAX_SEED
    max_prompt_chars: int = MAX_PROMPT_CHARS
    min_frames: int = MIN_FRAMES
    theta_range: tuple[float, float] = THETA_RANGE


@dataclass
class ServeConfig:
    """What ``unclip serve`` accepts and keeps.

    Attributes:
        model: built-in model name or pipeline directory (shown by ``/api/v1/config``; used by "copy as CLI").
        host, port: where ``unclip serve`` binds (127.0.0.1 by default: local use only).
        max_queue: jobs that may wait behind the one that computes; one more is answered 429.
        max_body_bytes: largest request body, counted while reading (chunked bodies too); more is 413.
        max_images: most images one request may ask for (images per prompt, variations, frames, thetas).
        max_steps: most sampling steps of any stage.
        store_images: results kept (oldest dropped first); store_bytes: their PNG bytes kept at most.
        keep_jobs: finished jobs remembered (oldest dropped first).
        max_streams: event streams open at once; more is 429.
        device: torch device of the model.
    """

    model: str = "shapes"
    host: str = "127.0.0.1"
    port: int = 8000
    max_queue: int = 4
    max_body_bytes: int = 8 * 1024 * 1024
    max_images: int = 8
    max_steps: int = 200
    store_images: int = 256
    store_bytes: int = 64 * 1024 * 1024
    keep_jobs: int = 256
    max_streams: int = 32
    device: str = "cpu"

    def __post_init__(self) -> None:
        checks = {
            "max_queue": (0, 1000),
            "max_body_bytes": (1024, 1 << 31),
            "max_images": (1, MAX_IMAGES),
            "max_steps": (1, MAX_STEPS),
            "store_images": (1, 1_000_000),
            "store_bytes": (1024, 1 << 40),
            "keep_jobs": (1, 1_000_000),
            "max_streams": (1, 10_000),
            "port": (0, 65535),
        }
        for name, (lo, hi) in checks.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")

    @property
    def limits(self) -> RequestLimits:
        """What this server accepts: the hard ceilings, with ``max_images`` and ``max_steps`` applied."""
        return RequestLimits(
            max_images=self.max_images,
            max_frames=max(MIN_FRAMES, min(MAX_FRAMES, self.max_images)),
            max_thetas=min(MAX_THETAS, self.max_images),
            max_steps=self.max_steps,
        )
