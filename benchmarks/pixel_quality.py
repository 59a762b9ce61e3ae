"""Clean pixels (issue 19): background colour error and grain per stage, and the upsampler against bicubic.

    python benchmarks/pixel_quality.py --model shapes --seed 999 --scenes 24 --images 2
    python benchmarks/pixel_quality.py --upsampler-steps 7 15 --json out.json

Held-out scenes of ``ShapesWorld(seed, full_caption_prob=1)`` (every attribute named, so the object sits in the named
grid cell) are generated at the model's defaults, the decoder's output kept before the upsamplers. Each image's
background is read by :func:`unclip.measure.pixels.read_background` outside the objects' cells: error = the largest
channel of |median - palette colour|, grain = robust std, in 8-bit levels. Rows: the decoder's output, bicubic of
it, the upsampler on it (at each ``--upsampler-steps``), and the upsampler on the clean truth render at the
decoder's size, whose mean squared error to the truth at full size is printed beside bicubic's (pixels in [0, 1]).
Targets of issue 19: error <= 4 on every background, grain <= 2.5, upsampler MSE <= bicubic's.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from unclip import UnCLIPPipeline  # noqa: E402
from unclip.data.shapes import Scene, ShapesWorld, images_to_tensor  # noqa: E402
from unclip.measure.pixels import read_background, summarize_backgrounds  # noqa: E402
from unclip.precision import resolve_precision  # noqa: E402
from unclip.stages.decoding import sample_upsampler  # noqa: E402


def to_levels(images: torch.Tensor) -> list[np.ndarray]:
    """[B, 3, S, S] in [-1, 1] -> B arrays [S, S, 3] in 8-bit levels (rounded, as a PNG stores them)."""
    levels = images.float().clamp(-1, 1).add(1).mul(127.5).round()
    return list(levels.permute(0, 2, 3, 1).cpu().numpy())


def render(world: ShapesWorld, scenes: list[Scene], size: int) -> torch.Tensor:
    """Truth renders [B, 3, size, size] in [-1, 1]."""
    return images_to_tensor([world.render(scene, size) for scene in scenes])


def row(name: str, images: torch.Tensor, scenes: list[Scene]) -> dict[str, float]:
    readings = [read_background(image, scene) for image, scene in zip(to_levels(images), scenes)]
    summary = summarize_backgrounds(readings)
    per_background: dict[str, list[float]] = {}
    for reading, scene in zip(readings, scenes):
        per_background.setdefault(scene.background, []).append(reading.error)
    summary["worst_background"] = max(per_background, key=lambda b: np.mean(per_background[b]))
    summary["worst_background_error"] = float(np.mean(per_background[summary["worst_background"]]))
    print(
        f"{name:34s} error mean {summary['error_mean']:5.1f} max {summary['error_max']:5.1f}  "
        f"grain mean {summary['grain_mean']:4.1f} max {summary['grain_max']:4.1f}  "
        f"worst background {summary['worst_background']} ({summary['worst_background_error']:.1f})"
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--seed", type=int, default=999, help="World seed of the held-out scenes.")
    parser.add_argument("--scenes", type=int, default=24)
    parser.add_argument("--images", type=int, default=2, help="Images per scene's caption.")
    parser.add_argument("--two-object-prob", type=float, default=0.0)
    parser.add_argument("--upsampler-steps", type=int, nargs="+", default=None, help="Default: the model's.")
    parser.add_argument("--decoder-steps", type=int, default=None, help="Default: the model's.")
    parser.add_argument("--decoder-guidance", type=float, default=None, help="Default: the model's.")
    parser.add_argument("--sampler", default=None, help="Default: the model's.")
    parser.add_argument(
        "--true-embeddings",
        action="store_true",
        help="Decode from CLIP's z_i of each scene's truth render instead of the prior's (separates the prior).",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--precision", default="auto", help="the pipeline's dtype: fp32, bf16 or auto (the model's default, as the CLI)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    pipe = UnCLIPPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    dtype = resolve_precision(pipe.defaults.precision if args.precision == "auto" else args.precision, "cpu")
    pipe.to("cpu", dtype)  # networks in this dtype, sampler arithmetic in float32
    if len(pipe.upsamplers) != 1:
        raise SystemExit(f"this benchmark reads one upsampler stage; {args.model} has {len(pipe.upsamplers)}")
    stage = pipe.upsamplers[0]
    world = ShapesWorld(seed=args.seed, two_object_prob=args.two_object_prob, full_caption_prob=1.0)
    samples = [world.sample(i) for i in range(args.scenes)]
    scenes = [s.scene for s in samples for _ in range(args.images)]
    captions = [s.caption for s in samples]
    high = stage.model.config.image_size
    low = pipe.decoder.model.config.image_size
    steps = args.upsampler_steps or [pipe.defaults.upsampler_steps]
    print(
        f"{args.model}: {len(scenes)} images of held-out seed {args.seed}, decoder {low} px -> upsampler {high} px, "
        f"networks in {dtype}"
    )

    upsamplers, pipe.upsamplers = pipe.upsamplers, []
    embeddings = None
    if args.true_embeddings:
        from PIL import Image

        embeddings = pipe.embed_images([Image.fromarray(world.render(scene, high)) for scene in scenes])
    decoded = pipe(
        captions, num_images_per_prompt=args.images, seed=0, output_type="pt", decoder_steps=args.decoder_steps,
        image_embeddings=embeddings,
        decoder_guidance_scale=args.decoder_guidance, sampler=args.sampler,
    ).images * 2 - 1  # fmt: skip
    pipe.upsamplers = upsamplers
    results: dict[str, dict] = {"truth": row("truth render", render(world, scenes, high), scenes)}
    results["decoder"] = row(f"decoder ({low} px)", decoded, scenes)
    results["bicubic"] = row("bicubic of the decoder", F.interpolate(decoded, size=high, mode="bicubic"), scenes)
    clean_low, clean_high = render(world, scenes, low), render(world, scenes, high)
    bicubic_mse = float(
        ((F.interpolate(clean_low, size=high, mode="bicubic").clamp(-1, 1) - clean_high) / 2).pow(2).mean()
    )

    def upsample(images: torch.Tensor, n: int) -> torch.Tensor:
        with torch.no_grad():
            return sample_upsampler(
                stage.model, stage.diffusion, images, steps=n, sampler=pipe.defaults.sampler,
                generator=torch.Generator().manual_seed(1), last_step_model=stage.last_step_model,
                keep_mean=pipe.defaults.upsampler_keep_mean,
            )  # fmt: skip

    for n in steps:
        results[f"upsampler_{n}"] = row(f"upsampler, {n} steps, on the decoder", upsample(decoded, n), scenes)
        on_clean = upsample(clean_low, n)
        clean = row(f"upsampler, {n} steps, on clean input", on_clean, scenes)
        clean["mse_to_truth"] = float(((on_clean.clamp(-1, 1) - clean_high) / 2).pow(2).mean())
        clean["bicubic_mse_to_truth"] = bicubic_mse
        results[f"upsampler_{n}_clean"] = clean
        print(f"{'':34s} MSE to the {high} px truth: upsampler {clean['mse_to_truth']:.4f}, bicubic {bicubic_mse:.4f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
