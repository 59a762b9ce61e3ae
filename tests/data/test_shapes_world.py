"""The shapes world follows DESIGN.md §4: determinism, palette, geometry, sizes, positions, relations,
captions, dataset sharding and the render CLI."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from unclip.data.shapes import (
    COLOURS,
    FILLS,
    PALETTE,
    POSITIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    ShapesDataset,
    ShapesWorld,
    full_caption,
    parse_caption,
)

SPEC_PALETTE = {
    "red": (220, 40, 40),
    "orange": (245, 140, 30),
    "yellow": (240, 210, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
SPEC_POSITION_PHRASES = [
    "in the top left",
    "at the top",
    "in the top right",
    "on the left",
    "in the center",
    "on the right",
    "in the bottom left",
    "at the bottom",
    "in the bottom right",
]


@pytest.fixture(scope="module")
def samples():
    world = ShapesWorld(seed=3, two_object_prob=0.5)
    return world, [world.sample(i) for i in range(600)]


def test_public_constants_match_spec():
    assert PALETTE == SPEC_PALETTE
    assert set(SHAPES) == {"circle", "square", "diamond", "triangle", "star", "cross"}
    assert set(COLOURS) == set(SPEC_PALETTE)
    assert SIZES == ("small", "large") and FILLS == ("solid", "outlined")
    assert len(POSITIONS) == 9 and POSITIONS[0] == "top left" and POSITIONS[4] == "center"
    assert set(RELATIONS) == {"to the left of", "to the right of", "above", "below"}


def test_deterministic_in_seed_and_index():
    a, b = ShapesWorld(seed=11), ShapesWorld(seed=11)
    for i in (0, 5, 123456789):
        sa, sb = a.sample(i), b.sample(i)
        assert sa.caption == sb.caption and sa.record == sb.record and sa.specified == sb.specified
        assert np.array_equal(a.render(sa.scene, 40), b.render(sb.scene, 40))
    # order of access does not matter, and other seeds give other data
    first = [a.sample(i).caption for i in range(20)]
    assert [b.sample(i).caption for i in reversed(range(20))][::-1] == first
    assert [ShapesWorld(seed=12).sample(i).caption for i in range(20)] != first


def test_batch_shapes_and_range():
    world = ShapesWorld(seed=0)
    images, captions, records = world.batch([0, 1, 2, 3], size=32)
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert len(captions) == 4 and len(records) == 4
    ref = world.render(world.sample(2).scene, 32)
    assert torch.allclose(images[2], torch.from_numpy(ref).permute(2, 0, 1).float() / 127.5 - 1)
    _, full, _ = world.batch([0, 1], size=16, full_captions=True)
    assert full == [full_caption(world.sample(i).scene) for i in (0, 1)]


def test_any_size_renders():
    world = ShapesWorld(seed=1)
    scene = world.sample(0).scene
    for size in (16, 33, 64, 128):
        img = world.render(scene, size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8


def test_attribute_ranges_positions_and_edges(samples):
    _, items = samples
    for s in items:
        rec = s.record
        assert rec["background"] in SPEC_PALETTE
        colours = [o["colour"] for o in rec["objects"]]
        assert rec["background"] not in colours and len(set(colours)) == len(colours)
        for o in rec["objects"]:
            lo, hi = {"small": (0.10, 0.15), "large": (0.22, 0.28)}[o["size"]]
            assert lo <= o["r"] <= hi
            assert -15.0 <= o["rotation"] <= 15.0
            assert o["r"] <= o["cx"] <= 1 - o["r"] and o["r"] <= o["cy"] <= 1 - o["r"]
            col, row = int(o["cx"] * 3), int(o["cy"] * 3)
            assert POSITIONS[3 * row + col] == o["position"]


def test_distributions_are_balanced(samples):
    world = ShapesWorld(seed=4)
    items = [world.sample(i) for i in range(4000)]
    two = np.mean([s.record["num_objects"] == 2 for s in items])
    assert 0.22 < two < 0.28
    ones = [s for s in items if s.record["num_objects"] == 1]
    for key, values in (("shape", SHAPES), ("position", POSITIONS), ("fill", FILLS), ("size", SIZES)):
        counts = np.array([sum(s.record["objects"][0][key] == v for s in ones) for v in values])
        assert counts.min() > 0.6 * len(ones) / len(values), (key, counts)
    for key in ("size", "fill", "colour", "position"):
        named = np.mean([key in s.specified["objects"][0] for s in items])
        assert 0.45 < named < 0.55, (key, named)
    assert 0.45 < np.mean(["background" in s.specified for s in items]) < 0.55


def test_relation_logic(samples):
    _, items = samples
    seen = set()
    for s in items:
        rec = s.record
        if rec["num_objects"] != 2:
            assert rec["relation"] is None
            continue
        a, b = rec["objects"]
        dx, dy = a["cx"] - b["cx"], a["cy"] - b["cy"]
        if abs(dx) >= abs(dy):
            want = "to the left of" if a["cx"] < b["cx"] else "to the right of"
        else:
            want = "above" if a["cy"] < b["cy"] else "below"  # y grows downwards
        assert rec["relation"] == want
        seen.add(want)
    assert seen == set(RELATIONS)


def _extent(shape: str) -> float:
    return math.hypot(1.0, 0.3) if shape == "cross" else 1.0


def test_two_objects_do_not_overlap(samples):
    world, items = samples
    for s in [s for s in items if s.record["num_objects"] == 2][:60]:
        a, b = s.record["objects"]
        assert (
            math.hypot(a["cx"] - b["cx"], a["cy"] - b["cy"])
            > _extent(a["shape"]) * a["r"] + _extent(b["shape"]) * b["r"]
        )
        # pixel check: each object's footprint, rendered alone, is disjoint from the other's
        masks = []
        for o in s.scene.objects:
            img = world.render(Scene(s.scene.background, [o]), 64).astype(int)
            masks.append(np.abs(img - np.array(PALETTE[s.scene.background])).sum(-1) > 0)
        assert not (masks[0] & masks[1]).any()


def test_palette_exact_in_solid_interiors_and_background(samples):
    world, items = samples
    checked = 0
    for s in items[:200]:
        img = world.render(s.scene, 64)
        bg = np.array(SPEC_PALETTE[s.scene.background])
        for corner in (img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]):
            assert np.array_equal(corner, bg)
        for o in s.scene.objects:
            if o.fill != "solid":
                continue
            # pixels lying wholly within 0.28 r of the centre are inside every solid shape of the spec
            ys, xs = np.mgrid[0:64, 0:64] + 0.5
            inner = np.hypot(xs - o.cx * 64, ys - o.cy * 64) + math.sqrt(0.5) <= 0.28 * o.r * 64
            assert inner.any()
            assert (img[inner] == np.array(SPEC_PALETTE[o.colour])).all()
            checked += 1
    assert checked > 50


def test_outlined_centre_is_background():
    world = ShapesWorld(seed=8, two_object_prob=0.0)
    for i in range(200):
        s = world.sample(i)
        o = s.scene.objects[0]
        if o.fill == "outlined" and o.size == "large":
            img = world.render(s.scene, 64)
            y, x = int(o.cy * 64), int(o.cx * 64)
            assert np.array_equal(img[y, x], np.array(SPEC_PALETTE[s.scene.background]))


def test_triangle_points_up_and_rotation_is_counter_clockwise():
    world = ShapesWorld(seed=0)
    tri = ShapeObject("triangle", "red", "large", "solid", "center", 0.5, 0.5, 0.25, 0.0)
    img = world.render(Scene("black", [tri]), 64)
    red = (img == np.array(SPEC_PALETTE["red"])).all(-1)
    rows = np.nonzero(red.any(1))[0]
    widths = red.sum(1)
    assert widths[rows[0]] < widths[rows[-1]]  # narrow apex at the top (y grows downwards)
    # a counter-clockwise turn of an upward triangle moves its apex to the left
    for rot, side in ((15.0, "left"), (-15.0, "right")):
        tri.rotation = rot
        red = (world.render(Scene("black", [tri]), 64) == np.array(SPEC_PALETTE["red"])).all(-1)
        top_row = np.nonzero(red.any(1))[0][0]
        top_x = np.nonzero(red[top_row])[0].mean()
        assert (top_x < 32) == (side == "left")


def test_captions_follow_word_order_and_match_records(samples):
    _, items = samples
    colour = "|".join(SPEC_PALETTE)
    pos = "|".join(SPEC_POSITION_PHRASES)
    shape = "circle|square|diamond|triangle|star|cross"
    obj = rf"(a|an) (small |large )?(solid |outlined )?(({colour}) )?({shape})( ({pos}))?"
    pattern = re.compile(
        rf"^{obj}( (to the left of|to the right of|above|below) {obj})?( on (a|an) ({colour}) background)?$"
    )
    for s in items:
        assert pattern.match(s.caption), s.caption
        assert not re.search(r"\ba [aeiou]|\ban [^aeiou]", s.caption), s.caption
        spec = s.specified
        assert parse_caption(s.caption) == spec
        assert len(spec["objects"]) == s.record["num_objects"]
        for named, full in zip(spec["objects"], s.record["objects"]):
            assert "shape" in named
            for key, value in named.items():
                assert full[key] == value
            for key in named:
                assert full[key] in s.caption or key == "position"
        if "background" in spec:
            assert spec["background"] == s.record["background"]
            assert s.caption.endswith(f"{spec['background']} background")
        if s.record["num_objects"] == 2:
            assert spec["relation"] == s.record["relation"] and s.record["relation"] in s.caption
        fc = full_caption(s.scene)
        assert pattern.match(fc) and parse_caption(fc)["background"] == s.record["background"]


def test_caption_examples_from_the_spec():
    a = ShapeObject("star", "blue", "large", "outlined", "top left", 0.2, 0.2, 0.23, 0.0)
    assert full_caption(Scene("white", [a])) == "a large outlined blue star in the top left on a white background"
    assert parse_caption("A green square to the left of a yellow triangle.") == {
        "objects": [{"shape": "square", "colour": "green"}, {"shape": "triangle", "colour": "yellow"}],
        "relation": "to the left of",
    }
    assert parse_caption("an orange circle on an orange background")["background"] == "orange"
    with pytest.raises(ValueError, match="grammar"):
        parse_caption("a circle red")


def test_full_caption_prob_and_validation():
    world = ShapesWorld(seed=2, full_caption_prob=1.0)
    for i in range(20):
        s = world.sample(i)
        assert s.caption == full_caption(s.scene) and s.full
    with pytest.raises(ValueError, match="two_object_prob"):
        ShapesWorld(two_object_prob=1.5)
    with pytest.raises(ValueError, match="-1"):
        ShapesWorld().sample(-1)
    with pytest.raises(ValueError, match="image size"):
        ShapesWorld().render(ShapesWorld().sample(0).scene, 0)


def test_dataset_shards_cover_indices_once():
    world = ShapesWorld(seed=5)
    seen = []
    for rank in range(2):
        ds = ShapesDataset(world, size=16, start=10, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        it = iter(loader)
        items = [next(it) for _ in range(6)]
        seen += [int(x["index"]) for x in items]
        for x in items:
            assert x["image"].shape == (3, 16, 16)
            assert x["caption"] == world.sample(int(x["index"])).caption
    assert sorted(seen) == list(range(10, 22))


def test_render_cli_writes_images_captions_and_grid(tmp_path):
    from unclip.cli.main import cli

    out = tmp_path / "r"
    result = CliRunner().invoke(cli, ["shapes", "render", "-n", "5", "--size", "24", "--seed", "9", "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in (out / "captions.jsonl").read_text().splitlines()]
    world = ShapesWorld(seed=9)
    assert [x["file"] for x in lines] == [f"{i:06d}.png" for i in range(5)]
    for i, entry in enumerate(lines):
        s = world.sample(i)
        assert entry["caption"] == s.caption and entry["attributes"] == s.record
        assert entry["specified"] == s.specified
        img = np.asarray(Image.open(out / entry["file"]))
        assert np.array_equal(img, world.render(s.scene, 24))
    assert (out / "grid.png").is_file()
    assert not list(out.glob(".*tmp"))
    bad = CliRunner().invoke(cli, ["shapes", "render", "-n", "0", "-o", str(out)])
    assert bad.exit_code == 2 and "-n" in bad.output
    bad = CliRunner().invoke(cli, ["shapes", "render", "--size", "8", "-o", str(out)])
    assert bad.exit_code == 2 and "--size" in bad.output


def test_scanline_rasteriser_matches_point_sampling():
    """The fast scanline coverage equals the plain per-sample point-in-shape test."""
    from unclip.data.shapes_render import object_coverage, shape_mask

    world = ShapesWorld(seed=6, two_object_prob=0.5)
    ss = 4
    for i in range(40):
        for o in world.sample(i).scene.objects:
            for size in (17, 64):
                alpha, (y0, y1, x0, x1) = object_coverage(o.shape, o.fill, o.cx, o.cy, o.r, o.rotation, size, ss)
                offs = (np.arange(ss) + 0.5) / ss
                px, py = np.meshgrid(
                    (np.arange(x0, x1)[:, None] + offs).ravel(), (np.arange(y0, y1)[:, None] + offs).ravel()
                )
                c, r = (o.cx * size, o.cy * size), o.r * size
                mask = shape_mask(o.shape, *c, r, o.rotation, px, py)
                if o.fill == "outlined":
                    mask &= ~shape_mask(o.shape, *c, 0.6 * r, o.rotation, px, py)
                ref = mask.reshape(y1 - y0, ss, x1 - x0, ss).mean(axis=(1, 3))
                assert np.array_equal(alpha, ref.astype(np.float32)), (i, o)
