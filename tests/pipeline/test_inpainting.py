"""Inpainting (pipeline/inpainting.py) on tiny random parts and on the built-in shapes model read by the oracle:
the kept pixels are the input's, the masked ones are generated, bad inputs are one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from unclip.images import pil_to_tensor, tensor_to_output
from unclip.pipeline import GenerationDefaults
from unclip.pipeline.builder import build_pipeline
from unclip.pipeline.inpainting import inpaint, load_inpaint_inputs, load_mask

FAST = dict(prior_steps=3, decoder_steps=3, upsampler_steps=2)
SIDE = 32  # the tiny pipeline's final size (decoder 16)


@pytest.fixture(scope="module")
def pipe():
    pipe = build_pipeline("tiny", defaults=GenerationDefaults(**FAST, inversion_steps=4))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def source() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))


def box_mask(side: int = SIDE, box: tuple[int, int, int, int] = (8, 20, 4, 18)) -> np.ndarray:
    """uint8 [side, side]: 255 (repaint) inside rows y0:y1, columns x0:x1."""
    y0, y1, x0, x1 = box
    mask = np.zeros((side, side), np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def as_uint8(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images]).astype(np.int16)


@pytest.mark.parametrize(
    "options",
    [{}, dict(jump_length=1, jump_n_sample=2), dict(context_candidates=1, prompt=["a red circle", "a blue star"])],
)
def test_kept_pixels_are_the_input_and_the_masked_ones_are_new(pipe, source, options):
    options = dict(options)
    prompt = options.pop("prompt", "a blue star")
    mask = box_mask()
    out = inpaint(pipe, source, Image.fromarray(mask), prompt, 2, seed=0, **options)
    images = as_uint8(out.images)
    assert images.shape == (2 * (1 if isinstance(prompt, str) else len(prompt)), SIDE, SIDE, 3)
    src = np.asarray(source, dtype=np.int16)
    keep = mask == 0
    assert np.array_equal(images[:, keep], np.broadcast_to(src[keep], images[:, keep].shape))
    assert np.abs(images[:, ~keep] - src[~keep]).mean() > 20  # random weights: anything but the source


def test_other_sizes_keep_the_resized_input(pipe):
    """A 50x40 image and mask: the centre square resized to 32 is kept outside the (resized) mask."""
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    mask = np.zeros((40, 50), np.uint8)
    mask[5:20, 10:30] = 255
    out = inpaint(pipe, image, mask, "a green cross", 1, seed=0, output_type="np")
    expected = np.asarray(tensor_to_output(pil_to_tensor([image], SIDE), "pil")[0], dtype=np.int16)
    keep = load_inpaint_inputs(image, mask).keep(SIDE)[0, 0].bool().numpy()
    got = np.round(out.images[0] * 255).astype(np.int16)
    assert 0 < (~keep).sum() < keep.sum()
    assert np.array_equal(got[keep], expected[keep])


def test_seeded_runs_repeat_and_seeds_differ(pipe, source):
    mask = box_mask()
    a = inpaint(pipe, source, mask, "a red circle", 2, seed=3, output_type="pt").images
    b = inpaint(pipe, source, mask, "a red circle", 2, generator=torch.Generator().manual_seed(3), output_type="pt")
    assert torch.equal(a, b.images)
    c = inpaint(pipe, source, mask, "a red circle", 2, seed=4, output_type="pt").images
    assert not torch.equal(a, c)


def test_an_all_white_mask_is_text_to_image_from_the_same_draws(pipe, source):
    full = np.full((SIDE, SIDE), 255, np.uint8)
    out = inpaint(pipe, source, full, "a red circle", 2, seed=5, context_candidates=1, output_type="pt")
    reference = pipe("a red circle", 2, seed=5, sampler="ddpm", output_type="pt")
    assert torch.equal(out.images, reference.images)


def test_embeddings_and_progress(pipe, source):
    calls = []
    out = inpaint(
        pipe, source, box_mask(), "a red circle", 2, seed=0, return_embeddings=True, output_type="pt",
        jump_length=1, jump_n_sample=2, progress=lambda *a: calls.append(a),
    )  # fmt: skip
    assert out.image_embeddings.shape == (2, pipe.clip.dim) and out.text_embeddings.shape == (2, pipe.clip.dim)
    ends = {stage: total for stage, step, total in calls if step == total}
    assert ends == {"prior": 3, "decoder": 3 + 2, "upsampler_1": 2}  # 3 steps, one jump of 1 step at 1 and 0


def test_masks_of_every_kind_read_alike(tmp_path):
    grey = np.zeros((12, 10), np.uint8)
    grey[2:6, 3:8] = 128  # >= 0.5: repaint
    grey[7:9, 1:4] = 127  # < 0.5: keep
    want = grey >= 128
    Image.fromarray(grey).save(tmp_path / "m.png")
    variants = [
        grey,
        want,
        grey.astype(np.float32) / 255,
        torch.from_numpy(grey)[None],
        Image.fromarray(grey),
        Image.fromarray(grey).convert("RGB"),
        Image.fromarray(grey).convert("RGBA"),
        Image.fromarray(grey.astype(np.uint16) * 257),  # 16 bits
        tmp_path / "m.png",
        str(tmp_path / "m.png"),
    ]
    for variant in variants:
        assert np.array_equal(load_mask(variant), want), type(variant)


def test_lower_resolutions_repaint_every_touched_pixel():
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[5, 9] = 255
    inputs = load_inpaint_inputs(Image.new("RGB", (SIDE, SIDE)), mask)
    keep = inputs.keep(16)[0, 0]
    assert keep[2, 4] == 0 and keep.sum() == 16 * 16 - 1
    assert inputs.keep(SIDE)[0, 0, 5, 9] == 0 and inputs.keep(SIDE).sum() == SIDE * SIDE - 1


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(mask=np.zeros((30, 40), np.uint8) + 255), ValueError, "mask is 40x30 but the image is 32x32"),
        (dict(mask=np.zeros((SIDE, SIDE), np.uint8)), ValueError, "nothing to inpaint"),
        (dict(mask="/no/such/mask.png"), FileNotFoundError, "mask not found: /no/such/mask.png"),
        (dict(image="/no/such/image.png"), FileNotFoundError, "/no/such/image.png"),
        (dict(mask=np.full((SIDE, SIDE), 1.5)), ValueError, r"\[0, 1\]"),
        (dict(mask=np.zeros((SIDE, SIDE, 2))), ValueError, "mask must be"),
        (dict(mask=[[1]]), TypeError, "mask must be"),
        (dict(jump_n_sample=2, jump_length=3), ValueError, r"jump_length must be less than decoder_steps \(3\)"),
        (dict(jump_n_sample=0), ValueError, "jump_n_sample"),
        (dict(jump_n_sample=51), ValueError, "jump_n_sample must be at most 50"),
        (dict(jump_length=-1), ValueError, "jump_length"),
        (dict(context_candidates=0), ValueError, "context_candidates"),
        (dict(num_images=0), ValueError, "num_images"),
        (dict(prompt=""), ValueError, "empty"),
        (dict(output_type="jpg"), ValueError, "output_type"),
        (dict(decoder_steps=0), ValueError, "decoder_steps"),
    ],
)
def test_bad_inputs_are_one_line(pipe, source, kwargs, error, match):
    args = {"image": source, "mask": box_mask(), "prompt": "a red circle", **kwargs}
    with pytest.raises(error, match=match) as info:
        inpaint(pipe, args.pop("image"), args.pop("mask"), args.pop("prompt"), **args)
    assert "\n" not in str(info.value)


def test_nothing_to_repaint_inside_the_centre_square_is_named():
    mask = np.zeros((20, 40), np.uint8)
    mask[:, :5] = 255  # only in the part the centre crop drops
    with pytest.raises(ValueError, match="centre square"):
        load_inpaint_inputs(Image.new("RGB", (40, 20)), mask)


# ---------------------------------------------------------------- the built-in model, read by the shipped oracle


def test_builtin_model_replaces_a_masked_object_with_the_prompted_one():
    """A held-out one-object scene (world seed 999): its object masked (box + 3 px) and "a blue star" asked for;
    the oracle reads a blue object inside the box in most images, and the pixels outside are the source's."""
    from unclip import UnCLIPPipeline
    from unclip.data.shapes import ShapesWorld
    from unclip.data.shapes_render import SHAPE_EXTENT
    from unclip.measure.oracle import load_oracle, predict

    world = ShapesWorld(seed=999, two_object_prob=0.0)
    scene = world.sample(9).scene  # a large solid green cross on red
    (obj,) = scene.objects
    assert (obj.colour, obj.shape, scene.background) == ("green", "cross", "red")
    side = 64
    source = world.render(scene, side)
    reach = SHAPE_EXTENT[obj.shape] * obj.r * side + 3
    x0, x1 = max(0, int(obj.cx * side - reach)), min(side, int(obj.cx * side + reach) + 1)
    y0, y1 = max(0, int(obj.cy * side - reach)), min(side, int(obj.cy * side + reach) + 1)
    mask = box_mask(side, (y0, y1, x0, x1))

    pipe = UnCLIPPipeline.from_pretrained("shapes")
    pipe.set_progress_bar_config(disable=True)
    out = inpaint(pipe, Image.fromarray(source), mask, "a blue star", 4, seed=0, output_type="pt").images
    got = np.round(out.permute(0, 2, 3, 1).numpy() * 255).astype(np.int16)
    keep = mask == 0
    assert np.array_equal(got[:, keep], np.broadcast_to(source[keep], got[:, keep].shape))

    def blue_in_box(record) -> bool:
        return any(
            o["colour"] == "blue" and x0 <= o["cx"] * side < x1 and y0 <= o["cy"] * side < y1 for o in record["objects"]
        )

    readings = predict(load_oracle(), out * 2 - 1)
    assert sum(map(blue_in_box, readings)) >= 3, readings  # 4 of 4 (seeds 0 and 1)


def test_the_pipeline_method_is_this_function(pipe, source):
    """DESIGN §8: ``pipe.inpaint(image, mask, "a blue star", num_images=4)``."""
    mask = box_mask()
    got = pipe.inpaint(source, mask, "a blue star", num_images=2, seed=1, output_type="pt").images
    assert torch.equal(got, inpaint(pipe, source, mask, "a blue star", 2, seed=1, output_type="pt").images)
