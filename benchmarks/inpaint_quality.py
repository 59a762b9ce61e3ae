"""Issue 18 item 5's inpainting check: mask the object of held-out one-object shapes scenes, prompt another shape
and colour there, and ask the shipped oracle whether the masked region shows what was prompted.

    python benchmarks/inpaint_quality.py --scenes 20 --images 2 --variants short:1 short:3 full:1

Scenes come from ``ShapesWorld(seed=999, two_object_prob=0)`` (the built-in model trained on world seed 0). The
mask is the object's bounding box plus ``--margin`` pixels; the prompt names a colour other than the object's and
the background's and another shape, either alone ("short": "a blue star") or as the caption of the wanted image
("full": "a blue star at the top on a red background", the masked object's position and the scene's background).
A variant ``STYLE:R`` runs RePaint with ``jump_n_sample = R`` (R = 1: no jump-back; ``--jump-length`` L).

Per variant: ``object`` = fraction of images where the oracle reads an object of the prompted colour and shape with
its centre inside the mask box, ``colour`` = the same for the colour alone, ``outside_mean``/``outside_max`` =
mean/max |Δ| (8-bit levels) between output and source outside the mask, seconds per image.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

WORLD_SEED = 999


def scene_task(world, index: int, side: int, margin: int) -> dict:
    """Scene ``index``: its render, the mask box around its object and the prompted replacement."""
    from unclip.data.shapes_captions import COLOURS, POSITION_PHRASES, SHAPES
    from unclip.data.shapes_render import SHAPE_EXTENT

    scene = world.sample(index).scene
    (obj,) = scene.objects
    reach = SHAPE_EXTENT[obj.shape] * obj.r * side + margin
    x0, x1 = max(0, int(obj.cx * side - reach)), min(side, int(obj.cx * side + reach) + 1)
    y0, y1 = max(0, int(obj.cy * side - reach)), min(side, int(obj.cy * side + reach) + 1)
    mask = np.zeros((side, side), np.uint8)
    mask[y0:y1, x0:x1] = 255
    rng = np.random.default_rng([WORLD_SEED, index, 1])
    colour = str(rng.choice([c for c in COLOURS if c not in (obj.colour, scene.background)]))
    shape = str(rng.choice([s for s in SHAPES if s != obj.shape]))
    short = f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"
    full = f"{short} {POSITION_PHRASES[obj.position]} on a {scene.background} background"
    return {"source": world.render(scene, side), "mask": mask, "box": (x0, x1, y0, y1), "colour": colour,
            "shape": shape, "prompts": {"short": short, "full": full}}  # fmt: skip


def in_box(o: dict, box: tuple[int, int, int, int], side: int) -> bool:
    x0, x1, y0, y1 = box
    return x0 <= o["cx"] * side < x1 and y0 <= o["cy"] * side < y1


def run_variant(pipe, oracle, tasks: list[dict], style: str, repeats: int, args) -> dict:
    from PIL import Image

    from unclip.measure.oracle import predict
    from unclip.pipeline.inpainting import inpaint

    hits = colour_hits = total = 0
    outside: list[float] = []
    outside_max = 0
    t0 = time.time()
    for index, task in enumerate(tasks):
        out = inpaint(
            pipe, Image.fromarray(task["source"]), task["mask"], task["prompts"][style], args.images, seed=index,
            jump_length=args.jump_length, jump_n_sample=repeats, context_candidates=args.candidates, output_type="pt",
            decoder_guidance_scale=args.decoder_guidance, decoder_steps=args.decoder_steps,
        ).images  # fmt: skip
        got = np.round(out.permute(0, 2, 3, 1).numpy() * 255).astype(np.int16)
        keep = task["mask"] == 0
        delta = np.abs(got[:, keep] - task["source"][keep].astype(np.int16))
        outside.append(float(delta.mean()))
        outside_max = max(outside_max, int(delta.max()))
        for record in predict(oracle, out * 2 - 1):
            objects = [o for o in record["objects"] if in_box(o, task["box"], args.size)]
            hits += any(o["colour"] == task["colour"] and o["shape"] == task["shape"] for o in objects)
            colour_hits += any(o["colour"] == task["colour"] for o in objects)
            total += 1
    seconds = time.time() - t0
    return {"style": style, "jump_n_sample": repeats, "jump_length": args.jump_length, "images": total,
            "object": hits / total, "colour": colour_hits / total, "outside_mean": float(np.mean(outside)),
            "outside_max": outside_max, "s_per_image": seconds / total}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--scenes", type=int, default=20)
    parser.add_argument("--images", type=int, default=2, help="Images per scene.")
    parser.add_argument("--size", type=int, default=64, help="Render size (the model's final size).")
    parser.add_argument("--margin", type=int, default=3, help="Pixels added around the object's box.")
    parser.add_argument("--variants", nargs="+", default=["short:1", "short:3", "full:1"], help="STYLE:R ...")
    parser.add_argument("--jump-length", type=int, default=5)
    parser.add_argument("--candidates", type=int, default=16, help="Prior samples ranked against the image.")
    parser.add_argument("--decoder-guidance", type=float, default=None, help="Default: the model's.")
    parser.add_argument("--decoder-steps", type=int, default=None, help="Default: the model's.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="Write the results as JSON here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from unclip import UnCLIPPipeline
    from unclip.data.shapes import ShapesWorld
    from unclip.measure.oracle import load_oracle

    pipe = UnCLIPPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    oracle = load_oracle()
    world = ShapesWorld(seed=WORLD_SEED, two_object_prob=0.0)
    tasks = [scene_task(world, i, args.size, args.margin) for i in range(args.scenes)]
    results = []
    for variant in args.variants:
        style, _, repeats = variant.partition(":")
        if style not in ("short", "full"):
            parser.error(f"variant {variant!r}: style must be short or full")
        result = run_variant(pipe, oracle, tasks, style, int(repeats or 1), args)
        results.append(result)
        print(
            f"{style:5s} r={result['jump_n_sample']} L={result['jump_length']}: object {result['object']:.3f}  "
            f"colour {result['colour']:.3f}  outside mean |Δ| {result['outside_mean']:.3f} max {result['outside_max']}"
            f"  {result['s_per_image']:.2f} s/image ({result['images']} images)",
            flush=True,
        )
    summary = {"world_seed": WORLD_SEED, "scenes": args.scenes, "images_per_scene": args.images,
               "candidates": args.candidates, "margin": args.margin, "decoder_guidance": args.decoder_guidance,
               "decoder_steps": args.decoder_steps, "results": results}  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(summary, indent=1) + "\n")


if __name__ == "__main__":
    main()
