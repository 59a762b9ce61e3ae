"""``unclip generate | vary | interpolate | edit``: the generating commands.

``-o x.png`` writes one image (several images: an error unless the path is a directory); any other
``-o`` is a directory that gets ``0000.png, 0001.png, ...`` and ``grid.png``. Files are written atomically.
Progress is shown on a terminal only; errors are one line on stderr with a non-zero exit code.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from unclip.cli.outputs import OutputTarget, plan_output, write_images
from unclip.cli.startup import resume_gc
from unclip.pipeline import bounds
from unclip.precision import PRECISIONS

SAMPLERS = ("ddpm", "ddim", "dpm++", "unclip")
"""The names in the sampler registry (unclip.samplers.registry.SAMPLERS), written out so that `unclip --help` does not
import torch; tests/edges/test_edges_cli.py checks that the two agree. A new sampler adds its name here too."""
DEFAULT_IMAGES = 4
"""Images a directory ``-o`` gets without ``-n`` (a file ``-o`` gets one)."""


class FiniteFloat(click.ParamType):
    """A float in [low, high]; NaN and infinities are refused (click's FloatRange lets NaN through)."""

    name = "float"

    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number) or not self.low <= number <= self.high:
            self.fail(f"{value!r} is not a finite number in [{self.low:g}, {self.high:g}]", param, ctx)
        return number

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"[{self.low:g}<=x<={self.high:g}]"


Steps = click.IntRange(1, bounds.MAX_STEPS)
Guidance = FiniteFloat(0.0, bounds.MAX_GUIDANCE)
Images = click.IntRange(1, bounds.MAX_IMAGES)


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


def _load(model: str, device: str, precision: str):
    """The pipeline on ``device`` in the dtype ``precision`` names; ``auto``: the model's own default, resolved on
    this hardware (:mod:`unclip.precision`). Returns ``(pipe, precision name that ran)``."""
    import torch

    from unclip.pipeline import UnCLIPPipeline
    from unclip.precision import resolve_precision

    pipe = UnCLIPPipeline.from_pretrained(model, device=device)
    dtype = resolve_precision(pipe.defaults.precision if precision == "auto" else precision, device)
    if dtype != torch.float32:
        pipe.to(device, dtype)
    resume_gc()  # the console script paused it for the start-up (unclip.cli.startup)
    return pipe, {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _run(
    action: Callable[[Any, Any], list], model: str, device: str, target: OutputTarget, quiet: bool,
    params: dict[str, Any], per_image: list[dict[str, Any]] | None = None, precision: str = "auto",
) -> None:  # fmt: skip
    """Load the model, run ``action(pipe, progress)``, write the images; one-line errors and warnings.

    ``params`` (the command's settings; None values dropped) go into every image's metadata with the model and the
    image's ``index``, and ``per_image[i]`` into image i's."""
    from unclip.limits import check_device

    try:
        check_device("--device", device)
    except ValueError as err:
        raise click.BadParameter(str(err).removeprefix("--device "), param_hint="--device") from None
    progress = _Progress(enabled=not quiet and sys.stderr.isatty())
    keep_mean = click.get_current_context().meta.get(KEEP_MEAN_KEY)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipe, ran_in = _load(model, device, precision)
            if keep_mean is not None:
                from unclip.pipeline.options import MEAN_COLOUR_SETTINGS  # torch is loaded by now

                for name in MEAN_COLOUR_SETTINGS:
                    setattr(pipe.defaults, name, keep_mean)
            images = action(pipe, progress)
    except (ValueError, TypeError, OSError, RuntimeError) as err:
        progress.close()
        _echo_warnings(caught if "caught" in locals() else [], quiet)
        raise click.ClickException(str(err)) from None
    progress.close()
    _echo_warnings(caught, quiet)
    shared = {"model": model, "precision": ran_in, **{k: v for k, v in params.items() if v is not None}}
    if keep_mean is not None:
        shared["keep_mean"] = keep_mean
    metadata = [{**shared, "index": i, **(per_image[i] if per_image else {})} for i in range(len(images))]
    try:
        paths = write_images(images, target, metadata)
    except OSError as err:
        raise click.ClickException(f"cannot write {target.path}: {err.strerror or err}") from None
    if not quiet:
        click.echo(f"wrote {len(images)} image(s) to {target.path if not target.is_file else paths[0]}")


def _echo_warnings(caught: list, quiet: bool) -> None:
    """Show the library's warnings (prompt truncation, unknown words) as one line each."""
    if quiet:
        return
    for w in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)):
        click.echo(f"warning: {w}", err=True)


