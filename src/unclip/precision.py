"""Inference precision: which dtype a pipeline runs in, and whether this hardware has native bf16.

``--precision`` / ``UnCLIPPipeline.from_pretrained(..., dtype=...)`` take ``"fp32"``, ``"bf16"``, ``"fp16"``
or ``"auto"``. ``auto`` is bf16 where the device computes bf16 natively — a CUDA GPU that reports bf16
support, a CPU with AVX-512 BF16 or AMX — and fp32 elsewhere: on a CPU without them (an AVX-512 Xeon
before Cooper Lake, say) bf16 is emulated and 2.5× *slower* than fp32. In the bf16 path the networks run
in bf16 while the sampler arithmetic stays float32 (:func:`unclip.samplers.sampling_dtype`) and norm
statistics are float32 (:mod:`unclip.nn.norm`). ``UNCLIP_NATIVE_BF16=0`` or ``=1`` overrides the detection.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only when a precision is resolved
    import torch

__all__ = ["PRECISIONS", "native_bf16", "native_bf16_training", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""The precision names the CLI, the API and :func:`resolve_precision` accept."""


def _bf16_capable(device: str | torch.device, cpu_checks: tuple[str, ...]) -> bool:
    """``UNCLIP_NATIVE_BF16`` if set to 0/1; else CUDA bf16 support, or any of torch's ``cpu_checks`` on a CPU."""
    import torch

    forced = os.environ.get("UNCLIP_NATIVE_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    kind = torch.device(device).type
    if kind == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind == "cpu":
        checks = [getattr(torch.cpu, name, None) for name in cpu_checks]
        return any(bool(check()) for check in checks if check is not None)
    return False


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bf16 natively (CUDA bf16 support; a CPU with AVX-512 BF16 or AMX tiles)."""
    return _bf16_capable(device, ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def native_bf16_training(device: str | torch.device = "cpu") -> bool:
    """Whether bf16 autocast is the faster way to *train* on ``device``: a CUDA GPU with bf16, or a CPU with AMX
    tiles (measured there: the ``shapes64`` decoder's training step 1.1-1.7x and the prior's 1.4x fp32's
    samples/s, ``docs/performance.md``). A CPU with AVX-512 BF16 alone measured bf16 training slower than
    fp32, so it keeps fp32. ``UNCLIP_NATIVE_BF16=0`` or ``=1`` overrides the detection, as for inference."""
    return _bf16_capable(device, ("_is_amx_tile_supported",))


def resolve_precision(precision: str, device: str | torch.device = "cpu") -> torch.dtype:
    """The dtype to run a pipeline in for a precision name on ``device`` (see the module doc)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} must be one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
