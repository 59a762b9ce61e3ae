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
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from unclip.config import config_to_dict
from unclip.io import remove_orphaned_tmp
from unclip.limits import check_memory, check_threads
from unclip.train import checkpoint as ckpt_lib
from unclip.train import parallel
from unclip.train.config import TrainConfig, result_field_differences
from unclip.train.dist import DistInfo, all_reduce_, barrier, cleanup, gather_objects, init_distributed, shard_indices
from unclip.train.ema import ema_decay_at, make_ema, update_ema
from unclip.train.lr_schedule import lr_at, schedule_state, set_lr
from unclip.train.settings import setting_differences, task_settings
from unclip.train.task import TrainTask

# Keys the loop writes into a metrics line; a task metric with the same name is logged as "task/<name>".
_LOOP_KEYS = {"step", "loss", "lr", "samples_per_s", "grad_norm", "time_s"}
# Host bytes per sample index of one optimizer step (the index lists shard_indices builds: a Python int and
# list slots, ~36 bytes and a copy); checked before any list is built, whatever the task.
INDEX_BYTES = 96
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
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16, False
        return None, False
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        return torch.bfloat16, False
    if precision == "fp16":
        return torch.float16, True
    raise ValueError(f"precision={precision!r} must be one of 'auto', 'fp32', 'bf16', 'fp16'")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on parameters with ``ndim >= 2`` (weights), none on biases/norms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if not groups:
        raise ValueError("the task's model has no trainable parameters")
    return groups


