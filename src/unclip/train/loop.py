"""The one training loop for every stage: plain PyTorch, DDP or FSDP2, EMA, exact resume.

``run_training(task, TrainConfig(...), out_dir)`` trains ``task.build_model()`` with AdamW (linear
warm-up, cosine decay), gradient accumulation and clipping, autocast, and an EMA of the weights. Every
optimizer step consumes the next ``batch_size`` global sample indices, split across ranks and
micro-steps; all training randomness comes from a generator seeded by ``(seed, step, rank, micro_step)``
plus the global generators, whose states are checkpointed, so a run killed at any moment and resumed
ends with the same bits as an uninterrupted one. See ``docs/training.md``.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from unclip.config import config_to_dict
from unclip.io import remove_orphaned_tmp
from unclip.limits import check_memory, check_threads
from unclip.precision import native_bf16_training
from unclip.train import checkpoint as ckpt_lib
from unclip.train import parallel
from unclip.train.bounds import INDEX_BYTES
from unclip.train.config import TrainConfig
from unclip.train.dist import DistInfo, all_reduce_, barrier, cleanup, gather_objects, init_distributed, shard_indices
from unclip.train.ema import ema_decay_at, make_ema, update_ema
from unclip.train.lr_schedule import lr_at, schedule_state, set_lr
from unclip.train.reporting import Reporter, StopFlag
from unclip.train.resume import load_init_weights, resume_checkpoint
from unclip.train.settings import task_settings
from unclip.train.task import TrainTask

# Keys the loop writes into a metrics line; a task metric with the same name is logged as "task/<name>".
_LOOP_KEYS = {"step", "loss", "lr", "samples_per_s", "grad_norm", "time_s"}
# Run-directory folders whose files are written atomically (temp file + rename) and may hold orphaned temps.
_ATOMIC_DIRS = (".", "model", "eval")


@dataclass
class TrainResult:
    """What :func:`run_training` returns (on every rank)."""

    model: nn.Module  # the trained network (not DDP-wrapped; FSDP-sharded with fsdp), training device, train mode
    ema_model: nn.Module  # its EMA, eval mode; what ``task.export`` wrote (fsdp: an unsharded CPU copy on rank 0)
    step: int  # optimizer steps done in total
    metrics: dict[str, float] = field(default_factory=dict)  # last logged train and eval metrics
    stop_reason: str = "done"  # "done" | "max_minutes" | "signal"
    out_dir: Path | None = None


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None for fp32, use GradScaler)`` for a precision setting on ``device``."""
    if precision == "auto":
        return (torch.bfloat16 if native_bf16_training(device) else None), False
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        return torch.bfloat16, False
    if precision == "fp16":
        return torch.float16, True
    raise ValueError(f"precision={precision!r} must be one of 'auto', 'fp32', 'bf16', 'fp16'")


def uses_channels_last(memory_format: str, model: nn.Module) -> bool:
    """Whether to train ``model`` with channels-last weights: "auto" does for networks with 2-D convolutions
    (their bf16 convolution backward on a CPU is 20x faster channels-last, fp32 1.1x)."""
    if memory_format == "auto":
        return any(isinstance(m, nn.Conv2d) for m in model.modules())
    return memory_format == "channels_last"


def param_groups(
    model: nn.Module, weight_decay: float, lr_scales: Sequence[tuple[str, float]] = ()
) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on parameters with ``ndim >= 2`` (weights), none on biases/norms; each group
    carries ``lr_scale``, the factor of the first ``lr_scales`` prefix its parameters' names start with (1.0
    for none). Raises ``ValueError`` naming a prefix that matches no trainable parameter."""
    buckets: dict[tuple[bool, float], list[nn.Parameter]] = {}
    used: set[str] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        match = next((pair for pair in lr_scales if name.startswith(pair[0])), None)
        if match is not None:
            used.add(match[0])
        buckets.setdefault((param.ndim >= 2, 1.0 if match is None else float(match[1])), []).append(param)
    unused = [prefix for prefix, _ in lr_scales if prefix not in used]
    if unused:
        raise ValueError(f"lr_scales prefix {unused[0]!r} matches no trainable parameter of the model")
    if not buckets:
        raise ValueError("the task's model has no trainable parameters")
    order = sorted(buckets, key=lambda key: (not key[0], key[1] != 1.0, key[1]))  # the old two groups first
    return [
        {"params": buckets[key], "weight_decay": weight_decay if key[0] else 0.0, "lr_scale": key[1]} for key in order
    ]


def make_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    fused: bool = True,
    lr_scales: Sequence[tuple[str, float]] = (),
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; with ``fused`` the fused kernel (one pass over all tensors) where this
    torch has it for the parameters' device and dtype, else the multi-tensor ("foreach") one. Both compute the
    same update. (FSDP's sharded parameters take the foreach one.)"""
    groups = param_groups(model, weight_decay, lr_scales)
    params = [p for g in groups for p in g["params"]]
    fusable = (
        fused
        and all(p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params)
        and {p.device.type for p in params} <= {"cpu", "cuda"}
    )
    if fusable:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
        except (RuntimeError, TypeError, ValueError):  # a torch without the fused kernel for this device
            pass
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)