KEEP_MEAN_KEY = "unclip.keep_mean"
"""Where ``--keep-mean/--no-keep-mean`` leaves its value (click's context meta) for :func:`_run`."""


def _remember_keep_mean(ctx: click.Context, _param: click.Parameter, value: bool | None) -> None:
    ctx.meta[KEEP_MEAN_KEY] = value


def common_options(func):
    """--model, --seed, --device, --precision, --keep-mean, -o, --quiet: every generating command takes them."""
    options = [
        click.option("--model", "-m", default="shapes", show_default=True, help="Built-in model, directory or hub id."),
        click.option(
            "--seed", type=click.IntRange(0, bounds.MAX_SEED), default=0, show_default=True, help="Random seed."
        ),
        click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda."),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default="auto",
            show_default=True,
            help="Network dtype; auto: the model's default (bf16 only where the hardware has it natively).",
        ),  # fmt: skip
        click.option("--decoder-steps", type=Steps, default=None, help="Decoder sampling steps."),
        click.option("--decoder-guidance", type=Guidance, default=None, help="Decoder guidance scale."),
        click.option(
            "--keep-mean/--no-keep-mean",
            default=None,
            expose_value=False,
            callback=_remember_keep_mean,
            help="Keep each image's mean colour through sampling (zero-mean decoder noise, keep-mean guidance, "
            "upsamplers keep their input's mean)  [default: the model's; on for the built-in model]",
        ),
        click.option(
            "-o",
            "--out",
            type=click.Path(path_type=Path),
            required=True,
            help="Output image file (.png, .jpg) or directory.",
        ),  # fmt: skip
        click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _count(num_images: int | None, target: OutputTarget) -> int:
    """``-n``, defaulting to 1 for a file ``-o`` and 4 for a directory; several images need a directory."""
    if num_images is None:
        return 1 if target.is_file else DEFAULT_IMAGES
    if target.is_file and num_images != 1:
        raise click.UsageError(f"-o {target.path} names one file but -n is {num_images}; give a directory")
    return num_images


@click.command()
@click.argument("prompt", nargs=-1, required=True)
@click.option("-n", "--num-images", type=Images, default=None,
              help=f"Images per prompt (default: 1 for a file -o, {DEFAULT_IMAGES} for a directory).")  # fmt: skip
@click.option("--sampler", type=click.Choice(SAMPLERS), default=None, help="Sampler for every stage.")
@click.option("--prior-steps", type=Steps, default=None)
@click.option("--upsampler-steps", type=Steps, default=None)
@click.option("--prior-guidance", type=Guidance, default=None)
@click.option("--best-of", type=click.IntRange(1, bounds.MAX_BEST_OF), default=None, help="Prior candidates per image.")
@click.option("--eta", type=FiniteFloat(0.0, bounds.MAX_ETA), default=None, help="DDIM eta.")
@click.option("--negative", default=None, metavar="TEXT",
              help="Negative prompt: the unconditional branch of prior and decoder steers away from it.")  # fmt: skip
@common_options
def generate(prompt, num_images, sampler, prior_steps, upsampler_steps, prior_guidance, best_of, eta, negative, model,
             seed, device, precision, decoder_steps, decoder_guidance, out, quiet) -> None:  # fmt: skip
    """Text to image: N images for PROMPT (several prompts: N images each)."""
    prompts = list(prompt)
    target = plan_output(out)
    num_images = _count(num_images, target)
    if target.is_file and len(prompts) != 1:
        raise click.UsageError(f"-o {out} names one file but there are {len(prompts)} prompts; give a directory")
    settings = dict(sampler=sampler, prior_steps=prior_steps, decoder_steps=decoder_steps,
                    upsampler_steps=upsampler_steps, prior_guidance_scale=prior_guidance,
                    decoder_guidance_scale=decoder_guidance, best_of=best_of, eta=eta)  # fmt: skip

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
            negative_prompt=negative,
            progress=progress,
        )

    params = {"command": "generate", "prompt": prompts[0] if len(prompts) == 1 else prompts, "seed": seed,
              "negative_prompt": negative, "num_images_per_prompt": num_images,
              **{k: v for k, v in settings.items() if v is not None}}  # fmt: skip
    _run(action, model, device, target, quiet, params, precision=precision)


