"""``unclip train prior``: train the diffusion, the AR or the projection (ECLIPSE) prior on a shapes cache.

Example (the shipped priors, see docs/priors.md)::

    unclip train prior --kind diffusion --cache runs/shapes_cache -o runs/prior_diffusion --holdout 1000
    unclip train prior --kind ar --cache runs/shapes_cache -o runs/prior_ar --holdout 1000
    unclip train prior --kind projection --cache runs/shapes_cache -o runs/prior_projection --holdout 1000

The cache (``unclip.data.shapes_cache.build_shapes_cache``) holds the CLIP embeddings of world samples; the
last ``--holdout`` rows are never trained on. Writes the run directory of
:func:`unclip.train.loop.run_training` (checkpoint.pt, metrics.jsonl, eval/, model/) and, after training,
``summary.json`` (steps, training seconds, parameter count, for the AR prior K and the PCA fit) and
``prior_quality.json`` + a printed table: mean cosine of sampled z_i to the true z_i and to z_t on the first
``--final-eval-rows`` held-out rows, against the baseline z_t. Re-running the same command resumes.
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


@click.command("prior")
@click.option(
    "--kind", type=click.Choice(["diffusion", "ar", "projection"]), required=True,
    help="Which prior (projection: ECLIPSE's one-pass prior, the diffusion prior's network).",
)  # fmt: skip
@click.option("--cache", "cache_dir", type=click.Path(file_okay=False, exists=True), required=True, help="Cache.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Run directory.")
@click.option("--preset", type=click.Choice(["shapes", "tiny"]), default="shapes", show_default=True)
@click.option("--clip", "clip_name", default=None, help="The cache's CLIP (name or directory; default: its meta).")
@click.option("--steps", type=click.IntRange(min=1), default=2000, show_default=True, help="Optimizer steps.")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True, help="Global batch.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-4, show_default=True)
@click.option("--warmup-steps", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.01, show_default=True)
@click.option("--ema-decay", type=click.FloatRange(0, 1, max_open=True), default=0.999, show_default=True)
@click.option("--grad-accum", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--holdout", type=click.IntRange(min=0), default=1000, show_default=True, help="Trailing rows unseen.")
@click.option("--num-components", type=click.IntRange(min=1), default=None, help="AR: K (default: < 1% rule).")
@click.option("--num-buckets", type=click.IntRange(min=2), default=None, help="AR: buckets per component (preset's).")
@click.option("--dot-buckets", type=click.IntRange(min=2), default=None, help="AR: buckets of the z_i.z_t token.")
@click.option(
    "--max-rel-mse", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01, show_default=True
)
@click.option(
    "--contrastive-weight", type=click.FloatRange(min=0), default=0.2, show_default=True,
    help="Projection: weight of the contrastive loss (ECLIPSE's lambda).",
)  # fmt: skip
@click.option(
    "--temperature", type=click.FloatRange(min=0, min_open=True), default=0.07, show_default=True,
    help="Projection: temperature of the contrastive logits.",
)  # fmt: skip
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Initialisation seed.")
@click.option("--data-seed", type=click.IntRange(min=0), default=0, show_default=True, help="Row order seed.")
@click.option("--eval-every", type=click.IntRange(min=0), default=0, show_default=True, help="0 = never.")
@click.option("--eval-rows", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--final-eval-rows", type=click.IntRange(min=0), default=200, show_default=True, help="0 = skip.")
@click.option("--ckpt-every", type=click.IntRange(min=0), default=100, show_default=True)
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--device", default="auto", show_default=True, help='"auto", "cpu", "cuda", "cuda:1", ...')
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch.set_num_threads for this run.")
@click.option("--max-minutes", type=click.FloatRange(min=0, min_open=True), default=None, help="Wall budget.")
@init_from_option()
@click.option("--export-dtype", type=click.Choice(sorted(_DTYPES)), default="fp32", show_default=True)
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/checkpoint.pt.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a TTY).")
def command(
    kind: str,
    cache_dir: str,
    out_dir: str,
    preset: str,
    clip_name: str | None,
    steps: int,
    batch_size: int,
    lr: float,
    warmup_steps: int,
    weight_decay: float,
    ema_decay: float,
    grad_accum: int,
    holdout: int,
    num_components: int | None,
    num_buckets: int | None,
    dot_buckets: int | None,
    max_rel_mse: float,
    contrastive_weight: float,
    temperature: float,
    precision: str,
    seed: int,
    data_seed: int,
    eval_every: int,
    eval_rows: int,
    final_eval_rows: int,
    ckpt_every: int,
    log_every: int,
    device: str,
    threads: int | None,
    max_minutes: float | None,
    init_from: str | None,
    export_dtype: str,
    resume: bool,
    progress: bool | None,
) -> None:
    """Train a prior (--kind diffusion | ar | projection) on a shapes cache; export EMA weights to OUT/model."""
    import torch

    from unclip.cli.train_common import check_batch_option, check_threads_option, train_config
    from unclip.data.embed_cache import EmbeddingCache, null_text_for_cache
    from unclip.encoders.loading import load_clip
    from unclip.io import atomic_write_text
    from unclip.measure.prior_metrics import format_table, measure_prior_dirs, results_to_json
    from unclip.train.loop import run_training
    from unclip.train.prior_task import ARPriorTask, DiffusionPriorTask, ProjectionPriorTask

    check_threads_option(threads)
    if threads is not None:
        torch.set_num_threads(threads)
    config = train_config(
        dict(
            steps=steps, batch_size=batch_size, grad_accum=grad_accum, lr=lr, warmup_steps=warmup_steps,
            weight_decay=weight_decay, grad_clip=1.0, ema_decay=ema_decay, precision=precision, seed=seed,
            log_every=log_every, ckpt_every=ckpt_every, eval_every=eval_every, device=device, threads=threads,
            max_minutes=max_minutes, fsdp=False, grad_checkpointing=False, init_from=init_from,
        )
    )  # fmt: skip
    try:
        cache = EmbeddingCache.load(cache_dir)
    except (FileNotFoundError, KeyError, ValueError) as err:
        raise click.ClickException(f"cannot read the cache {cache_dir}: {err}") from None
    # The priors never look at pixels: keep a 1-pixel stub so the images' memory is freed.
    cache = dataclasses.replace(cache, images=cache.images[:, :1, :1].clone())
    if not 0 <= holdout <= len(cache) - 2:
        raise click.BadParameter(
            f"{holdout} leaves fewer than 2 of {len(cache)} rows to train on", param_hint="--holdout"
        )
    try:
        clip = load_clip(clip_name or cache.meta.get("clip", "shapes"))
        null_text = null_text_for_cache(cache, clip)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    export = getattr(torch, _DTYPES[export_dtype])
    common = dict(holdout=holdout, data_seed=data_seed, eval_rows=min(eval_rows, holdout), export_dtype=export)
    try:
        if kind == "diffusion":
            task = DiffusionPriorTask(cache, null_text, preset, **common)
        elif kind == "projection":
            task = ProjectionPriorTask(
                cache, null_text, preset, contrastive_weight=contrastive_weight, temperature=temperature, **common
            )
        else:
            task = ARPriorTask(
                cache,
                null_text,
                preset,
                num_components=num_components,
                max_rel_mse=max_rel_mse,
                num_buckets=num_buckets,
                dot_buckets=dot_buckets,
                **common,
            )
    except ValueError as err:
        raise click.ClickException(str(err)) from None
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
    params = sum(p.numel() for p in result.ema_model.parameters())
    summary = {
        "kind": kind,
        "preset": preset,
        "steps": result.step,
        "stop_reason": result.stop_reason,
        "train_s": train_s,
        "parameters": params,
        "batch_size": batch_size,
        "holdout": holdout,
        "train_rows": task.num_train,
        "last_loss": result.metrics.get("loss"),
    }
    if kind == "ar":
        summary["pca"] = task.fit_stats
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    click.echo(
        f"trained {result.step} steps ({result.stop_reason}) in {train_s:.0f} s; {params:,} parameters; "
        f"model written to {out / 'model'}"
    )
    if kind == "ar":
        click.echo(
            f"PCA: K={task.config.num_components}, " + ", ".join(f"{k}={v:.4g}" for k, v in task.fit_stats.items())
        )
    if final_eval_rows and holdout:
        dirs = {f"{kind}_dir": out / "model"}
        results = measure_prior_dirs(cache, holdout, clip=clip, rows=final_eval_rows, **dirs)
        atomic_write_text(out / "prior_quality.json", json.dumps(results_to_json(results), indent=1) + "\n")
        click.echo(f"held-out captions (first {min(final_eval_rows, holdout)} of the last {holdout} rows):")
        click.echo(format_table(results))
