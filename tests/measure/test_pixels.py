"""Background reading: exact on renders, recovers a known offset and a known noise level, ignores objects."""

import numpy as np
import pytest

from unclip.data.shapes import PALETTE, Scene, ShapeObject, ShapesWorld
from unclip.measure.pixels import background_mask, read_background, summarize_backgrounds

WORLD = ShapesWorld(seed=5, two_object_prob=0.5)


def scenes(n: int = 12) -> list[Scene]:
    return [WORLD.sample(i).scene for i in range(n)]


def test_renders_read_as_exact_palette_without_grain():
    for scene in scenes():
        reading = read_background(WORLD.render(scene, 64), scene)
        assert reading.error == 0 and reading.grain == 0
        assert reading.pixels >= 64 * 64 // 3


def test_a_constant_offset_is_read_as_the_error():
    shift = np.array([9.0, -4.0, 0.0])
    for scene in scenes():
        image = WORLD.render(scene, 64).astype(np.float64) + shift
        reading = read_background(image, scene)
        assert reading.offset == pytest.approx(shift, abs=1e-9) and reading.error == pytest.approx(9.0)


def test_gaussian_noise_is_read_as_its_sigma():
    rng = np.random.default_rng(0)
    scene = Scene("blue", [ShapeObject("circle", "red", "large", "solid", "center", 0.5, 0.5, 0.15, 0.0)], None)
    image = WORLD.render(scene, 64).astype(np.float64) + rng.normal(0, 3.0, (64, 64, 3))
    reading = read_background(image, scene)
    assert reading.grain == pytest.approx(3.0, rel=0.1)
    assert reading.error < 0.5


def test_a_stray_object_outside_the_cell_does_not_count_as_grain():
    scene = Scene("white", [ShapeObject("square", "black", "small", "solid", "top left", 0.15, 0.15, 0.1, 0.0)], None)
    image = WORLD.render(scene, 64).astype(np.float64)
    image[50:58, 50:58] = PALETTE["black"]  # an object where the caption put none
    reading = read_background(image, scene)
    assert reading.error == 0 and reading.grain == 0


def test_mask_excludes_each_objects_cell_and_bad_values_are_named():
    scene = Scene("white", [ShapeObject("square", "black", "small", "solid", "center", 0.5, 0.5, 0.1, 0.0)], None)
    mask = background_mask(scene, 30, pad_fraction=0)
    assert not mask[10:20, 10:20].any() and mask.sum() == 900 - 100
    with pytest.raises(ValueError, match="pad_fraction"):
        background_mask(scene, 30, pad_fraction=0.5)
    with pytest.raises(ValueError, match=r"\[S, S, 3\]"):
        read_background(np.zeros((8, 9, 3)), scene)
    with pytest.raises(ValueError, match="no readings"):
        summarize_backgrounds([])