@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-n", "--num-images", type=Images, default=None,
              help=f"Variations (default: 1 for a file -o, {DEFAULT_IMAGES} for a directory).")  # fmt: skip
@click.option("--eta", type=FiniteFloat(0.0, bounds.MAX_ETA), default=1.0, show_default=True,
              help="DDIM eta (> 0 varies).")  # fmt: skip
@common_options
def vary(image, num_images, eta, model, seed, device, precision, decoder_steps, decoder_guidance, out, quiet) -> None:
    """Variations of IMAGE: keep its CLIP embedding, resample the details."""
    target = plan_output(out)
    num_images = _count(num_images, target)

    def action(pipe, progress):
        return pipe.vary(
            image, num_images=num_images, eta=eta, seed=seed, decoder_steps=decoder_steps,
            decoder_guidance_scale=decoder_guidance, progress=progress,
        )  # fmt: skip

    params = {"command": "vary", "image": str(image), "seed": seed, "num_images": num_images, "eta": eta,
              "decoder_steps": decoder_steps, "decoder_guidance_scale": decoder_guidance}  # fmt: skip
    _run(action, model, device, target, quiet, params, precision=precision)


@click.command()
@click.argument("image_a", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("image_b", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--frames", type=click.IntRange(bounds.MIN_FRAMES, bounds.MAX_FRAMES), default=8, show_default=True)
@click.option("--noise", type=click.Choice(["fixed", "slerp"]), default="fixed", show_default=True,
              help="x_T shared by all frames, or slerped between the images' inversions.")  # fmt: skip
@common_options
def interpolate(image_a, image_b, frames, noise, model, seed, device, precision, decoder_steps, decoder_guidance, out,
                quiet) -> None:  # fmt: skip
    """Interpolate between IMAGE_A and IMAGE_B in CLIP image-embedding space."""
    target = plan_output(out)
    if target.is_file:
        raise click.UsageError(f"-o {out} names one file but there are {frames} frames; give a directory")

    def action(pipe, progress):
        return pipe.interpolate(
            image_a, image_b, num_frames=frames, noise=noise, seed=seed, decoder_steps=decoder_steps,
            decoder_guidance_scale=decoder_guidance, progress=progress,
        )  # fmt: skip

    params = {"command": "interpolate", "image_a": str(image_a), "image_b": str(image_b), "seed": seed,
              "num_frames": frames, "noise": noise, "decoder_steps": decoder_steps,
              "decoder_guidance_scale": decoder_guidance}  # fmt: skip
    _run(action, model, device, target, quiet, params, precision=precision)


@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "to_text", required=True, help="Caption of the target.")
@click.option("--from", "from_text", default=None, help="Caption of the source image (default: empty).")
@click.option("--theta", "thetas", type=FiniteFloat(*bounds.THETA_RANGE), multiple=True,
              help="Edit strengths (repeat; default 0 0.25 0.5).")  # fmt: skip
@common_options
def edit(image, to_text, from_text, thetas, model, seed, device, precision, decoder_steps, decoder_guidance, out,
         quiet) -> None:  # fmt: skip
    """Text diff: move IMAGE's CLIP embedding toward --to (away from --from)."""
    target = plan_output(out)
    thetas = list(thetas) or [0.0, 0.25, 0.5]
    if target.is_file and len(thetas) != 1:
        raise click.UsageError(f"-o {out} names one file but there are {len(thetas)} thetas; give a directory")

    def action(pipe, progress):
        return pipe.edit(
            image, to_text=to_text, from_text=from_text, thetas=thetas, seed=seed,
            decoder_steps=decoder_steps, decoder_guidance_scale=decoder_guidance, progress=progress,
        )  # fmt: skip

    params = {"command": "edit", "image": str(image), "to_text": to_text, "from_text": from_text, "seed": seed,
              "decoder_steps": decoder_steps, "decoder_guidance_scale": decoder_guidance}  # fmt: skip
    _run(action, model, device, target, quiet, params, per_image=[{"theta": t} for t in thetas], precision=precision)
