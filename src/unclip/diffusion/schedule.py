"""Noise schedules (cosine, linear) and respacing.

A :class:`NoiseSchedule` holds the betas of a discrete Gaussian diffusion and every table derived from
them, in float64 on the CPU. It also carries ``timesteps``: for each of its steps, the index of that step
in the *original* (training) schedule. A training schedule has ``timesteps = arange(1000)``; a respaced
schedule (:meth:`NoiseSchedule.respace`) keeps a subset of the original steps, recomputes its betas so
that its ``alphas_cumprod`` equal the original ones at the kept steps (Nichol & Dhariwal 2021, §4;
guided-diffusion ``respace.py``), and maps its step ``i`` to original step ``timesteps[i]``. Networks
always receive original indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "NoiseSchedule",
    "cosine_betas",
    "linear_betas",
    "make_schedule",
    "space_timesteps",
    "extract",
]


def cosine_betas(num_timesteps: int = 1000, max_beta: float = 0.999, s: float = 0.008) -> Tensor:
    """Cosine ("squaredcos_cap_v2") betas of improved DDPM (Nichol & Dhariwal 2021, eq. 17).

    ``alpha_bar(t) = cos(((t/T + s)/(1 + s)) * pi/2)^2`` and ``beta_t = min(1 - alpha_bar(t+1)/alpha_bar(t),
    max_beta)``.

    Returns:
        float64 tensor [num_timesteps], values in (0, max_beta].
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")

    def alpha_bar(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = [
        min(1.0 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps), max_beta)
        for i in range(num_timesteps)
    ]
    return torch.tensor(betas, dtype=torch.float64)


