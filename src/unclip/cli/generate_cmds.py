"""``unclip generate | vary | interpolate | edit``: the generating commands (DESIGN.md §8).

``-o x.png`` writes one image (several images: an error unless the path is a directory); any other
``-o`` is a directory that gets ``0000.png, 0001.png, ...`` and ``grid.png``. Files are written atomically.
Progress is shown on a terminal only; errors are one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

SAMPLERS = ("ddpm", "ddim", "dpm++", "unclip")


def _save_png(image, path: Path) -> None:
    from unclip.io import atomic_write_bytes

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def write_images(images: list, out: Path) -> list[Path]:
    """Write images to ``out`` (a ``.png`` file for one image, else a directory with a grid)."""
    from unclip.pipeline.images import make_grid

    if out.suffix.lower() == ".png" and not out.is_dir():
        if len(images) != 1:
            raise click.UsageError(f"-o {out} names one PNG file but there are {len(images)} images; give a directory")
        _save_png(images[0], out)
        return [out]
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        path = out / f"{i:04d}.png"
        _save_png(image, path)
        paths.append(path)
    _save_png(make_grid(images), out / "grid.png")
    return paths + [out / "grid.png"]


class _Progress:
    """A tqdm bar per stage, shown only on a terminal."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None
        self.stage = None

    def __call__(self, stage: str, step: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        if stage != self.stage or self.bar is None:
            if self.bar is not None:
                self.bar.close()
            self.bar = tqdm(total=total, desc=stage, unit="step", leave=False, file=sys.stderr)
            self.stage = stage
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _load(model: str, device: str):
    from unclip.pipeline import UnCLIPPipeline

    return UnCLIPPipeline.from_pretrained(model, device=device)


def _run(action: Callable[[Any], list], model: str, device: str, out: Path, quiet: bool) -> None:
    """Load the model, run ``action(pipe, progress)``, write the images; one-line errors."""
    progress = _Progress(enabled=not quiet and sys.stderr.isatty())
    try:
        pipe = _load(model, device)
        images = action(pipe, progress)
    except (ValueError, TypeError, FileNotFoundError, OSError) as err:
        progress.close()
        raise click.ClickException(str(err)) from None
    progress.close()
    paths = write_images(images, out)
    if not quiet:
        click.echo(f"wrote {len(images)} image(s) to {out if out.suffix.lower() != '.png' else paths[0]}")


def common_options(func):
    """--model, --seed, --device, -o, --quiet: every generating command takes them."""
    options = [
        click.option("--model", "-m", default="shapes", show_default=True, help="Built-in model name or directory."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Random seed."),
        click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda."),
        click.option("--decoder-steps", type=click.IntRange(min=1), default=None, help="Decoder sampling steps."),
        click.option("--decoder-guidance", type=click.FloatRange(min=0), default=None, help="Decoder guidance scale."),
        click.option(
            "-o", "--out", type=click.Path(path_type=Path), required=True, help="Output .png file or directory."
        ),
        click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@click.command()
@click.argument("prompt", nargs=-1, required=True)
@click.option("-n", "--num-images", type=click.IntRange(min=1, max=256), default=4, show_default=True)
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None, help="Sampler for every stage.")
@click.option("--prior-steps", type=click.IntRange(min=1), default=None)
@click.option("--upsampler-steps", type=click.IntRange(min=1), default=None)
@click.option("--prior-guidance", type=click.FloatRange(min=0), default=None)
@click.option("--best-of", type=click.IntRange(min=1), default=None, help="Prior candidates per image.")
@click.option("--eta", type=click.FloatRange(min=0), default=None, help="DDIM eta.")
@common_options
def generate(prompt, num_images, sampler, prior_steps, upsampler_steps, prior_guidance, best_of, eta, model, seed,
             device, decoder_steps, decoder_guidance, out, quiet) -> None:  # fmt: skip
    """Text to image: N images for PROMPT (several prompts: N images each)."""
    prompts = list(prompt)

    def action(pipe, progress):
        return pipe(
            prompts,
            num_images_per_prompt=num_images,
            seed=seed,
            sampler=sampler,
            prior_steps=prior_steps,
            decoder_steps=decoder_steps,
            upsampler_steps=upsampler_steps,
            prior_guidance_scale=prior_guidance,
            decoder_guidance_scale=decoder_guidance,
            best_of=best_of,
            eta=eta,
            progress=progress,
        )

    _run(action, model, device, out, quiet)


@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-n", "--num-images", type=click.IntRange(min=1, max=256), default=4, show_default=True)
@click.option("--eta", type=click.FloatRange(min=0), default=1.0, show_default=True, help="DDIM eta (> 0 varies).")
@common_options
def vary(image, num_images, eta, model, seed, device, decoder_steps, decoder_guidance, out, quiet) -> None:
    """Variations of IMAGE: keep its CLIP embedding, resample the details."""

    def action(pipe, progress):
        return pipe.vary(
            image, num_images=num_images, eta=eta, seed=seed, decoder_steps=decoder_steps,
            decoder_guidance_scale=decoder_guidance, progress=progress,
        )  # fmt: skip

    _run(action, model, device, out, quiet)


@click.command()
@click.argument("image_a", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("image_b", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--frames", type=click.IntRange(min=2, max=256), default=8, show_default=True)
@click.option("--noise", type=click.Choice(["fixed", "slerp"]), default="fixed", show_default=True,
              help="x_T shared by all frames, or slerped between the images' inversions.")  # fmt: skip
@common_options
def interpolate(image_a, image_b, frames, noise, model, seed, device, decoder_steps, decoder_guidance, out,
                quiet) -> None:  # fmt: skip
    """Interpolate between IMAGE_A and IMAGE_B in CLIP image-embedding space."""

    def action(pipe, progress):
        return pipe.interpolate(
            image_a, image_b, num_frames=frames, noise=noise, seed=seed, decoder_steps=decoder_steps,
            decoder_guidance_scale=decoder_guidance, progress=progress,
        )  # fmt: skip

    _run(action, model, device, out, quiet)


@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "to_text", required=True, help="Caption of the target.")
@click.option("--from", "from_text", default=None, help="Caption of the source image (default: empty).")
@click.option("--theta", "thetas", type=click.FloatRange(0.0, 1.0), multiple=True,
              help="Edit strengths (repeat; default 0 0.25 0.5).")  # fmt: skip
@common_options
def edit(image, to_text, from_text, thetas, model, seed, device, decoder_steps, decoder_guidance, out,
         quiet) -> None:  # fmt: skip
    """Text diff: move IMAGE's CLIP embedding toward --to (away from --from)."""

    def action(pipe, progress):
        return pipe.edit(
            image, to_text=to_text, from_text=from_text, thetas=list(thetas) or [0.0, 0.25, 0.5], seed=seed,
            decoder_steps=decoder_steps, decoder_guidance_scale=decoder_guidance, progress=progress,
        )  # fmt: skip

    _run(action, model, device, out, quiet)
