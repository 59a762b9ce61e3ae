"""``unclip train decoder``: the decoder on a shapes cache (z_i [+ text] -> base image), one trainer.

Example (the built-in model's decoder, docs/models.md)::

    unclip train decoder --cache runs/shapes_cache -o runs/decoder --steps 6000 --batch-size 32 --lr 1e-3

Re-running the same command resumes from ``OUT/checkpoint.pt``; the EMA weights land in ``OUT/model``.
"""

from __future__ import annotations

import click

from unclip.cli.train_common import run_stage, train_options


@click.command("decoder")
@click.option("--cache", type=click.Path(file_okay=False, exists=True), required=True, help="Shapes cache dir.")
@click.option("--preset", default="shapes", show_default=True, help="Decoder preset.")
@click.option("--holdout", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--text/--no-text", "use_text", default=True, show_default=True, help="Condition on the caption too.")
@click.option("--image-drop", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--text-drop", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--prediction", type=click.Choice(["v", "eps", "x0"]), default="v", show_default=True,
              help="What the network predicts (v is robust for short training; Karlo uses eps).")  # fmt: skip
@click.option("--snr-gamma", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Min-SNR-gamma weighting of the MSE term (e.g. 5); default: unweighted.")  # fmt: skip
@click.option("--channel-mean-weight", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Extra weight of each channel's spatial-mean error (global colour) in the MSE term.")  # fmt: skip
@click.option("--norm-groups", type=click.IntRange(min=1), default=None,
              help="GroupNorm groups [default: the preset's].")  # fmt: skip
@click.option("--image-embedding-grid", type=click.IntRange(min=0), default=None,
              help="Side G of a located z_i map added to the first convolution (0: off) [default: the preset's]; "
                   "grown zero-initialised on an --init-from decoder.")  # fmt: skip
@train_options(steps=6000, batch_size=32, lr=1e-3, warmup=200, ema=0.999, eval_every=1000)
def command(
    cache,
    preset,
    holdout,
    prediction,
    snr_gamma,
    channel_mean_weight,
    norm_groups,
    image_embedding_grid,
    use_text,
    image_drop,
    text_drop,
    **options,
) -> None:
    """Train the decoder U-Net (learned variance, hybrid loss) on a shapes cache."""
    from dataclasses import replace

    from unclip.diffusion.stage_config import DECODER_DIFFUSION
    from unclip.train.decoder_task import DecoderTask, DecoderTaskConfig

    try:
        task = DecoderTask(
            DecoderTaskConfig(
                cache=cache, preset=preset, holdout=holdout, use_text=use_text, image_drop=image_drop,
                text_drop=text_drop, diffusion=replace(DECODER_DIFFUSION, prediction=prediction),
                snr_gamma=snr_gamma, norm_groups=norm_groups, channel_mean_weight=channel_mean_weight,
                image_embedding_grid=image_embedding_grid,
            )
        )  # fmt: skip
    except (ValueError, FileNotFoundError) as err:
        raise click.ClickException(str(err)) from None
    run_stage(task, options)
