"""``unclip train clip``: contrastive training of our small CLIP on the shapes world (one trainer).

Example (the shipped CLIP, see docs/clip.md)::

    unclip train clip --steps 1000 --batch-size 128 -o runs/clip

Writes the run directory of :func:`unclip.train.loop.run_training` (checkpoint.pt, metrics.jsonl, eval/,
model/) and, after training, ``retrieval.json``: image->text top-1 retrieval of the exported model among
``--final-eval-pairs`` held-out pairs. Re-running the same command resumes from the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import click

from unclip.cli.train_common import init_from_option

_DTYPES = {"fp16": "float16", "fp32": "float32"}


@click.command("clip")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=click.IntRange(min=2), default=128, show_default=True, help="Global batch.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Run directory.")
@click.option("--preset", type=click.Choice(["shapes", "shapes64", "tiny"]), default="shapes", show_default=True)
@click.option(
    "--image-norm", type=click.Choice(["channel", "batch", "group"]), default=None, help="Override the preset's."
)
@click.option(
    "--grid-pool",
    type=click.IntRange(min=0),
    default=None,
    help="Side of the located colour summary branch (0 = off) [default: the preset's].",
)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=50, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.05, show_default=True)
@click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True), default=0.995, show_default=True)
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Initialisation seed.")
@click.option("--data-seed", type=click.IntRange(min=0), default=0, show_default=True, help="Training world seed.")
@click.option(
    "--eval-seed", type=click.IntRange(min=0), default=1_000_003, show_default=True, help="Held-out world seed."
)
@click.option("--full-caption-prob", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option(
    "--hard-negatives",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="Altered copies of each caption (mostly another colour or shape) added as extra negatives.",
)
@click.option(
    "--swap-negatives",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Binding negatives per two-object caption: an attribute (or the objects) exchanged between the objects.",
)
@click.option(
    "--two-object-prob",
    type=click.FloatRange(0, 1),
    default=0.25,
    show_default=True,
    help="Share of two-object scenes in the training world.",
)
@init_from_option()
@click.option("--eval-every", type=click.IntRange(min=0), default=250, show_default=True, help="0 = never.")
@click.option("--eval-pairs", type=click.IntRange(min=2), default=500, show_default=True)
@click.option("--final-eval-pairs", type=click.IntRange(min=0), default=1000, show_default=True, help="0 = skip.")
@click.option("--ckpt-every", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--device", default="auto", show_default=True, help='"auto", "cpu", "cuda", "cuda:1", ...')
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch.set_num_threads for this run.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None, help="Wall budget.")
@click.option("--export-dtype", type=click.Choice(sorted(_DTYPES)), default="fp16", show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/checkpoint.pt.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a TTY).")
def command(
    steps: int,
    batch_size: int,
    out_dir: str,
    preset: str,
    image_norm: str | None,
    grid_pool: int | None,
    lr: float,
    warmup_steps: int,
    weight_decay: float,
    ema_decay: float,
    grad_accum: int,
    precision: str,
    seed: int,
    data_seed: int,
    eval_seed: int,
    full_caption_prob: float,
    hard_negatives: int,
    swap_negatives: int,
    two_object_prob: float,
    init_from: str | None,
    eval_every: int,
    eval_pairs: int,
    final_eval_pairs: int,
    ckpt_every: int,
    log_every: int,
    device: str,
    threads: int | None,
    max_minutes: float | None,
    export_dtype: str,
    resume: bool,
    progress: bool | None,
) -> None:
    """Train the small CLIP contrastively on the shapes world; export EMA weights to OUT/model."""
    import torch

    from unclip.cli.train_common import check_batch_option, train_config
    from unclip.encoders.own_clip import OwnClipEncoder
    from unclip.io import atomic_write_text
    from unclip.models.clip import PRESETS
    from unclip.train.clip_task import ClipTask, evaluate_retrieval
    from unclip.train.loop import run_training

    if data_seed == eval_seed:
        raise click.BadParameter(f"must differ from --data-seed ({data_seed})", param_hint="--eval-seed")
    config = train_config(
        dict(
            steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps,
            weight_decay=weight_decay, grad_clip=1.0, ema_decay=ema_decay, precision=precision, seed=seed,
            log_every=log_every, ckpt_every=ckpt_every, eval_every=eval_every, device=device, threads=threads,
            max_minutes=max_minutes, fsdp=False, grad_checkpointing=False, init_from=init_from,
        )
    )  # fmt: skip
    clip_config = PRESETS[preset]()
    if image_norm is not None:
        clip_config = dataclasses.replace(clip_config, image_norm=image_norm)
    if grid_pool is not None:
        try:
            clip_config = dataclasses.replace(clip_config, image_grid_pool=grid_pool)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--grid-pool") from None
    task = ClipTask(
        clip_config,
        data_seed=data_seed,
        eval_seed=eval_seed,
        full_caption_prob=full_caption_prob,
        hard_negatives=hard_negatives,
        swap_negatives=swap_negatives,
        two_object_prob=two_object_prob,
        eval_pairs=eval_pairs,
        export_dtype=getattr(torch, _DTYPES[export_dtype]),
    )
    check_batch_option(task, config)
    out = Path(out_dir)
    t0 = time.monotonic()
    try:
        result = run_training(task, config, out, resume=resume, progress=progress)
    except ValueError as err:  # e.g. a checkpoint whose config differs in a result-changing field
        raise click.ClickException(str(err)) from None
    wall = time.monotonic() - t0
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    train_s = float(result.metrics.get("time_s", wall))  # training time over all resumes
    click.echo(
        f"trained {result.step} steps ({result.stop_reason}) in {train_s:.0f} s; model written to {out / 'model'}"
    )
    if result.stop_reason == "signal":  # asked to stop (e.g. pre-emption): do not linger
        click.echo("stopped by a signal: skipping the final evaluation (re-run the command to resume)")
        return
    if final_eval_pairs:
        encoder = OwnClipEncoder.from_pretrained(out / "model")
        t1 = time.monotonic()
        metrics = evaluate_retrieval(encoder, seed=eval_seed, num_pairs=final_eval_pairs, size=encoder.image_size)
        metrics.update(
            {"step": result.step, "eval_seed": eval_seed, "train_s": train_s, "eval_s": time.monotonic() - t1}
        )
        atomic_write_text(out / "retrieval.json", json.dumps(metrics, indent=1) + "\n")
        click.echo("held-out retrieval: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
