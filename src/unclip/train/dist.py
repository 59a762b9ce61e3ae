"""torch.distributed set-up for the training loop: one process per device, launched by ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without
them (a plain ``python`` or ``unclip`` call) the run is a single process and nothing is initialised.
Backend: NCCL for CUDA devices, gloo otherwise.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # True when init_distributed created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_device(preference: str, local_rank: int = 0, world_size: int = 1) -> torch.device:
    """The device for this rank.

    "auto" picks CUDA when available, else CPU. With several processes, "auto"/"cuda" become
    ``cuda:LOCAL_RANK``; an explicit CUDA index is refused then (all ranks would share one GPU).
    """
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(preference)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={preference!r} but CUDA is not available on this machine")
        if world_size > 1:
            if device.index is not None:
                raise ValueError(
                    f"device={preference!r} names one GPU but {world_size} processes run; "
                    'use device="cuda" (each rank takes cuda:LOCAL_RANK)'
                )
            device = torch.device("cuda", local_rank)
        elif device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise ValueError(f"device {device} does not exist ({torch.cuda.device_count()} CUDA devices)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={preference!r} but MPS is not available on this machine")
    return device


def init_distributed(device_preference: str, timeout_minutes: float = 60.0) -> DistInfo:
    """Join the process group described by the torchrun environment (or use an existing one).

    Returns a single-process :class:`DistInfo` when ``WORLD_SIZE`` is unset or 1.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", rank)
        device = resolve_device(device_preference, local_rank, world)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistInfo(rank, world, local_rank, device, owns_group=False)
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return DistInfo(0, 1, 0, resolve_device(device_preference), owns_group=False)
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_preference, local_rank, world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    return DistInfo(rank, world, local_rank, device, owns_group=True)


def cleanup(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()


def all_reduce_(tensor: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``op`` "sum" or "max"); a no-op for one process."""
    if info.distributed:
        dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
    return tensor


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not info.distributed:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def shard_indices(start: int, batch_size: int, rank: int, world_size: int, grad_accum: int) -> list[list[int]]:
    """This rank's global sample indices of one optimizer step, split into ``grad_accum`` micro-batches.

    The step covers ``[start, start + batch_size)``; rank ``r`` takes the ``r``-th contiguous slice of
    ``batch_size / world_size`` indices and splits it into equal consecutive micro-batches.
    """
    per_rank, rem = divmod(batch_size, world_size * grad_accum)
    if rem or per_rank == 0:
        raise ValueError(
            f"batch_size={batch_size} must be a positive multiple of world_size * grad_accum "
            f"= {world_size} * {grad_accum} = {world_size * grad_accum}"
        )
    first = start + rank * per_rank * grad_accum
    return [list(range(first + m * per_rank, first + (m + 1) * per_rank)) for m in range(grad_accum)]
