"""Server settings: where to bind, how much work to accept, how much to keep (``unclip serve`` options)."""

from __future__ import annotations

from dataclasses import dataclass

# Hard ceilings of the request schemas (the OpenAPI document shows them); a server may set lower limits.
MAX_IMAGES = 16
MAX_STEPS = 500
MAX_GUIDANCE = 100.0
MAX_ETA = 10.0
MAX_BEST_OF = 16
MAX_FRAMES = 32
MAX_THETAS = 11
MAX_THETA = 0.5
MAX_SEED = 2**63 - 1
MAX_UPLOAD_SIDE = 4096


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
