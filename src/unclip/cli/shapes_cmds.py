"""``unclip shapes ...``: render the shapes world to disk.

``unclip shapes render -n N --size S --seed K -o DIR`` writes ``DIR/000000.png, ...``, ``DIR/captions.jsonl``
(one JSON object per image: ``file``, ``index``, ``caption``, ``full_caption``, ``attributes`` (the full
record) and ``specified`` (what the caption names)) and ``DIR/grid.png``. Every file is written atomically.
"""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import click
import numpy as np


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def make_grid(images: list[np.ndarray], max_images: int = 64, pad: int = 2) -> np.ndarray:
    """Tile up to ``max_images`` uint8 [S, S, 3] images into a near-square grid with grey padding."""
    images = images[:max_images]
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    s = images[0].shape[0]
    grid = np.full((rows * (s + pad) + pad, cols * (s + pad) + pad, 3), 128, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        y, x = pad + r * (s + pad), pad + c * (s + pad)
        grid[y : y + s, x : x + s] = img
    return grid


@click.group()
def shapes() -> None:
    """The shapes world (the built-in captioned image domain)."""


@shapes.command()
@click.option(
    "-n",
    "--num",
    "num",
    type=click.IntRange(min=1, max=10_000_000),
    default=16,
    show_default=True,
    help="Number of images.",
)
@click.option("--size", type=click.IntRange(min=16, max=2048), default=64, show_default=True, help="Image side (px).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="World seed.")
@click.option("--start", type=click.IntRange(min=0), default=0, show_default=True, help="First sample index.")
@click.option(
    "--two-object-prob",
    type=click.FloatRange(0.0, 1.0),
    default=0.25,
    show_default=True,
    help="Probability of a two-object scene.",
)
@click.option(
    "--caption-drop-prob",
    type=click.FloatRange(0.0, 1.0),
    default=0.5,
    show_default=True,
    help="Probability that a caption leaves out each optional attribute.",
)
@click.option(
    "-o", "--out", "out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Output directory."
)
def render(num: int, size: int, seed: int, start: int, two_object_prob: float, caption_drop_prob: float,
           out: Path) -> None:  # fmt: skip
    """Render N scenes with captions and attribute records into OUT."""
    from tqdm import tqdm

    from unclip.data.shapes import ShapesWorld, full_caption
    from unclip.io import atomic_write_bytes, atomic_write_text

    if out.exists() and not out.is_dir():
        raise click.BadParameter(f"{out} exists and is not a directory", param_hint="-o")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise click.ClickException(f"cannot create output directory {out}: {err.strerror}") from None
    world = ShapesWorld(seed=seed, two_object_prob=two_object_prob, caption_drop_prob=caption_drop_prob)
    lines: list[str] = []
    grid_images: list[np.ndarray] = []
    for k in tqdm(range(num), desc="render", unit="img", disable=not sys.stderr.isatty()):
        index = start + k
        sample = world.sample(index)
        image = world.render(sample.scene, size)
        name = f"{k:06d}.png"
        atomic_write_bytes(out / name, _png_bytes(image))
        if len(grid_images) < 64:
            grid_images.append(image)
        entry = {
            "file": name,
            "index": index,
            "caption": sample.caption,
            "full_caption": full_caption(sample.scene),
            "attributes": sample.record,
            "specified": sample.specified,
        }
        lines.append(json.dumps(entry))
    atomic_write_text(out / "captions.jsonl", "\n".join(lines) + "\n")
    atomic_write_bytes(out / "grid.png", _png_bytes(make_grid(grid_images)))
    click.echo(f"wrote {num} images of {size}x{size} px, captions.jsonl and grid.png to {out}")