def _check_task(task: Any) -> None:
    if not isinstance(task, TrainTask):
        missing = [
            n for n in ("name", "build_model", "get_batch", "loss", "evaluate", "export") if not hasattr(task, n)
        ]
        raise TypeError(f"task {type(task).__name__} does not implement TrainTask (missing {missing})")


def _loss_value(task: TrainTask, out: Any) -> tuple[torch.Tensor, dict[str, float]]:
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(f"task {task.name!r}: loss() must return (loss tensor, metrics dict), got {type(out).__name__}")
    loss, metrics = out
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        raise TypeError(f"task {task.name!r}: loss() must return a floating scalar tensor first, got {loss!r}")
    if not isinstance(metrics, dict):
        raise TypeError(f"task {task.name!r}: loss() must return a dict of metrics second, got {type(metrics)}")
    return loss.reshape(()), metrics


@dataclass
class _Interval:
    """What the loop sums between two metrics lines (device tensors, so a step never waits for the device)."""

    loss_sum: torch.Tensor
    gnorm_sum: torch.Tensor
    t0: float  # when the interval started (for samples_per_s)
    task_sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0  # optimizer steps in the interval
    micro: int = 0  # micro-batches in the interval (this rank)

    @classmethod
    def start(cls, device: torch.device) -> _Interval:
        dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        zero = torch.zeros((), device=device, dtype=dtype)
        return cls(loss_sum=zero, gnorm_sum=zero.clone(), t0=time.monotonic())


@dataclass
class _Run:
    """Everything one call of :func:`run_training` holds and advances: the handles it trains with, where it
    is in the data and the schedule, and what it has summed and measured so far."""

    task: TrainTask
    config: TrainConfig
    out_dir: Path
    info: DistInfo
    amp_dtype: torch.dtype | None  # autocast dtype (None: fp32)
    use_scaler: bool  # fp16: a GradScaler scales the loss
    sharded: bool  # FSDP2 over several processes
    model: nn.Module  # the network (never DDP-wrapped)
    ema: nn.Module  # its exponential moving average
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    settings: dict[str, Any]  # the task's result-changing settings (checked on resume, in every checkpoint)
    train_model: nn.Module | None = None  # what the loss runs through: ``model`` or its DDP wrapper
    reporter: Reporter | None = None
    step: int = 0  # optimizer steps done in total
    position: int = 0  # global index of the next sample
    ema_updates: int = 0
    lr: float = 0.0  # learning rate of the last step
    elapsed_before: float = 0.0  # seconds trained before this call (from the checkpoint)
    start_time: float = 0.0  # time.monotonic() when this call's first step began
    saved_world: int = 1  # processes that wrote the checkpoint resumed from
    last_ckpt_step: int = -1  # step of the newest checkpoint on disk (-1: none)
    stop_reason: str = "done"
    interval: _Interval | None = None
    last_metrics: dict[str, float] = field(default_factory=dict)  # last logged train and eval metrics

    @property
    def device(self) -> torch.device:
        return self.info.device

    def elapsed(self) -> float:
        """Seconds trained in total, earlier runs included."""
        return self.elapsed_before + time.monotonic() - self.start_time


