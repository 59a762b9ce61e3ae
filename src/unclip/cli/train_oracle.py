"""``unclip train oracle``: train the shapes oracle through the one training loop.

The shipped oracle (``unclip/assets/oracle``) is ``DIR/model`` of::

    unclip train oracle --steps 2400 --batch-size 64 --lr 2e-3 --warmup-steps 100 --threads 2 -o runs/oracle

(see ``docs/oracle.md`` for the exact command, time and accuracy).
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command(name="oracle")
@click.option("--steps", type=click.IntRange(min=1), default=2400, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True, help="Global batch.")
@click.option(
    "--lr", type=click.FloatRange(min=0.0, min_open=True), default=2e-3, show_default=True, help="Peak learning rate."
)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0.0), default=0.01, show_default=True)
@click.option("--ema-decay", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.995, show_default=True)
@click.option(
    "--preset",
    type=click.Choice(["shapes", "tiny"]),
    default="shapes",
    show_default=True,
    help="Oracle network preset.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Training seed.")
@click.option(
    "--data-seed",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Shapes-world seed of the training data.",
)
@click.option("--two-object-prob", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True)
@click.option(
    "--eval-every",
    type=click.IntRange(min=0),
    default=500,
    show_default=True,
    help="Evaluate every N steps (0: never).",
)
@click.option("--ckpt-every", type=click.IntRange(min=0), default=200, show_default=True)
@click.option(
    "--max-minutes",
    type=click.FloatRange(min=0.0, min_open=True),
    default=None,
    help="Stop cleanly after this many minutes.",
)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch CPU threads.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True)
@click.option(
    "--init-from",
    type=click.Path(exists=True),
    default=None,
    help="Fine-tune: start from the EMA weights of another oracle run (its directory or checkpoint.pt).",
)
@click.option("--fresh", is_flag=True, help="Start over instead of resuming from DIR/checkpoint.pt.")
@click.option(
    "-o",
    "--out",
    "out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Run directory (checkpoint, metrics, eval, and the exported oracle in DIR/model).",
)
def command(steps: int, batch_size: int, lr: float, warmup_steps: int, weight_decay: float, ema_decay: float,
            preset: str, seed: int, data_seed: int, two_object_prob: float, eval_every: int, ckpt_every: int,
            max_minutes: float | None, threads: int | None, device: str, precision: str, init_from: str | None,
            fresh: bool,
            out: Path) -> None:  # fmt: skip
    """Train the shapes oracle (attribute classifier and Fréchet feature network)."""
    from unclip.cli.train_common import check_batch_option, check_threads_option
    from unclip.models.oracle_net import PRESETS
    from unclip.train.config import TrainConfig
    from unclip.train.loop import run_training
    from unclip.train.oracle_task import OracleTask, OracleTaskConfig

    check_threads_option(threads)
    try:
        config = TrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            warmup_steps=min(warmup_steps, steps),
            weight_decay=weight_decay,
            ema_decay=ema_decay,
            seed=seed,
            eval_every=eval_every,
            ckpt_every=ckpt_every,
            max_minutes=max_minutes,
            num_threads=threads,
            device=device,
            precision=precision,
            init_from=init_from,
        )
        task = OracleTask(PRESETS[preset](), OracleTaskConfig(data_seed=data_seed, two_object_prob=two_object_prob))
    except ValueError as err:
        raise click.UsageError(str(err)) from None
    check_batch_option(task, config)
    try:
        result = run_training(task, config, out, resume=not fresh)
    except ValueError as err:  # e.g. a corrupt checkpoint or a changed setting on resume
        raise click.ClickException(str(err)) from None
    click.echo(f"oracle: {result.step} steps ({result.stop_reason}); exported to {out / 'model'}")
