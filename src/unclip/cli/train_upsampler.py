"""``unclip train upsampler``: a super-resolution stage on crops of shapes-cache images, one trainer.

Example (the built-in model's 32 -> 64 upsampler)::

    unclip train upsampler --cache runs/shapes_cache -o runs/upsampler --steps 3000 --batch-size 32
"""

from __future__ import annotations

import click

from unclip.cli.train_common import run_stage, train_options


@click.command("upsampler")
@click.option("--cache", type=click.Path(file_okay=False, exists=True), required=True, help="Shapes cache dir.")
@click.option("--preset", default="shapes", show_default=True, help="Upsampler preset.")
@click.option("--holdout", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--degradation", type=click.Choice(["blur", "bsr"]), default="blur", show_default=True,
              help="Low-res corruption: blur (first stage) or BSR-style (second stage).")  # fmt: skip
@click.option("--blur-prob", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="With blur: share of training inputs blurred (the rest plain bicubic downscales).")  # fmt: skip
@click.option("--crop-fraction", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Training crop side / target side (0.5 = a quarter of the area).")  # fmt: skip
@click.option("--image-size", type=click.IntRange(min=8), default=None, help="Override the preset's output size.")
@click.option("--low-res-size", type=click.IntRange(min=4), default=None, help="Override the preset's input size.")
@click.option("--prediction", type=click.Choice(["v", "eps", "x0"]), default="v", show_default=True,
              help="What the network predicts (v is robust for short training; Karlo uses eps).")  # fmt: skip
@click.option("--residual/--no-residual", default=False, show_default=True,
              help="Diffuse x - bicubic(low-res): colours come from the bicubic resize exactly.")  # fmt: skip
@train_options(steps=3000, batch_size=32, lr=5e-4, warmup=100, ema=0.999, eval_every=1000)
def command(
    cache,
    preset,
    holdout,
    prediction,
    degradation,
    blur_prob,
    crop_fraction,
    image_size,
    low_res_size,
    residual,
    **options,
) -> None:
    """Train an upsampler U-Net (fixed-small variance) on a shapes cache."""
    from dataclasses import replace

    from unclip.diffusion.stage_config import UPSAMPLER_DIFFUSION
    from unclip.train.decoder_task import UpsamplerTask, UpsamplerTaskConfig

    try:
        task = UpsamplerTask(
            UpsamplerTaskConfig(
                cache=cache,
                preset=preset,
                holdout=holdout,
                degradation=degradation,
                blur_prob=blur_prob,
                crop_fraction=crop_fraction,
                image_size=image_size,
                low_res_size=low_res_size,
                residual=residual,
                diffusion=replace(UPSAMPLER_DIFFUSION, prediction=prediction),
            )
        )
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    run_stage(task, options)
