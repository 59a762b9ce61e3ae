"""``unclip train shapes``: train the built-in model, every stage in order (see ``unclip.recipes``).

    unclip train shapes -o runs/shapes                      # the shipped model (~2 h on 2 CPU cores)
    unclip train shapes --recipe quick -o runs/quick        # ~10 min, rough
    unclip train shapes --recipe test -o /tmp/t             # seconds, for CI

Interrupt it at any time; the same command resumes. ``--install`` copies the result into the package as
the built-in ``shapes`` model.
"""

from __future__ import annotations

import click


@click.command("shapes")
@click.option("--recipe", "recipe_name", type=click.Choice(["shapes", "quick", "test", "shapes-gpu"]),
              default="shapes", show_default=True)  # fmt: skip
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Run directory.")
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch.set_num_threads.")
@click.option("--install", is_flag=True, help="Copy the trained pipeline into the package (built-in 'shapes').")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a terminal).")
@click.option(
    "--reuse-upsampler",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Take the upsampler of this pipeline (e.g. an earlier run's pipeline/) instead of training it; "
    "it depends only on rendered images, not on CLIP.",
)
def command(recipe_name: str, out_dir: str, device: str, threads: int | None, install: bool, progress,
            reuse_upsampler: str | None) -> None:  # fmt: skip
    """Train CLIP, cache, prior, decoder and upsampler of the shapes model, then assemble the pipeline."""
    from unclip.cli.train_common import check_threads_option
    from unclip.recipes import get_recipe, train_shapes

    check_threads_option(threads)
    try:
        recipe = get_recipe(recipe_name, device)
        path = train_shapes(
            recipe, out_dir, device=device, threads=threads, progress=progress, install=install,
            reuse_upsampler=reuse_upsampler,
        )  # fmt: skip
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"pipeline: {path}")
