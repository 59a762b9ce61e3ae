"""Resource bounds of a training or embedding command, checked before anything batch-sized is allocated.

``--batch-size 1000000000`` used to grow memory until the kernel killed the process, ``--threads 100000`` to
crash OpenMP. :func:`check_train_batch` measures what one sample costs — a forward pass of the task's loss on
two samples, counting the bytes autograd keeps for the backward pass (parameters left out) and the batch's
own tensors — and refuses a batch whose estimate does not fit the memory of the device it will train on.
:func:`check_embed_batch` does the same for ``unclip embed`` from the CLIP's input size. Every refusal is a
:class:`~unclip.limits.ResourceLimitError` naming the option, the limit and why.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from unclip.limits import check_memory

__all__ = ["check_embed_batch", "check_train_batch", "probe_sample_bytes"]

PROBE_SAMPLES = 2
INDEX_BYTES = 96  # a sample's index in the step's index lists (a Python int and list slots)
OPTIMIZER_COPIES = 5  # weights, EMA, gradients and AdamW's two moments, fp32 each
BACKWARD_FACTOR = 1.25  # the backward pass adds gradients of a few activations at a time (measured: ~1.2x)
DEVICE_FRACTION = 0.9  # share of a GPU's free memory one run may plan to take
EMBED_ACTIVATION_FACTOR = 24  # CLIP inference keeps a few layer outputs per image: ~24x its input (ViT-L/14)


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a batch (tensors, dataclasses, dicts, lists and tuples of them)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return sum(_tensor_bytes(getattr(value, f.name)) for f in dataclasses.fields(value))
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def probe_sample_bytes(task: Any) -> tuple[float, float, int]:
    """``(batch bytes per sample, activation bytes per sample, parameter count)`` of ``task`` on the CPU.

    Builds the network and runs the loss once on :data:`PROBE_SAMPLES` samples with the global RNG preserved.
    The activation bytes are the tensors autograd saves for the backward pass (each storage once, parameters
    excluded). Raises whatever the task raises.
    """
    from unclip.train.checkpoint import preserved_rng

    cpu = torch.device("cpu")
    with preserved_rng(cpu):
        torch.manual_seed(0)
        model = task.build_model()
        params = sum(p.numel() for p in model.parameters())
        param_storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
        batch = task.get_batch(list(range(PROBE_SAMPLES)), cpu)
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr not in param_storages and ptr not in seen:
                seen[ptr] = storage.nbytes()
            return t

        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = task.loss(model, batch, torch.Generator().manual_seed(0))
        del out, model
    return _tensor_bytes(batch) / PROBE_SAMPLES, sum(seen.values()) / PROBE_SAMPLES, params


def _check_device_memory(option: str, value: int, bytes_per_unit: float, fixed_bytes: float, device: str) -> None:
    """:func:`unclip.limits.check_memory` against a CUDA device's free memory."""
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    check_memory(option, value, bytes_per_unit, fixed_bytes, budget=free * DEVICE_FRACTION,
                 where=f"the free memory of {device}")  # fmt: skip


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def check_train_batch(task: Any, config: Any, option: str = "--batch-size") -> None:
    """Refuse ``config.batch_size`` when one step of ``task`` would not fit this machine (see the module doc).

    The per-process micro-batch (``batch_size / (WORLD_SIZE * grad_accum)``) is what lives on the device at
    once: its activations go to the training device (host memory on the CPU), its batch tensors and the step's
    index lists to host memory. Weights, EMA, gradients and optimizer moments are the fixed part. A task whose
    probe fails is checked on its index lists only: the training loop then reports the task's own error.
    """
    world = max(int(os.environ.get("WORLD_SIZE", "1") or 1), 1)
    share = world * config.grad_accum  # a micro-batch holds 1/share of the global batch
    try:
        batch_bytes, act_bytes, params = probe_sample_bytes(task)
    except Exception:  # noqa: BLE001 - the training loop reports the task's error with its context
        check_memory(option, config.batch_size, INDEX_BYTES / world)  # the step's index lists at least
        return
    state_bytes = float(params) * 4 * OPTIMIZER_COPIES
    act_bytes *= BACKWARD_FACTOR
    device = _resolve_device(config.device)
    # Bytes per sample of the global batch (the option's unit), so that "at most N fit" is in --batch-size units.
    if device.startswith("cuda") and torch.cuda.is_available():
        check_memory(option, config.batch_size, 2 * batch_bytes / share + INDEX_BYTES / world)
        _check_device_memory(option, config.batch_size, (act_bytes + batch_bytes) / share, state_bytes, device)
    else:
        per_sample = (act_bytes + 2 * batch_bytes) / share + INDEX_BYTES / world
        check_memory(option, config.batch_size, per_sample, state_bytes)


def check_embed_batch(batch_size: int, clip_image_size: int, stored_size: int, option: str = "--batch-size") -> None:
    """Refuse an ``unclip embed`` batch whose CLIP inputs and activations do not fit host memory."""
    clip_input = 3 * clip_image_size**2 * 4
    check_memory(option, batch_size, clip_input * (1 + EMBED_ACTIVATION_FACTOR) + 3 * stored_size**2)
