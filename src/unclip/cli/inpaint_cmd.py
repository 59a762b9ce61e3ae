"""``unclip inpaint IMAGE MASK PROMPT``: repaint the white part of MASK in IMAGE with what PROMPT describes.

The image and the mask are read and checked (same size, something to repaint) before the model is loaded, so a
bad input fails in milliseconds with one line.
"""

from __future__ import annotations

from pathlib import Path

import click

from unclip.cli.generate_cmds import DEFAULT_IMAGES, Guidance, Images, Steps, _count, _run, common_options
from unclip.cli.outputs import plan_output
from unclip.pipeline import bounds

MAX_JUMP_N_SAMPLE = 50
"""unclip.pipeline.inpainting.MAX_JUMP_N_SAMPLE, written out so that `unclip --help` does not import torch
(tests/cli/test_inpaint_cli.py checks that the two agree)."""
CONTEXT_CANDIDATES = 16
"""unclip.pipeline.inpainting.CONTEXT_CANDIDATES (checked the same way)."""


def _check_inputs(image: Path, mask: Path):
    """The loaded image and mask, or a one-line usage error naming the bad argument."""
    from unclip.pipeline.inpainting import load_inpaint_inputs

    for name, path in (("IMAGE", image), ("MASK", mask)):
        if not path.is_file():
            raise click.BadParameter(f"{path} does not exist or is not a file", param_hint=name)
    try:
        return load_inpaint_inputs(image, mask)
    except (ValueError, TypeError, OSError) as err:
        raise click.UsageError(str(err)) from None


@click.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("mask", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("prompt")
@click.option("-n", "--num-images", type=Images, default=None,
              help=f"Images (default: 1 for a file -o, {DEFAULT_IMAGES} for a directory).")  # fmt: skip
@click.option("--jump-length", type=click.IntRange(1, bounds.MAX_STEPS), default=None,
              help="RePaint: steps each jump goes back (default 5; < --decoder-steps).")  # fmt: skip
@click.option("--jump-n-sample", type=click.IntRange(1, MAX_JUMP_N_SAMPLE), default=None,
              help="RePaint: times each stretch is resampled (default 1: no jumps).")  # fmt: skip
@click.option("--candidates", type=click.IntRange(1, bounds.MAX_BEST_OF), default=CONTEXT_CANDIDATES,
              show_default=True, help="Prior samples per image; the one fitting IMAGE best is decoded.")  # fmt: skip
@click.option("--prior-steps", type=Steps, default=None)
@click.option("--upsampler-steps", type=Steps, default=None)
@click.option("--prior-guidance", type=Guidance, default=None)
@click.option("--best-of", type=click.IntRange(1, bounds.MAX_BEST_OF), default=None,
              help="Prior candidates per sample, ranked by the caption.")  # fmt: skip
@common_options
def inpaint(image, mask, prompt, num_images, jump_length, jump_n_sample, candidates, prior_steps, upsampler_steps,
            prior_guidance, best_of, model, seed, device, precision, decoder_steps, decoder_guidance, out,
            quiet) -> None:  # fmt: skip
    """Repaint the white part of MASK (same size as IMAGE; black = keep) with PROMPT; the rest stays IMAGE's."""
    target = plan_output(out)
    num_images = _count(num_images, target)
    if not prompt.strip():
        raise click.BadParameter("the prompt is empty", param_hint="PROMPT")
    if jump_n_sample not in (None, 1) and jump_length is not None and decoder_steps is not None:
        if jump_length >= decoder_steps:
            raise click.BadParameter(
                f"{jump_length} must be less than --decoder-steps ({decoder_steps}) to resample",
                param_hint="--jump-length",
            )
    inputs = _check_inputs(image, mask)

    def action(pipe, progress):
        from unclip.pipeline.inpainting import inpaint as run_inpaint

        return run_inpaint(
            pipe, inputs.image, mask, prompt, num_images, seed=seed, jump_length=jump_length,
            jump_n_sample=jump_n_sample, context_candidates=candidates, prior_steps=prior_steps,
            decoder_steps=decoder_steps, upsampler_steps=upsampler_steps, prior_guidance_scale=prior_guidance,
            decoder_guidance_scale=decoder_guidance, best_of=best_of, progress=progress,
        ).images  # fmt: skip

    params = {"command": "inpaint", "image": str(image), "mask": str(mask), "prompt": prompt, "seed": seed,
              "num_images": num_images, "jump_length": jump_length, "jump_n_sample": jump_n_sample,
              "context_candidates": candidates, "prior_steps": prior_steps, "decoder_steps": decoder_steps,
              "upsampler_steps": upsampler_steps, "prior_guidance_scale": prior_guidance,
              "decoder_guidance_scale": decoder_guidance, "best_of": best_of}  # fmt: skip
    _run(action, model, device, target, quiet, params, precision=precision)
