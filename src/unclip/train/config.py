"""``TrainConfig``: every knob of the one training loop, validated, saved as ``config.json``.

The model, data and loss belong to the :class:`~unclip.train.task.TrainTask`; this dataclass holds only
what the loop itself does (optimizer, schedule, EMA, precision, checkpoints, logging, devices).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")

# Fields that only change how the same computation is carried out (cadence of logs, checkpoints and evaluation;
# device, threads, the wall budget, DDP/FSDP and gradient checkpointing): a resume may change them. Every other
# field of TrainConfig alters the trained weights (see RESULT_FIELDS, derived below the class).
NON_RESULT_FIELDS = frozenset(
    {
        "log_every",
        "ckpt_every",
        "eval_every",
        "device",
        "num_threads",
        "max_minutes",
        "ddp_find_unused_parameters",
        "fsdp",
        "grad_checkpointing",
    }
)


@dataclass
class TrainConfig:
    """Settings of :func:`unclip.train.loop.run_training`.

    Attributes:
        steps: total optimizer steps of the run (the LR schedule spans exactly these).
        batch_size: global batch per optimizer step, over all ranks and accumulation micro-steps; must
            be divisible by ``world_size * grad_accum``.
        grad_accum: micro-steps accumulated per optimizer step (per rank).
        lr: peak learning rate (reached at the end of warm-up).
        min_lr_ratio: the cosine decays to ``min_lr_ratio * lr`` at ``steps``; in [0, 1].
        warmup_steps: linear warm-up length; step ``s < warmup_steps`` uses ``lr * (s + 1) / warmup_steps``.
        weight_decay: AdamW decoupled weight decay, applied to parameters with ``ndim >= 2`` only
            (not to biases, norms or scalar gains).
        betas: AdamW ``(beta1, beta2)``.
        adam_eps: AdamW epsilon.
        grad_clip: clip the global gradient norm to this value; ``None`` disables clipping (the norm is
            still logged).
        ema_decay: EMA decay per optimizer step in [0, 1); 0 makes the EMA a copy of the model.
        ema_warmup: use ``min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates so that the EMA of a
            short run is not dominated by the initial weights.
        precision: "auto" (bf16 autocast on CUDA when supported and on a CPU with AMX, else fp32; see
            :func:`unclip.precision.native_bf16_training`), "fp32", "bf16" (autocast) or "fp16" (autocast +
            dynamic loss scaling). Weights, EMA and optimizer state stay fp32.
        memory_format: "auto" (channels-last weights for networks with 2-D convolutions), "channels_last"
            or "contiguous". Exported weights are contiguous either way.
        seed: seeds model initialisation and every random draw of training.
        log_every: write a metrics line (and a log line when no progress bar) every this many steps.
        ckpt_every: write ``checkpoint.pt`` every this many steps (and always at the end); 0 = end only.
        eval_every: call ``task.evaluate`` on the EMA model every this many steps (and at the end);
            0 = never.
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", "mps", ... Under
            torchrun on CUDA each rank uses ``cuda:LOCAL_RANK``.
        num_threads: ``torch.set_num_threads`` for this process; ``None`` leaves torch's setting.
        max_minutes: wall-clock budget; when spent the loop stops cleanly after the current step,
            writes a checkpoint and exports. ``None`` = no budget.
        ddp_find_unused_parameters: passed to DDP (needed when some parameters get no gradient in a step).
        fsdp: with several processes, shard parameters, gradients and optimizer state with FSDP2
            (``fully_shard`` per block, then the root) instead of replicating them with DDP: for networks
            that do not fit one device. Checkpoints keep the single-device format.
        grad_checkpointing: re-compute each block's activations in the backward pass instead of storing
            them (less memory, ~1/3 more compute, the same gradients); see ``unclip.train.parallel``.
        init_from: start a new run (fine-tune) from the EMA weights of another run: its directory or its
            ``checkpoint.pt``. Optimizer, schedule, step count and data position start fresh; ignored when
            this run resumes from its own checkpoint. ``None`` = random initialisation.
        lr_scales: ``(name prefix, factor)`` pairs: a parameter whose name starts with a prefix (the first
            that matches) trains at ``factor`` times the scheduled learning rate, e.g. the conditioning layers
            of a fine-tuned network faster than its backbone. Every prefix must match a parameter.
    """

    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    precision: str = "auto"
    memory_format: str = "auto"
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 500
    eval_every: int = 0
    device: str = "auto"
    num_threads: int | None = None
    max_minutes: float | None = None
    ddp_find_unused_parameters: bool = False
    fsdp: bool = False
    grad_checkpointing: bool = False
    init_from: str | None = None
    lr_scales: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and its value."""

        def bad(name: str, rule: str) -> ValueError:
            return ValueError(f"TrainConfig.{name}={getattr(self, name)!r} is invalid: {rule}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_real(v: Any) -> bool:
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        for name, low in (("steps", 1), ("batch_size", 1), ("grad_accum", 1), ("log_every", 1)):
            if not is_int(getattr(self, name)) or getattr(self, name) < low:
                raise bad(name, f"must be an integer >= {low}")
        for name in ("warmup_steps", "ckpt_every", "eval_every", "seed"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "must be an integer >= 0")
        if self.batch_size % self.grad_accum:
            raise bad("batch_size", f"must be divisible by grad_accum={self.grad_accum}")
        if not is_real(self.lr) or self.lr <= 0:
            raise bad("lr", "must be a finite number > 0")
        if not is_real(self.min_lr_ratio) or not 0.0 <= self.min_lr_ratio <= 1.0:
            raise bad("min_lr_ratio", "must be in [0, 1]")
        if not is_real(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "must be a finite number >= 0")
        if (
            not isinstance(self.betas, (tuple, list))
            or len(self.betas) != 2
            or not all(is_real(b) and 0.0 <= b < 1.0 for b in self.betas)
        ):
            raise bad("betas", "must be two numbers in [0, 1)")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if not is_real(self.adam_eps) or self.adam_eps <= 0:
            raise bad("adam_eps", "must be a finite number > 0")
        if self.grad_clip is not None and (not is_real(self.grad_clip) or self.grad_clip <= 0):
            raise bad("grad_clip", "must be a finite number > 0, or None to disable clipping")
        if not is_real(self.ema_decay) or not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay", "must be in [0, 1)")
        if not isinstance(self.ema_warmup, bool):
            raise bad("ema_warmup", "must be a bool")
        if self.precision not in PRECISIONS:
            raise bad("precision", f"must be one of {PRECISIONS}")
        if self.memory_format not in MEMORY_FORMATS:
            raise bad("memory_format", f"must be one of {MEMORY_FORMATS}")
        if not isinstance(self.device, str) or not self.device:
            raise bad("device", 'must be a device string such as "auto", "cpu", "cuda" or "cuda:1"')
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise bad("device", 'must be "auto" or a torch device string such as "cpu" or "cuda:0"') from None
        if self.num_threads is not None and (not is_int(self.num_threads) or self.num_threads < 1):
            raise bad("num_threads", "must be an integer >= 1, or None")
        if self.max_minutes is not None and (not is_real(self.max_minutes) or self.max_minutes <= 0):
            raise bad("max_minutes", "must be a finite number > 0, or None")
        if self.init_from is not None and (not isinstance(self.init_from, str) or not self.init_from):
            raise bad("init_from", "must be a path (a run directory or its checkpoint.pt), or None")
        for name in ("ddp_find_unused_parameters", "fsdp", "grad_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "must be a bool")
        if not isinstance(self.lr_scales, (tuple, list)) or not all(
            isinstance(pair, (tuple, list))
            and len(pair) == 2
            and isinstance(pair[0], str)
            and pair[0]
            and is_real(pair[1])
            and pair[1] > 0
            for pair in self.lr_scales
        ):
            raise bad("lr_scales", "must be (parameter-name prefix, factor > 0) pairs")
        prefixes = [pair[0] for pair in self.lr_scales]
        if len(set(prefixes)) != len(prefixes):
            raise bad("lr_scales", "names a prefix twice")
        self.lr_scales = tuple((str(prefix), float(factor)) for prefix, factor in self.lr_scales)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)


RESULT_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in NON_RESULT_FIELDS)
"""TrainConfig fields whose change alters the result: resuming with a different value is refused."""


def result_field_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(field, saved value, current value)`` for every result-changing field that differs.

    Both arguments are :func:`unclip.config.config_to_dict` dicts (tuples as lists).
    """
    out = []
    for name in RESULT_FIELDS:
        a, b = saved.get(name), current.get(name)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            same = float(a) == float(b)
        else:
            same = a == b
        if not same:
            out.append((name, a, b))
    return out
