"""Example grids of a pipeline for the docs: text to image, two objects, variations, text diffs and interpolations.

    python benchmarks/example_grids.py --model shapes --out docs/shapes_model/examples

Captions and source images come from the held-out world seed 999 (as ``pipeline_quality.py``); every
image is sampled at the pipeline's default settings with a fixed seed, so a rerun reproduces the files.
Each grid has one labelled row per caption or source; images are enlarged ``--zoom`` times (nearest).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

LABEL_W = 300


def labelled_rows(rows: list[tuple[str, list[Image.Image]]], zoom: int) -> Image.Image:
    """One row per (label, images): the label on the left, the images (zoomed, 2 px apart) after it."""
    size = rows[0][1][0].width * zoom
    cols = max(len(images) for _, images in rows)
    sheet = Image.new("RGB", (LABEL_W + cols * (size + 2), len(rows) * (size + 2)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (label, images) in enumerate(rows):
        y = r * (size + 2)
        draw.multiline_text((4, y + 4), label, fill="black")
        for c, image in enumerate(images):
            sheet.paste(image.resize((size, size), Image.NEAREST), (LABEL_W + c * (size + 2), y))
    return sheet


def wrap(text: str, width: int = 44) -> str:
    words, lines, line = text.split(), [], ""
    for word in words:
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return "\n".join([*lines, line])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="shapes")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=999, help="World seed of captions and sources.")
    parser.add_argument("--zoom", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from unclip import UnCLIPPipeline
    from unclip.data.shapes import ShapesWorld

    pipe = UnCLIPPipeline.from_pretrained(args.model)

    pipe.set_progress_bar_config(disable=True)
    world = ShapesWorld(seed=args.seed, two_object_prob=0.0)
    two = ShapesWorld(seed=args.seed, two_object_prob=1.0)
    args.out.mkdir(parents=True, exist_ok=True)

    captions = [world.sample(i).caption for i in range(5)] + [two.sample(i).caption for i in range(2)]
    rows = [(wrap(c), pipe(c, num_images_per_prompt=6, seed=i)) for i, c in enumerate(captions)]
    labelled_rows(rows, args.zoom).save(args.out / "text_to_image.png")

    from unclip.data.shapes_captions import caption_from_spec
    from unclip.measure.quality import binding_captions

    bound = [caption_from_spec(spec) for spec in binding_captions(args.seed, 6)]
    rows = [(wrap(c), pipe(c, num_images_per_prompt=6, seed=i)) for i, c in enumerate(bound)]
    labelled_rows(rows, args.zoom).save(args.out / "two_objects.png")

    sources = [Image.fromarray(world.render(world.sample(100 + i).scene, pipe.image_size)) for i in range(4)]
    rows = [("source | 5 variations (eta 1)", [s, *pipe.vary(s, num_images=5, seed=i)]) for i, s in enumerate(sources)]
    labelled_rows(rows, args.zoom).save(args.out / "variations.png")

    scenes = (world.sample(i).scene for i in range(200, 400))
    reds = [Image.fromarray(world.render(sc, pipe.image_size)) for sc in scenes
            if sc.objects[0].shape == "circle" and sc.objects[0].colour == "red"][:3]  # fmt: skip
    thetas = [0.0, 0.25, 0.5, 0.75]
    rows = [
        ("red circle -> blue circle\nsource | theta 0, 0.25, 0.5, 0.75",
         [s, *pipe.edit(s, to_text="a blue circle", from_text="a red circle", thetas=thetas, seed=i)])
        for i, s in enumerate(reds)
    ]  # fmt: skip
    labelled_rows(rows, args.zoom).save(args.out / "text_diffs.png")

    pairs = [(sources[0], sources[1]), (sources[2], sources[3])]
    rows = [(f"interpolation {k + 1}\n(x_T fixed)", pipe.interpolate(a, b, num_frames=8, seed=k))
            for k, (a, b) in enumerate(pairs)]  # fmt: skip
    labelled_rows(rows, args.zoom).save(args.out / "interpolations.png")
    print(f"wrote {sorted(p.name for p in args.out.glob('*.png'))} to {args.out}")


if __name__ == "__main__":
    main()
