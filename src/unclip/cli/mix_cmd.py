"""``unclip mix ITEM... [--weights W...]``: decode a weighted mixture of captions and images in CLIP space.

An ITEM that names an existing file is an image; any other ITEM is a caption.
"""

from __future__ import annotations

import math
from pathlib import Path

import click

from unclip.cli.generate_cmds import DEFAULT_IMAGES, Images, Steps, _count, _run, common_options
from unclip.cli.outputs import plan_output


def parse_weights(text: str | None, count: int) -> list[float] | None:
    """``--weights "0.3 0.7"`` (spaces or commas) -> one finite float per item; None when not given."""
    if text is None:
        return None
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        weights = [float(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a list of numbers", param_hint="--weights") from None
    if len(weights) != count:
        raise click.BadParameter(f"{len(weights)} weights for {count} items: give one per item", param_hint="--weights")
    if not all(math.isfinite(w) for w in weights):
        raise click.BadParameter(f"{text!r} holds a non-finite number", param_hint="--weights")
    if not sum(weights) > 0:
        raise click.BadParameter(f"weights {weights} must sum to a positive number", param_hint="--weights")
    return weights


@click.command()
@click.argument("items", nargs=-1, required=True)
@click.option("--weights", "-w", default=None, metavar="'W W ...'",
              help="One weight per item (spaces or commas; default equal); they must sum to > 0.")  # fmt: skip
@click.option("-n", "--num-images", type=Images, default=None,
              help=f"Images (default: 1 for a file -o, {DEFAULT_IMAGES} for a directory).")  # fmt: skip
@click.option("--prior-steps", type=Steps, default=None)
@click.option("--upsampler-steps", type=Steps, default=None)
@common_options
def mix(items, weights, num_images, prior_steps, upsampler_steps, model, seed, device, precision, decoder_steps,
        decoder_guidance, out, quiet) -> None:  # fmt: skip
    """Mix ITEMs (captions, or paths of existing image files) in CLIP space and decode the mixture."""
    target = plan_output(out)
    num_images = _count(num_images, target)
    mixed = [Path(item) if Path(item).is_file() else item for item in items]
    parsed = parse_weights(weights, len(items))

    def action(pipe, progress):
        return pipe.mix(
            mixed, weights=parsed, num_images=num_images, seed=seed, prior_steps=prior_steps,
            decoder_steps=decoder_steps, upsampler_steps=upsampler_steps, decoder_guidance_scale=decoder_guidance,
            progress=progress,
        )  # fmt: skip

    params = {"command": "mix", "items": [str(i) for i in items], "weights": parsed, "seed": seed,
              "num_images": num_images, "prior_steps": prior_steps, "decoder_steps": decoder_steps,
              "upsampler_steps": upsampler_steps, "decoder_guidance_scale": decoder_guidance}  # fmt: skip
    _run(action, model, device, target, quiet, params, precision=precision)