class _StopFlag:
    """Set by SIGINT/SIGTERM (first signal: stop after this step; a second SIGINT interrupts at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


class _Reporter:
    """Progress bar or log lines (rank 0 only) and the metrics JSONL."""

    def __init__(self, task_name: str, config: TrainConfig, out_dir: Path, info: DistInfo, step: int, progress):
        self.name, self.config, self.info = task_name, config, info
        self.metrics_path = out_dir / "metrics.jsonl"
        show = sys.stderr.isatty() if progress is None else bool(progress)
        self.bar = None
        if info.is_main and show:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=config.steps, initial=step, desc=task_name, file=sys.stderr, dynamic_ncols=True)

    def step_done(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def record(self, record: dict[str, Any], announce: bool = True) -> None:
        if not self.info.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if not announce:
            return
        if self.bar is not None and "loss" in record:
            self.bar.set_postfix(loss=f"{record['loss']:.4g}", sps=f"{record['samples_per_s']:.1f}", refresh=False)
        elif "loss" in record:
            self.say(
                f"step {record['step']}/{self.config.steps} loss {record['loss']:.4g} lr {record['lr']:.3g} "
                f"{record['samples_per_s']:.1f} samples/s grad_norm {record['grad_norm']:.3g}"
            )
        else:
            items = " ".join(f"{k} {v:.4g}" for k, v in record.items() if k != "step" and isinstance(v, float))
            self.say(f"step {record['step']} {items}")

    def say(self, text: str) -> None:
        if not self.info.is_main:
            return
        line = f"[{self.name}] {text}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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


def _resume_state(
    task: TrainTask, config: TrainConfig, out_dir: Path, info: DistInfo, settings: dict[str, Any]
) -> dict[str, Any] | None:
    path = out_dir / ckpt_lib.CHECKPOINT_NAME
    if not path.exists():
        return None
    ckpt = ckpt_lib.load_checkpoint(path)
    if ckpt["task"] != task.name:
        raise ValueError(f"{path} belongs to task {ckpt['task']!r}, not {task.name!r}; use another out_dir")
    diffs = result_field_differences(ckpt["config"], config_to_dict(config))
    saved_settings = ckpt.get("task_settings")
    if isinstance(saved_settings, dict):
        diffs += setting_differences(saved_settings, settings)
    elif settings and info.is_main:
        print(
            f"[{task.name}] warning: {path} does not record the task's settings (written by an older unclip); "
            "they cannot be checked on this resume",
            file=sys.stderr,
            flush=True,
        )
    if diffs:
        shown, seen = [], set()
        for name, a, b in diffs:  # one setting seen through several objects (config.x, model_config.x): once
            key = (name.rsplit(".", 1)[-1], repr(a), repr(b))
            if key not in seen:
                seen.add(key)
                shown.append(f"{name}: checkpoint has {a!r}, now {b!r}")
        text = "; ".join(shown)
        raise ValueError(
            f"cannot resume from {path}: settings that change the result differ ({text}). "
            "Restore those values, or start over in a new output directory."
        )
    return ckpt


def _load_init_weights(model: nn.Module, source: Path, task_name: str) -> None:
    """Load the EMA weights of another run (its directory or its checkpoint file) into ``model``."""
    path = source / ckpt_lib.CHECKPOINT_NAME if source.is_dir() else source
    if not path.is_file():
        raise ValueError(f"init_from={str(source)!r}: no checkpoint at {path}")
    ckpt = ckpt_lib.load_checkpoint(path)
    if ckpt.get("task") != task_name:
        raise ValueError(f"init_from={str(source)!r} belongs to task {ckpt.get('task')!r}, not {task_name!r}")
    try:
        model.load_state_dict(ckpt["ema"])
    except RuntimeError as err:
        first_line = str(err).splitlines()[0]
        raise ValueError(f"init_from={str(source)!r} does not fit the task's model: {first_line}") from None


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
    stop = _StopFlag()
    reporter: _Reporter | None = None
    try:
        shard_indices(0, config.batch_size, 0, info.world_size, config.grad_accum)  # validates divisibility
        device = info.device
        amp_dtype, use_scaler = resolve_precision(config.precision, device)
        removed: list[Path] = []
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            for sub in _ATOMIC_DIRS:  # temp files of writes a kill interrupted
                removed += remove_orphaned_tmp(out_dir / sub)

        # Identical initial weights on every rank; then per-rank global streams (e.g. dropout).
        ckpt_lib.seed_everything(config.seed)
        model = task.build_model()
        if not isinstance(model, nn.Module):
            raise TypeError(f"task {task.name!r}: build_model() must return an nn.Module, got {type(model).__name__}")
        if config.init_from is not None:  # a resumed run's own checkpoint overrides these below
            _load_init_weights(model, Path(config.init_from), task.name)
        sharded = config.fsdp and info.distributed
        if not sharded:
            model.to(device)
        model.train()
        ema = make_ema(model)
        if config.grad_checkpointing:
            parallel.apply_gradient_checkpointing(model)
        if sharded:  # FSDP2 moves each rank's shards to the device
            parallel.shard_model(model, device, info.world_size)
            parallel.shard_model(ema, device, info.world_size)
        ckpt_lib.seed_everything(ckpt_lib.derive_seed(config.seed, info.rank, 1))
        optimizer = torch.optim.AdamW(
            param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas, eps=config.adam_eps
        )
        scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

        step, position, ema_updates, elapsed_before, saved_world = 0, 0, 0, 0.0, info.world_size
        settings = task_settings(task)
        ckpt = _resume_state(task, config, out_dir, info, settings) if resume else None
        if ckpt is not None:
            try:
                if sharded:
                    parallel.load_full_model_state(model, ckpt["model"])
                    parallel.load_full_model_state(ema, ckpt["ema"])
                else:
                    model.load_state_dict(ckpt["model"])
                    ema.load_state_dict(ckpt["ema"])
            except RuntimeError as err:
                raise ValueError(
                    f"{out_dir / ckpt_lib.CHECKPOINT_NAME} does not fit the task's model: {str(err).splitlines()[0]}"
                ) from None
            if sharded:
                parallel.load_full_optimizer_state(model, optimizer, ckpt["optimizer"])
            else:
                optimizer.load_state_dict(ckpt["optimizer"])
            if use_scaler and ckpt.get("scaler") is not None:
                scaler.load_state_dict(ckpt["scaler"])
            step, position = int(ckpt["step"]), int(ckpt["data_position"])
            ema_updates, elapsed_before = int(ckpt.get("ema_updates", step)), float(ckpt.get("elapsed_s", 0.0))
            rng = ckpt.get("rng") or []
            saved_world = int(ckpt.get("world_size", 1))
            if saved_world == info.world_size and info.rank < len(rng):
                ckpt_lib.restore_rng(rng[info.rank], device)
            if info.is_main:
                ckpt_lib.truncate_metrics(out_dir / "metrics.jsonl", step)
            del ckpt
        elif info.is_main and (out_dir / "metrics.jsonl").exists():
            (out_dir / "metrics.jsonl").unlink()
        barrier(info)

        reporter = _Reporter(task.name, config, out_dir, info, step, progress)
        if removed:
            names = ", ".join(str(p.relative_to(out_dir)) for p in removed[:3]) + (", ..." if len(removed) > 3 else "")
            reporter.say(f"removed {len(removed)} temporary file(s) left by interrupted writes: {names}")
        if step > 0:
            reporter.say(f"resumed from step {step} (sample {position})")
        if saved_world != info.world_size:
            reporter.say(
                f"the checkpoint was written by {saved_world} processes, now {info.world_size}: the run continues "
                "with the same data and schedule, but not bit-identically (random streams are per rank)"
            )
        if sharded:
            reporter.say(f"fully sharded (FSDP2) over {info.world_size} processes ({device.type})")
        elif info.world_size > 1:
            reporter.say(f"data parallel over {info.world_size} processes ({device.type})")

        train_model: nn.Module = model
        if info.distributed and not sharded:
            train_model = DistributedDataParallel(
                model,
                device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=config.ddp_find_unused_parameters,
            )
        stop.install()
        start_time = time.monotonic()

        def elapsed() -> float:
            return elapsed_before + time.monotonic() - start_time

        def full_copy(module: nn.Module, where: torch.device | str) -> nn.Module:
            """An unsharded copy of a sharded network on rank 0 (a collective; other ranks get ``module``)."""
            state = parallel.full_model_state(module)
            if not info.is_main:
                return module
            with ckpt_lib.preserved_rng(device):
                copy = task.build_model()
            copy.load_state_dict(state)
            return copy.to(where).eval()

        def write_checkpoint() -> None:
            rng_states = gather_objects(ckpt_lib.capture_rng(device), info)
            if sharded:  # collectives: every rank takes part, rank 0 receives the full tensors
                model_state, ema_state = parallel.full_model_state(model), parallel.full_model_state(ema)
                optimizer_state = parallel.full_optimizer_state(model, optimizer)
            else:
                model_state = ema_state = optimizer_state = None
            if info.is_main:
                state = {
                    "task": task.name,
                    "step": step,
                    "data_position": position,
                    "ema_updates": ema_updates,
                    "model": model_state if sharded else model.state_dict(),
                    "ema": ema_state if sharded else ema.state_dict(),
                    "optimizer": optimizer_state if sharded else optimizer.state_dict(),
                    "scaler": scaler.state_dict() if use_scaler else None,
                    "lr_schedule": schedule_state(
                        step,
                        lr=config.lr,
                        steps=config.steps,
                        warmup_steps=config.warmup_steps,
                        min_lr_ratio=config.min_lr_ratio,
                    ),
                    "rng": rng_states,
                    "world_size": info.world_size,
                    "elapsed_s": elapsed(),
                    "task_settings": settings,
                }
                ckpt_lib.save_checkpoint(state, out_dir, config_to_dict(config))

        last_metrics: dict[str, float] = {}

        def evaluate() -> None:
            eval_model = full_copy(ema, device) if sharded else ema
            if info.is_main:
                with ckpt_lib.preserved_rng(device), torch.no_grad():
                    result = task.evaluate(eval_model, step, out_dir / "eval") or {}
                ema.eval()
                record = {"step": step, **{f"eval/{k}": float(v) for k, v in result.items()}}
                last_metrics.update({k: v for k, v in record.items() if k != "step"})
                reporter.record(record)
            barrier(info)

        # Interval accumulators (device tensors, so a step never waits for the device).
        acc_dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        loss_sum = torch.zeros((), device=device, dtype=acc_dtype)
        gnorm_sum = torch.zeros((), device=device, dtype=acc_dtype)
        task_sums: dict[str, float] = {}
        interval_steps, interval_micro, interval_t0 = 0, 0, time.monotonic()
        autocast = (
            torch.autocast(device_type=device.type, dtype=amp_dtype)
            if amp_dtype is not None
            else contextlib.nullcontext()
        )
        stop_reason = "done"
        last_ckpt_step = step if step > 0 else -1
        lr = config.lr

        def flush(now_step: int) -> None:
            nonlocal loss_sum, gnorm_sum, task_sums, interval_steps, interval_micro, interval_t0
            if interval_steps == 0:
                return
            keys = sorted(task_sums)
            packed = torch.tensor([loss_sum.item(), *[task_sums[k] for k in keys]], dtype=torch.float64)
            if info.distributed:
                gathered = gather_objects((keys, packed.tolist()), info)
                if any(g[0] != keys for g in gathered):
                    raise RuntimeError(f"task {task.name!r} returned different metric names on different ranks")
                packed = torch.tensor([g[1] for g in gathered], dtype=torch.float64).sum(0)
            denom = interval_micro * info.world_size
            gnorm = gnorm_sum.item() / interval_steps
            loss = packed[0].item() / denom
            if not use_scaler and not (math.isfinite(gnorm) and math.isfinite(loss)):
                raise FloatingPointError(
                    f"task {task.name!r}: non-finite loss ({loss}) or gradient norm ({gnorm}) by step {now_step}; "
                    f"the last checkpoint (step {max(last_ckpt_step, 0)}) is still good. Lower lr, set grad_clip, "
                    "or use precision='fp32'."
                )
            dt = max(time.monotonic() - interval_t0, 1e-9)
            record: dict[str, Any] = {
                "step": now_step,
                "loss": loss,
                "lr": lr,
                "samples_per_s": interval_steps * config.batch_size / dt,
                "grad_norm": gnorm,
                "time_s": elapsed(),
            }
            for i, k in enumerate(keys):
                record[f"task/{k}" if k in _LOOP_KEYS else k] = packed[1 + i].item() / denom
            last_metrics.update({k: v for k, v in record.items() if k != "step"})
            reporter.record(record)
            loss_sum = torch.zeros_like(loss_sum)
            gnorm_sum = torch.zeros_like(gnorm_sum)
            task_sums = {}
            interval_steps, interval_micro, interval_t0 = 0, 0, time.monotonic()

        while step < config.steps:
            local_stop = stop.requested or (
                config.max_minutes is not None and time.monotonic() - start_time > 60.0 * config.max_minutes
            )
            if info.distributed:  # every rank must stop at the same step
                local_stop = all_reduce_(torch.tensor([float(local_stop)], device=device), info, "max").item() > 0
            if local_stop:
                stop_reason = "signal" if stop.requested else "max_minutes"
                break

            lr = lr_at(
                step,
                lr=config.lr,
                steps=config.steps,
                warmup_steps=config.warmup_steps,
                min_lr_ratio=config.min_lr_ratio,
            )
            set_lr(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            micro_batches = shard_indices(position, config.batch_size, info.rank, info.world_size, config.grad_accum)
            for micro, indices in enumerate(micro_batches):
                batch = task.get_batch(indices, device)
                generator = torch.Generator(device=device)
                generator.manual_seed(ckpt_lib.derive_seed(config.seed, step, info.rank, micro))
                last_micro = micro == len(micro_batches) - 1
                if sharded:
                    sync = parallel.gradient_sync(model, last_micro)
                else:
                    sync = train_model.no_sync() if info.distributed and not last_micro else contextlib.nullcontext()
                with sync:
                    with autocast:
                        loss, metrics = _loss_value(task, task.loss(train_model, batch, generator))
                    scaler.scale(loss.float() / config.grad_accum).backward()
                loss_sum += loss.detach().to(acc_dtype)
                for k, v in metrics.items():
                    task_sums[k] = task_sums.get(k, 0.0) + float(v)
                interval_micro += 1
            scaler.unscale_(optimizer)
            max_norm = config.grad_clip if config.grad_clip is not None else float("inf")
            grad_norm = parallel.grad_norm_value(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
            scaler.step(optimizer)
            scaler.update()
            update_ema(ema, model, ema_decay_at(ema_updates, config.ema_decay, config.ema_warmup))
            ema_updates += 1
            gnorm_sum += grad_norm.detach().to(acc_dtype)
            step += 1
            position += config.batch_size
            interval_steps += 1
            reporter.step_done()

            if step % config.log_every == 0 or step == config.steps:
                flush(step)
            if config.eval_every and (step % config.eval_every == 0 or step == config.steps):
                flush(step)
                evaluate()
                interval_t0 = time.monotonic()
            if config.ckpt_every and step % config.ckpt_every == 0 and step < config.steps:
                flush(step)
                write_checkpoint()
                last_ckpt_step = step
                interval_t0 = time.monotonic()

        flush(step)
        if step != last_ckpt_step:
            write_checkpoint()
        if stop_reason != "done":
            reporter.say(f"stopped at step {step}/{config.steps} ({stop_reason}); checkpoint written")
        final_ema = full_copy(ema, "cpu") if sharded else ema  # under FSDP: an unsharded copy on rank 0
        if info.is_main:
            with ckpt_lib.preserved_rng(device), torch.no_grad():
                task.export(final_ema, out_dir / "model")
            final_ema.eval()
        barrier(info)
        return TrainResult(
            model=model, ema_model=final_ema, step=step, metrics=last_metrics, stop_reason=stop_reason, out_dir=out_dir
        )
    finally:
        torch.set_num_threads(threads_before)
        stop.uninstall()
        if reporter is not None:
            reporter.close()
        cleanup(info)