def run_training(
    task: TrainTask,
    config: TrainConfig,
    out_dir: str | Path,
    resume: bool = True,
    progress: bool | None = None,
) -> TrainResult:
    """Train ``task`` as ``config`` says, writing checkpoints, metrics, eval output and the export to ``out_dir``.

    Args:
        task: the stage (network, data by global index, loss, evaluation, export).
        config: the loop's settings; validated again here.
        out_dir: run directory: ``checkpoint.pt``, ``config.json``, ``metrics.jsonl``, ``eval/``, ``model/``.
        resume: continue from ``out_dir/checkpoint.pt`` when it exists (refused, naming the field, if the
            saved config differs in a result-changing field). ``False`` starts over and overwrites it.
        progress: show a tqdm bar (True), log lines (False), or a bar only when stderr is a TTY (None).

    Returns:
        :class:`TrainResult` with the trained and EMA networks and the last metrics.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every rank calls this; rank 0 alone writes files.
    """
    _check_task(task)
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    config.validate()
    check_threads("num_threads", config.num_threads)
    check_memory("batch_size", config.batch_size, INDEX_BYTES)  # before any per-sample list or tensor exists
    out_dir = Path(out_dir)
    threads_before = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    info = init_distributed(config.device)
    stop = StopFlag()
    run: _Run | None = None
    try:
        shard_indices(0, config.batch_size, 0, info.world_size, config.grad_accum)  # validates divisibility
        precision = resolve_precision(config.precision, info.device)
        removed = _clean_out_dir(out_dir, info)
        run = _build_run(task, config, out_dir, info, precision)
        _resume_or_start(run, resume)
        run.reporter = Reporter(task.name, config, out_dir, info, run.step, progress)
        _announce(run, removed)
        run.train_model = _wrap_for_ddp(run)
        stop.install()
        run.start_time = time.monotonic()
        run.interval = _Interval.start(run.device)
        run.last_ckpt_step = run.step if run.step > 0 else -1
        run.lr = config.lr
        while run.step < config.steps and not _should_stop(run, stop):
            _train_step(run)
            _after_step(run)
        _flush(run)
        if run.step != run.last_ckpt_step:
            _write_checkpoint(run)
        if run.stop_reason != "done":
            run.reporter.say(f"stopped at step {run.step}/{config.steps} ({run.stop_reason}); checkpoint written")
        final_ema = _export(run)
        # every rank done with its collectives before any returns (and may tear the group down): a rank that
        # closes its connections while another still has gloo work in flight aborts that process
        barrier(info)
        return TrainResult(
            run.model, final_ema, run.step, metrics=run.last_metrics, stop_reason=run.stop_reason, out_dir=out_dir
        )
    finally:
        torch.set_num_threads(threads_before)
        stop.uninstall()
        if run is not None and run.reporter is not None:
            run.reporter.close()
        cleanup(info)


# ------------------------------------------------------------------------------------------ set-up


def _clean_out_dir(out_dir: Path, info: DistInfo) -> list[Path]:
    """Create the run directory (rank 0) and remove the temp files of writes a kill interrupted."""
    removed: list[Path] = []
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        for sub in _ATOMIC_DIRS:
            removed += remove_orphaned_tmp(out_dir / sub)
    return removed


def _build_run(
    task: TrainTask, config: TrainConfig, out_dir: Path, info: DistInfo, precision: tuple[torch.dtype | None, bool]
) -> _Run:
    """The network, its EMA, the optimizer and the scaler, built in an order every resume repeats."""
    device = info.device
    # Identical initial weights on every rank; then per-rank global streams (e.g. dropout).
    ckpt_lib.seed_everything(config.seed)
    model = task.build_model()
    if not isinstance(model, nn.Module):
        raise TypeError(f"task {task.name!r}: build_model() must return an nn.Module, got {type(model).__name__}")
    if config.init_from is not None:  # a resumed run's own checkpoint overrides these
        load_init_weights(model, Path(config.init_from), task.name)
    sharded = config.fsdp and info.distributed
    if not sharded:
        model.to(device)
        if uses_channels_last(config.memory_format, model):
            model.to(memory_format=torch.channels_last)
    model.train()
    ema = make_ema(model)
    if config.grad_checkpointing:
        parallel.apply_gradient_checkpointing(model)
    if sharded:  # FSDP2 moves each rank's shards to the device
        parallel.shard_model(model, device, info.world_size)
        parallel.shard_model(ema, device, info.world_size)
    ckpt_lib.seed_everything(ckpt_lib.derive_seed(config.seed, info.rank, 1))
    optimizer = make_optimizer(
        model, config.lr, config.weight_decay, config.betas, config.adam_eps, fused=not sharded,
        lr_scales=config.lr_scales,
    )  # fmt: skip
    amp_dtype, use_scaler = precision
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    return _Run(task=task, config=config, out_dir=out_dir, info=info, amp_dtype=amp_dtype, use_scaler=use_scaler,
                sharded=sharded, model=model, ema=ema, optimizer=optimizer, scaler=scaler,
                settings=task_settings(task), saved_world=info.world_size)  # fmt: skip