def linear_betas(num_timesteps: int = 1000, beta_start: float | None = None, beta_end: float | None = None) -> Tensor:
    """Linear betas of DDPM (Ho et al. 2020), scaled for ``num_timesteps`` like improved DDPM.

    Defaults: ``beta_start = 1e-4 * 1000/T``, ``beta_end = 0.02 * 1000/T`` (= 1e-4 .. 0.02 for T = 1000,
    diffusers' "linear").

    Returns:
        float64 tensor [num_timesteps].
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    scale = 1000.0 / num_timesteps
    start = 1e-4 * scale if beta_start is None else beta_start
    end = 0.02 * scale if beta_end is None else beta_end
    if not 0.0 < start <= end < 1.0:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {start}, {end}")
    return torch.linspace(start, end, num_timesteps, dtype=torch.float64)


def space_timesteps(num_timesteps: int, spec: str | int | Sequence[int]) -> list[int]:
    """Which original steps a respaced schedule keeps (ascending, unique).

    Args:
        num_timesteps: length of the schedule being respaced.
        spec:
            - ``"25"`` or ``25``: 25 steps evenly spaced over [0, T-1], ``round(i*(T-1)/(n-1))`` (Karlo's
              ``space_timesteps`` and diffusers' UnCLIPScheduler: "7" -> 0, 166, 333, 500, 666, 832, 999);
            - ``"10,10,5"``: sections, as guided-diffusion: split [0, T) into equal parts and space each
              part's count evenly inside it;
            - ``"ddim25"``: the even integer stride giving exactly 25 steps, ``range(0, T, stride)``
              (DDIM / diffusers "leading": 0, 40, ..., 960);
            - a sequence of ints: exactly those steps.

    Returns:
        sorted list of kept step indices in [0, num_timesteps).
    """
    T = num_timesteps
    if isinstance(spec, bool):
        raise TypeError(f"respacing spec must be str, int or a sequence of ints, got {spec!r}")
    if isinstance(spec, int):
        spec = str(spec)
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("ddim"):
            count = _parse_count(text[4:], spec)
            for stride in range(1, T + 1):
                if len(range(0, T, stride)) == count:
                    return list(range(0, T, stride))
            raise ValueError(f"cannot make {count} DDIM steps with an integer stride from {T} steps ({spec!r})")
        counts = [_parse_count(part, spec) for part in text.split(",")]
        return _sectioned(T, counts, spec)
    try:
        kept = sorted({int(s) for s in spec})
    except (TypeError, ValueError) as err:
        raise TypeError(f"respacing spec must be str, int or a sequence of ints, got {spec!r}") from err
    if not kept:
        raise ValueError("respacing list is empty")
    if kept[0] < 0 or kept[-1] >= T:
        raise ValueError(f"respacing steps must lie in [0, {T - 1}], got {kept[0]}..{kept[-1]}")
    return kept


def _parse_count(text: str, spec: object) -> int:
    try:
        count = int(text)
    except ValueError as err:
        raise ValueError(f"bad respacing spec {spec!r}: {text!r} is not an integer") from err
    if count < 1:
        raise ValueError(f"bad respacing spec {spec!r}: step counts must be >= 1")
    return count


def _sectioned(T: int, counts: list[int], spec: object) -> list[int]:
    size_per, extra = divmod(T, len(counts))
    start = 0
    kept: list[int] = []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if count > size:
            raise ValueError(f"bad respacing spec {spec!r}: cannot take {count} steps from a section of {size}")
        if count == 1:
            kept.append(start)
        else:
            stride = (size - 1) / (count - 1)  # float product, like diffusers' arange(n) * step_ratio
            kept.extend(start + round(j * stride) for j in range(count))
        start += size
    return sorted(set(kept))


def _cpu_float64(values: Tensor | Sequence[float]) -> Tensor:
    return torch.as_tensor(values, dtype=torch.float64, device="cpu").clone()


class NoiseSchedule:
    """A discrete Gaussian diffusion schedule: betas and the tables derived from them.

    All tables are float64 [N] CPU tensors (N = ``len(self)``), indexed by this schedule's step index i:
    ``betas``, ``alphas``, ``alphas_cumprod`` (ᾱ_i), ``alphas_cumprod_prev`` (ᾱ_{i-1}, 1 at i=0),
    ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``, ``sqrt_recip_alphas_cumprod``,
    ``sqrt_recipm1_alphas_cumprod``, ``log_betas``, ``posterior_variance`` (β̃_i, 0 at i=0),
    ``posterior_log_variance_clipped`` (log β̃ with β̃_0 replaced by β̃_1), ``posterior_mean_coef1``
    (x0 coefficient), ``posterior_mean_coef2`` (x_t coefficient). ``timesteps`` (long [N]) maps step i to
    the original training step index that the network sees.

    Args:
        betas: [N] values in (0, 1]; or None when ``alphas_cumprod`` is given.
        timesteps: [N] strictly increasing original indices; default ``arange(N)``.
        num_train_timesteps: length of the original schedule; default N.
        alphas_cumprod: [N] strictly decreasing ᾱ in (0, 1) instead of ``betas`` (kept exactly; the
            per-step α = ᾱ_i/ᾱ_{i-1} are derived without cancellation).
    """

    def __init__(
        self,
        betas: Tensor | Sequence[float] | None = None,
        timesteps: Tensor | Sequence[int] | None = None,
        num_train_timesteps: int | None = None,
        *,
        alphas_cumprod: Tensor | Sequence[float] | None = None,
    ) -> None:
        if (betas is None) == (alphas_cumprod is None):
            raise ValueError("give exactly one of betas and alphas_cumprod")
        if betas is not None:
            betas = _cpu_float64(betas)
            if betas.ndim != 1 or betas.numel() == 0:
                raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
            if not bool(((betas > 0) & (betas <= 1)).all()):
                raise ValueError(f"betas must lie in (0, 1], got min {betas.min().item()} max {betas.max().item()}")
            alphas = 1.0 - betas
            acp = torch.cumprod(alphas, dim=0)
        else:
            acp = _cpu_float64(alphas_cumprod)
            if acp.ndim != 1 or acp.numel() == 0:
                raise ValueError(f"alphas_cumprod must be a non-empty 1-D sequence, got shape {tuple(acp.shape)}")
            prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
            if not bool(((acp > 0) & (acp < prev)).all()):
                raise ValueError("alphas_cumprod must be strictly decreasing values in (0, 1)")
            alphas = acp / prev
            betas = 1.0 - alphas
        n = betas.numel()
        if timesteps is None:
            timesteps = torch.arange(n, dtype=torch.long)
        timesteps = torch.as_tensor(timesteps, dtype=torch.long, device="cpu").clone()
        if timesteps.shape != (n,):
            raise ValueError(f"timesteps must have shape ({n},), got {tuple(timesteps.shape)}")
        if n > 1 and not bool((timesteps[1:] > timesteps[:-1]).all()):
            raise ValueError("timesteps must be strictly increasing")
        self.num_train_timesteps = int(num_train_timesteps if num_train_timesteps is not None else n)
        if timesteps[0] < 0 or timesteps[-1] >= self.num_train_timesteps:
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}]")
        self.timesteps = timesteps

        self.betas = betas
        self.alphas = alphas
        self.alphas_cumprod = acp
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1.0).sqrt()
        self.log_betas = betas.log()
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # β̃_0 = 0: its log is replaced by log β̃_1 (the first step adds no noise anyway).
        clipped = self.posterior_variance.clone()
        if n > 1:
            clipped[0] = self.posterior_variance[1]
        else:
            clipped[0] = betas[0]
        self.posterior_log_variance_clipped = clipped.log()
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * self.alphas.sqrt() / (1.0 - self.alphas_cumprod)
        self._device_cache: dict[tuple[str, torch.device], Tensor] = {}

    @classmethod
    def from_alphas_cumprod(
        cls,
        alphas_cumprod: Tensor | Sequence[float],
        timesteps: Tensor | Sequence[int] | None = None,
        num_train_timesteps: int | None = None,
    ) -> NoiseSchedule:
        """Build a schedule whose ᾱ are exactly the given strictly decreasing values in (0, 1)."""
        return cls(None, timesteps, num_train_timesteps, alphas_cumprod=alphas_cumprod)

    def __len__(self) -> int:
        return self.betas.numel()

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(steps={len(self)}, num_train_timesteps={self.num_train_timesteps}, "
            f"timesteps={self.timesteps[0].item()}..{self.timesteps[-1].item()})"
        )

    @property
    def is_respaced(self) -> bool:
        """True when this schedule skips steps of the original schedule."""
        return len(self) != self.num_train_timesteps

    def respace(self, spec: str | int | Sequence[int]) -> NoiseSchedule:
        """A schedule on a subset of this schedule's steps (see :func:`space_timesteps` for ``spec``).

        The new betas are ``1 - ᾱ[k_j]/ᾱ[k_{j-1}]`` so the new ᾱ equal the kept ones; the new
        ``timesteps`` are this schedule's ``timesteps[kept]`` (so respacing composes).
        """
        kept = space_timesteps(len(self), spec)
        idx = torch.tensor(kept, dtype=torch.long)
        return NoiseSchedule.from_alphas_cumprod(
            self.alphas_cumprod[idx], self.timesteps[idx], self.num_train_timesteps
        )

    def table(self, name: str, device: torch.device | str) -> Tensor:
        """Table ``name`` on ``device`` (float64, or float32 where float64 is unsupported), cached."""
        device = torch.device(device)
        key = (name, device)
        cached = self._device_cache.get(key)
        if cached is None:
            values = getattr(self, name)
            if not isinstance(values, Tensor) or values.dtype != torch.float64:
                raise AttributeError(f"NoiseSchedule has no float64 table {name!r}")
            cached = values.to(device, torch.float32 if device.type == "mps" else torch.float64)
            self._device_cache[key] = cached
        return cached


def extract(schedule: NoiseSchedule, name: str, t: Tensor | int, like: Tensor) -> Tensor | float:
    """Gather ``schedule.<name>`` at step indices ``t`` for broadcasting against ``like``.

    Args:
        t: an int (same step for the whole batch) or a long tensor [B] of indices into ``schedule``.
        like: tensor [B, ...] whose device, dtype and rank the result follows.

    Returns:
        a Python float for int ``t``, else a tensor [B, 1, ..., 1] of ``like.dtype`` on ``like.device``.
    """
    if isinstance(t, int):
        if not -len(schedule) <= t < len(schedule):
            raise IndexError(f"step {t} outside schedule of {len(schedule)} steps")
        return float(getattr(schedule, name)[t])
    if t.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"step indices must be an integer tensor, got {t.dtype}")
    values = schedule.table(name, like.device)[t.to(like.device).long()]
    return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def make_schedule(kind: str = "cosine", num_timesteps: int = 1000) -> NoiseSchedule:
    """The training schedule ``kind`` ("cosine" / "squaredcos_cap_v2", or "linear") with ``num_timesteps``."""
    if kind in ("cosine", "squaredcos_cap_v2"):
        return NoiseSchedule(cosine_betas(num_timesteps))
    if kind == "linear":
        return NoiseSchedule(linear_betas(num_timesteps))
    raise ValueError(f"unknown schedule {kind!r}; expected 'cosine', 'squaredcos_cap_v2' or 'linear'")
