"""``unclip experiment NAME``: reproduce one of the paper's claims on the shapes world (issue 7).

Writes ``NAME.md``, ``NAME.json`` and ``NAME.png`` under ``-o`` (default ``docs/experiments``) and refreshes
its ``README.md``. Resumable: finished units are kept under ``--run-dir/NAME`` and re-used; baselines it
trains resume from their checkpoints. ``unclip experiment list`` shows the experiments and their budgets;
``unclip experiment readme`` only rewrites the README.
"""

from __future__ import annotations

import click

_NAMES = (
    "diversity", "prior_matters", "ar_vs_diffusion", "guidance_fid", "variations", "text_diffs", "binding", "pca",
    "eclipse",
)  # fmt: skip


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("name", type=click.Choice([*_NAMES, "list", "readme"]))
@click.option(
    "--budget",
    type=click.Choice(["quick", "full"]),
    default="quick",
    show_default=True,
    help="Sample sizes and baseline training budget (see `unclip experiment list`).",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    default="docs/experiments",
    show_default=True,
    help="Where the table, JSON, plot and README go.",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False),
    default="runs/experiments",
    show_default=True,
    help="Intermediate results and trained baselines (resumable).",
)
@click.option(
    "--shapes-run",
    type=click.Path(file_okay=False),
    default="runs/shapes",
    show_default=True,
    help="Run directory of `unclip train shapes` (pipeline/, cache/, clip/, prior/).",
)
@click.option(
    "--pipeline",
    default=None,
    help="Pipeline directory or built-in name [default: SHAPES_RUN/pipeline if it exists, else the built-in 'shapes'].",
)
@click.option(
    "--cache", type=click.Path(file_okay=False), default=None, help="Shapes cache [default: SHAPES_RUN/cache]."
)
@click.option("--oracle", type=click.Path(file_okay=False), default=None, help="Oracle directory [default: shipped].")
@click.option(
    "--holdout",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Trailing cache rows never trained on.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=4242,
    show_default=True,
    help="World seed of the evaluation scenes and seed of the sampling noise.",
)
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch.set_num_threads.")
@click.option(
    "--ar-prior",
    type=click.Path(file_okay=False),
    default=None,
    help="ar_vs_diffusion: exported AR prior [default: discovered under runs/prior_*].",
)
@click.option(
    "--diffusion-prior",
    type=click.Path(file_okay=False),
    default=None,
    help="ar_vs_diffusion: exported diffusion prior [default: discovered under runs/prior_*].",
)
@click.option(
    "--decoders",
    type=click.Path(file_okay=False, exists=True),
    default=None,
    help="Decoder comparisons: decoders trained elsewhere (decoder_image/, decoder_caption/, "
    "decoder_text_embedding/, e.g. by benchmarks/gpu_experiment_decoders.py) instead of training them.",
)
@click.option("--quiet", is_flag=True, help="No progress lines.")
def experiment(name, budget, out_dir, run_dir, shapes_run, pipeline, cache, oracle, holdout, seed, device, threads,
               ar_prior, diffusion_prior, decoders, quiet) -> None:  # fmt: skip
    """Run experiment NAME (one of the paper's claims) and write its table, JSON and plot."""
    from unclip.experiments import EXPERIMENTS, ExperimentContext, get_spec, run_experiment
    from unclip.experiments.report import write_readme

    if name == "list":
        for key in EXPERIMENTS:
            spec = get_spec(key)
            click.echo(f"{spec.number}. {key}: {spec.title}")
            for b, text in spec.cpu_budget.items():
                click.echo(f"     --budget {b}: {text}")
        return
    if name == "readme":
        click.echo(str(write_readme(out_dir)))
        return
    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    def log(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    ctx_options = click.get_current_context()
    extra = []
    for param in ("out_dir", "run_dir", "shapes_run", "pipeline", "cache", "oracle", "holdout", "seed", "ar_prior",
                  "diffusion_prior", "decoders"):  # fmt: skip
        source = ctx_options.get_parameter_source(param)
        if source is not None and source.name == "COMMANDLINE":
            opt = next(p for p in experiment.params if p.name == param)
            extra.append(f"{opt.opts[-1]} {ctx_options.params[param]}")
    ctx = ExperimentContext(run_root=run_dir, out_dir=out_dir, shapes_run=shapes_run, pipeline=pipeline, cache=cache,
                            oracle=oracle, holdout=holdout, device=device, seed=seed, log=log,
                            progress=False if quiet else None, command_extra=" ".join(extra),
                            decoders=decoders)  # fmt: skip
    overrides = {}
    if name == "ar_vs_diffusion":
        overrides = {k: v for k, v in (("ar_dir", ar_prior), ("diffusion_dir", diffusion_prior)) if v is not None}
    elif ar_prior or diffusion_prior:
        raise click.UsageError("--ar-prior/--diffusion-prior apply to ar_vs_diffusion only")
    try:
        paths = run_experiment(name, ctx, budget, **overrides)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    for p in paths.values():
        click.echo(str(p))