def _resume_or_start(run: _Run, resume: bool) -> None:
    """Continue from the run directory's checkpoint (weights, optimizer, counters, random streams), or start
    over (an old metrics file removed). Every rank returns together."""
    info, out_dir = run.info, run.out_dir
    ckpt = resume_checkpoint(run.task, run.config, out_dir, info, run.settings) if resume else None
    if ckpt is not None:
        _restore(run, ckpt)
        if info.is_main:
            ckpt_lib.truncate_metrics(out_dir / "metrics.jsonl", run.step)
    elif info.is_main and (out_dir / "metrics.jsonl").exists():
        (out_dir / "metrics.jsonl").unlink()
    barrier(info)


def _restore(run: _Run, ckpt: dict[str, Any]) -> None:
    model, ema, optimizer = run.model, run.ema, run.optimizer
    try:
        if run.sharded:
            parallel.load_full_model_state(model, ckpt["model"])
            parallel.load_full_model_state(ema, ckpt["ema"])
        else:
            model.load_state_dict(ckpt["model"])
            ema.load_state_dict(ckpt["ema"])
    except RuntimeError as err:
        raise ValueError(
            f"{run.out_dir / ckpt_lib.CHECKPOINT_NAME} does not fit the task's model: {str(err).splitlines()[0]}"
        ) from None
    if run.sharded:
        parallel.load_full_optimizer_state(model, optimizer, ckpt["optimizer"])
    else:
        optimizer.load_state_dict(ckpt["optimizer"])
    if run.use_scaler and ckpt.get("scaler") is not None:
        run.scaler.load_state_dict(ckpt["scaler"])
    run.step, run.position = int(ckpt["step"]), int(ckpt["data_position"])
    run.ema_updates, run.elapsed_before = int(ckpt.get("ema_updates", run.step)), float(ckpt.get("elapsed_s", 0.0))
    rng = ckpt.get("rng") or []
    run.saved_world = int(ckpt.get("world_size", 1))
    if run.saved_world == run.info.world_size and run.info.rank < len(rng):
        ckpt_lib.restore_rng(rng[run.info.rank], run.device)


def _announce(run: _Run, removed: list[Path]) -> None:
    """Log what was cleaned up, where the run resumes, and how it is parallel."""
    say, info = run.reporter.say, run.info
    if removed:
        names = ", ".join(str(p.relative_to(run.out_dir)) for p in removed[:3]) + (", ..." if len(removed) > 3 else "")
        say(f"removed {len(removed)} temporary file(s) left by interrupted writes: {names}")
    if run.step > 0:
        say(f"resumed from step {run.step} (sample {run.position})")
    if run.saved_world != info.world_size:
        say(
            f"the checkpoint was written by {run.saved_world} processes, now {info.world_size}: the run continues "
            "with the same data and schedule, but not bit-identically (random streams are per rank)"
        )
    if run.sharded:
        say(f"fully sharded (FSDP2) over {info.world_size} processes ({run.device.type})")
    elif info.world_size > 1:
        say(f"data parallel over {info.world_size} processes ({run.device.type})")


def _wrap_for_ddp(run: _Run) -> nn.Module:
    """The module the loss runs through: ``model`` itself, or its DDP wrapper when data parallel."""
    if not run.info.distributed or run.sharded:
        return run.model
    return DistributedDataParallel(
        run.model,
        device_ids=[run.device.index] if run.device.type == "cuda" else None,
        find_unused_parameters=run.config.ddp_find_unused_parameters,
    )


