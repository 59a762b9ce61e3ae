"""What a stage gives the one training loop (``unclip.train.loop.run_training``).

A :class:`TrainTask` owns the network, the data and the loss of one stage (CLIP, oracle, prior, decoder,
upsampler, ...). The loop owns everything else: devices, DDP, optimizer, schedule, EMA, precision,
checkpoints, resume, logging and progress.

Data are addressed by *global sample index*: ``get_batch(indices)`` must be a deterministic function of
the indices (e.g. render shapes-world scene ``i`` from ``(seed, i)``, or read row ``i mod N`` of an
embedding cache). The loop hands each optimizer step the next ``batch_size`` indices, split across ranks
and accumulation micro-steps, so the data position is one integer and resume is exact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class TrainTask(Protocol):
    """One trainable stage."""

    name: str  # short name used in logs and file names, e.g. "decoder"

    def build_model(self) -> nn.Module:
        """A freshly initialised network (fp32, CPU). Called once per rank, after seeding."""

    def get_batch(self, indices: list[int], device: torch.device) -> Any:
        """The batch for these global sample indices, on ``device``. Deterministic in ``indices``."""

    def loss(self, model: nn.Module, batch: Any, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss over the batch (a scalar tensor) and extra scalar metrics to log.

        ``generator`` is on the batch's device and seeded by the loop per (step, rank, micro-step): draw
        all training randomness (timesteps, noise, condition dropout) from it so resume is exact.

        Under DDP ``model`` is the ``DistributedDataParallel`` wrapper: compute the loss through
        ``model(...)`` (its forward), or gradients are not synchronised; reach other attributes through
        ``model.module if hasattr(model, "module") else model``.
        """

    def evaluate(self, model: nn.Module, step: int, out_dir: Path) -> dict[str, float]:
        """Periodic evaluation on the EMA model in eval mode: write a sample grid / metrics under
        ``out_dir`` and return scalar metrics to log. May return ``{}``."""

    def export(self, model: nn.Module, out_dir: Path) -> None:
        """Write the final (EMA) network as ``out_dir/config.json`` + ``out_dir/model.safetensors``."""
