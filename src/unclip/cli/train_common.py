"""Options shared by the ``unclip train STAGE`` commands that run the one training loop.

``train_options`` adds the :class:`~unclip.train.config.TrainConfig` options (and ``-o``, ``--resume``,
``--progress``) to a click command; ``train_config(options)`` builds the validated config from them.
"""

from __future__ import annotations

from typing import Any

import click


def init_from_option():
    """``--init-from``: another run's EMA weights (its directory or checkpoint.pt) or an exported stage folder
    (``model.safetensors``, e.g. the built-in model's ``decoder/``); read by ``train.resume.load_init_weights``."""
    return click.option(
        "--init-from",
        type=click.Path(exists=True),
        default=None,
        help=(
            "Fine-tune: start from the EMA weights of another run (its directory or checkpoint.pt), or from an "
            "exported stage folder holding model.safetensors (e.g. the built-in model's decoder/)."
        ),
    )


def train_options(*, steps: int, batch_size: int, lr: float, warmup: int = 100, ema: float = 0.999,
                  ckpt_every: int = 200, eval_every: int = 500):  # fmt: skip
    """Decorator adding the training-loop options with stage-specific defaults."""
    options = [
        click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Run directory."),
        click.option("--steps", type=click.IntRange(min=1), default=steps, show_default=True, help="Optimizer steps."),
        click.option("--batch-size", type=click.IntRange(min=1), default=batch_size, show_default=True),
        click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True),
        click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=lr, show_default=True),
        click.option(
            "--lr-scale",
            "lr_scales",
            multiple=True,
            metavar="PREFIX=FACTOR",
            help=(
                "Train the parameters whose names start with PREFIX at FACTOR times the learning rate (repeatable; "
                "the first matching prefix wins), e.g. --lr-scale clip_emb=10 for a fine-tune's conditioning."
            ),
        ),
        click.option("--warmup-steps", type=click.IntRange(min=0), default=warmup, show_default=True),
        click.option("--weight-decay", type=click.FloatRange(min=0), default=0.0, show_default=True),
        click.option("--grad-clip", type=click.FloatRange(min=0), default=1.0, show_default=True),
        click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True), default=ema, show_default=True),
        click.option(
            "--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True
        ),  # fmt: skip
        click.option(
            "--memory-format",
            type=click.Choice(["auto", "channels_last", "contiguous"]),
            default="auto",
            show_default=True,
            help="Weights' layout while training (auto: channels-last for conv networks).",
        ),  # fmt: skip
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--log-every", type=click.IntRange(min=1), default=20, show_default=True),
        click.option("--ckpt-every", type=click.IntRange(min=0), default=ckpt_every, show_default=True),
        click.option(
            "--eval-every", type=click.IntRange(min=0), default=eval_every, show_default=True, help="0 = never."
        ),  # fmt: skip
        click.option("--device", default="auto", show_default=True, help='"auto", "cpu", "cuda", ...'),
        click.option("--threads", type=click.IntRange(min=1), default=None, help="torch.set_num_threads."),
        click.option(
            "--max-minutes",
            type=click.FloatRange(min=0, min_open=True),
            default=None,
            help="Wall budget; stops cleanly with a checkpoint.",
        ),  # fmt: skip
        click.option(
            "--fsdp/--no-fsdp",
            default=False,
            show_default=True,
            help="Shard the network with FSDP2 (multi-GPU runs under torchrun).",
        ),  # fmt: skip
        click.option(
            "--grad-checkpointing/--no-grad-checkpointing",
            default=False,
            show_default=True,
            help="Recompute activations in the backward pass to save memory.",
        ),  # fmt: skip
        init_from_option(),
        click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/checkpoint.pt."),
        click.option("--progress/--no-progress", default=None, help="Progress bar (default: on a terminal)."),
    ]

    def decorate(func):
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


TRAIN_KEYS = (
    "steps", "batch_size", "grad_accum", "lr", "warmup_steps", "weight_decay", "grad_clip", "ema_decay",
    "precision", "memory_format", "seed", "log_every", "ckpt_every", "eval_every", "device", "threads",
    "max_minutes", "fsdp", "grad_checkpointing", "init_from",
)  # fmt: skip


def check_threads_option(threads: int | None, option: str = "--threads") -> None:
    """Usage error when ``--threads`` exceeds this machine's CPUs (checked before torch.set_num_threads)."""
    from unclip.limits import ResourceLimitError, check_threads

    try:
        check_threads(option, threads)
    except ResourceLimitError as err:
        raise click.UsageError(str(err)) from None


def check_batch_option(task: Any, config: Any, option: str = "--batch-size") -> None:
    """Usage error when one step of ``task`` at ``config.batch_size`` would not fit this machine's memory."""
    from unclip.limits import ResourceLimitError
    from unclip.train.bounds import check_train_batch

    try:
        check_train_batch(task, config, option)
    except ResourceLimitError as err:
        raise click.UsageError(str(err)) from None


def parse_lr_scales(items: Any) -> tuple[tuple[str, float], ...]:
    """``("clip_emb=10", ...)`` -> ``(("clip_emb", 10.0), ...)``; a usage error names a malformed item."""
    out = []
    for item in items:
        prefix, sep, factor = str(item).partition("=")
        try:
            value = float(factor)
        except ValueError:
            value = float("nan")
        if not sep or not prefix or not value > 0 or value == float("inf"):
            raise click.BadParameter(f"{item!r} is not PREFIX=FACTOR with a factor > 0", param_hint="--lr-scale")
        out.append((prefix, value))
    return tuple(out)


def train_config(options: dict[str, Any]):
    """A validated TrainConfig from the options of :func:`train_options` (usage error naming a bad value)."""
    from unclip.train.config import TrainConfig

    check_threads_option(options.get("threads"))
    values = {k: options[k] for k in TRAIN_KEYS if k not in ("init_from", "memory_format")}
    values["init_from"] = options.get("init_from")  # commands without --init-from leave it None
    values["memory_format"] = options.get("memory_format", "auto")
    values["num_threads"] = values.pop("threads")
    values["lr_scales"] = parse_lr_scales(options.get("lr_scales", ()))
    values["warmup_steps"] = min(values["warmup_steps"], values["steps"])
    if values["batch_size"] % values["grad_accum"]:
        raise click.BadParameter(
            f"{values['batch_size']} is not divisible by --grad-accum {values['grad_accum']}", param_hint="--batch-size"
        )
    try:
        return TrainConfig(**values)
    except (TypeError, ValueError) as err:
        raise click.UsageError(str(err)) from None


def run_stage(task: Any, options: dict[str, Any]):
    """Run the one training loop for ``task`` with the command's options; returns its TrainResult."""
    from pathlib import Path

    from unclip.train.loop import run_training

    config = train_config(options)
    check_batch_option(task, config)
    try:
        return run_training(
            task, config, Path(options["out_dir"]), resume=options["resume"], progress=options["progress"]
        )
    except ValueError as err:  # e.g. a changed config on resume
        raise click.ClickException(str(err)) from None