# ------------------------------------------------------------------------------------------ one step


def _should_stop(run: _Run, stop: StopFlag) -> bool:
    """Whether a signal or the time budget ends the run before this step (the same answer on every rank)."""
    config = run.config
    local_stop = stop.requested or (
        config.max_minutes is not None and time.monotonic() - run.start_time > 60.0 * config.max_minutes
    )
    if run.info.distributed:  # every rank must stop at the same step
        local_stop = all_reduce_(torch.tensor([float(local_stop)], device=run.device), run.info, "max").item() > 0
    if local_stop:
        run.stop_reason = "signal" if stop.requested else "max_minutes"
    return bool(local_stop)


def _train_step(run: _Run) -> None:
    """One optimizer step on the next ``batch_size`` samples (micro-batches, clipping, EMA, counters)."""
    config, info, device, interval = run.config, run.info, run.device, run.interval
    run.lr = lr_at(
        run.step, lr=config.lr, steps=config.steps, warmup_steps=config.warmup_steps, min_lr_ratio=config.min_lr_ratio
    )
    set_lr(run.optimizer, run.lr)
    run.optimizer.zero_grad(set_to_none=True)
    autocast = (
        torch.autocast(device_type=device.type, dtype=run.amp_dtype)
        if run.amp_dtype is not None
        else contextlib.nullcontext()
    )
    micro_batches = shard_indices(run.position, config.batch_size, info.rank, info.world_size, config.grad_accum)
    for micro, indices in enumerate(micro_batches):
        batch = run.task.get_batch(indices, device)
        generator = torch.Generator(device=device)
        generator.manual_seed(ckpt_lib.derive_seed(config.seed, run.step, info.rank, micro))
        last_micro = micro == len(micro_batches) - 1
        if run.sharded:
            sync = parallel.gradient_sync(run.model, last_micro)
        else:
            sync = run.train_model.no_sync() if info.distributed and not last_micro else contextlib.nullcontext()
        with sync:
            with autocast:
                loss, metrics = _loss_value(run.task, run.task.loss(run.train_model, batch, generator))
            run.scaler.scale(loss.float() / config.grad_accum).backward()
        interval.loss_sum += loss.detach().to(interval.loss_sum.dtype)
        for k, v in metrics.items():
            interval.task_sums[k] = interval.task_sums.get(k, 0.0) + float(v)
        interval.micro += 1
    run.scaler.unscale_(run.optimizer)
    max_norm = config.grad_clip if config.grad_clip is not None else float("inf")
    grad_norm = parallel.grad_norm_value(torch.nn.utils.clip_grad_norm_(run.model.parameters(), max_norm))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    update_ema(run.ema, run.model, ema_decay_at(run.ema_updates, config.ema_decay, config.ema_warmup))
    run.ema_updates += 1
    interval.gnorm_sum += grad_norm.detach().to(interval.gnorm_sum.dtype)
    run.step += 1
    run.position += config.batch_size
    interval.steps += 1
    run.reporter.step_done()


def _after_step(run: _Run) -> None:
    """The step's scheduled work: a metrics line, an evaluation, a checkpoint."""
    config, step = run.config, run.step
    if step % config.log_every == 0 or step == config.steps:
        _flush(run)
    if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
        _flush(run)
        _evaluate(run)
        run.interval.t0 = time.monotonic()
    if config.ckpt_every and step % config.ckpt_every == 0 and step < config.steps:
        _flush(run)
        _write_checkpoint(run)
        run.last_ckpt_step = step
        run.interval.t0 = time.monotonic()


# ------------------------------------------------------------------------------------------ outputs


def _flush(run: _Run) -> None:
    """Write the interval's metrics line (losses summed over ranks) and start a new interval."""
    interval, info, task = run.interval, run.info, run.task
    if interval.steps == 0:
        return
    keys = sorted(interval.task_sums)
    packed = torch.tensor([interval.loss_sum.item(), *[interval.task_sums[k] for k in keys]], dtype=torch.float64)
    if info.distributed:
        gathered = gather_objects((keys, packed.tolist()), info)
        if any(g[0] != keys for g in gathered):
            raise RuntimeError(f"task {task.name!r} returned different metric names on different ranks")
        packed = torch.tensor([g[1] for g in gathered], dtype=torch.float64).sum(0)
    denom = interval.micro * info.world_size
    gnorm = interval.gnorm_sum.item() / interval.steps
    loss = packed[0].item() / denom
    if not run.use_scaler and not (math.isfinite(gnorm) and math.isfinite(loss)):
        raise FloatingPointError(
            f"task {task.name!r}: non-finite loss ({loss}) or gradient norm ({gnorm}) by step {run.step}; "
            f"the last checkpoint (step {max(run.last_ckpt_step, 0)}) is still good. Lower lr, set grad_clip, "
            "or use precision='fp32'."
        )
    dt = max(time.monotonic() - interval.t0, 1e-9)
    record: dict[str, Any] = {
        "step": run.step,
        "loss": loss,
        "lr": run.lr,
        "samples_per_s": interval.steps * run.config.batch_size / dt,
        "grad_norm": gnorm,
        "time_s": run.elapsed(),
    }
    for i, k in enumerate(keys):
        record[f"task/{k}" if k in _LOOP_KEYS else k] = packed[1 + i].item() / denom
    run.last_metrics.update({k: v for k, v in record.items() if k != "step"})
    run.reporter.record(record)
    run.interval = _Interval.start(run.device)


def _full_copy(run: _Run, module: nn.Module, where: torch.device | str) -> nn.Module:
    """An unsharded copy of a sharded network on rank 0 (a collective; other ranks get ``module``)."""
    state = parallel.full_model_state(module)
    if not run.info.is_main:
        return module
    with ckpt_lib.preserved_rng(run.device):
        copy = run.task.build_model()
    copy.load_state_dict(state)
    return copy.to(where).eval()


def _evaluate(run: _Run) -> None:
    """The task's evaluation of the EMA on rank 0, its training random streams left as they were."""
    eval_model = _full_copy(run, run.ema, run.device) if run.sharded else run.ema
    if run.info.is_main:
        with ckpt_lib.preserved_rng(run.device), torch.no_grad():
            result = run.task.evaluate(eval_model, run.step, run.out_dir / "eval") or {}
        run.ema.eval()
        record = {"step": run.step, **{f"eval/{k}": float(v) for k, v in result.items()}}
        run.last_metrics.update({k: v for k, v in record.items() if k != "step"})
        run.reporter.record(record)
    barrier(run.info)


def _write_checkpoint(run: _Run) -> None:
    """``checkpoint.pt``: weights, EMA, optimizer, counters, every rank's random streams, the task's settings."""
    info, config, sharded = run.info, run.config, run.sharded
    rng_states = gather_objects(ckpt_lib.capture_rng(run.device), info)
    if sharded:  # collectives: every rank takes part, rank 0 receives the full tensors
        model_state, ema_state = parallel.full_model_state(run.model), parallel.full_model_state(run.ema)
        optimizer_state = parallel.full_optimizer_state(run.model, run.optimizer)
    if not info.is_main:
        return
    state = {
        "task": run.task.name,
        "step": run.step,
        "data_position": run.position,
        "ema_updates": run.ema_updates,
        "model": model_state if sharded else run.model.state_dict(),
        "ema": ema_state if sharded else run.ema.state_dict(),
        "optimizer": optimizer_state if sharded else run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict() if run.use_scaler else None,
        "lr_schedule": schedule_state(
            run.step,
            lr=config.lr,
            steps=config.steps,
            warmup_steps=config.warmup_steps,
            min_lr_ratio=config.min_lr_ratio,
        ),  # fmt: skip
        "rng": rng_states,
        "world_size": info.world_size,
        "elapsed_s": run.elapsed(),
        "task_settings": run.settings,
    }
    ckpt_lib.save_checkpoint(state, run.out_dir, config_to_dict(config))


def _export(run: _Run) -> nn.Module:
    """``task.export`` of the final EMA on rank 0 (under FSDP an unsharded CPU copy); returns that EMA."""
    final_ema = _full_copy(run, run.ema, "cpu") if run.sharded else run.ema
    if run.info.is_main:
        with ckpt_lib.preserved_rng(run.device), torch.no_grad():
            run.task.export(final_ema, run.out_dir / "model")
        final_ema.eval()
    barrier(run.info)
    return final_ema
