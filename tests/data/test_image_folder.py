"""Image preprocessing (crops, flips, decoding, bad samples) and the imagefolder source."""

import io
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from unclip.data.image_folder import ImageFolderSource, write_image_folder
from unclip.data.transforms import (
    BadSample,
    CaptionedSample,
    ImageTransform,
    SkipCounts,
    SkippedSample,
    clean_caption,
    decode_image,
    uint8_to_pixels,
)


def _gradient(w, h):
    """uint8 [h, w, 3] whose pixels encode their coordinates (so crops are identifiable)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), (x + y) % 256], -1).astype(np.uint8)


def test_center_crop_matches_numpy_slice():
    arr = _gradient(40, 24)
    t = ImageTransform(size=24, crop="center")
    out = t(Image.fromarray(arr))
    assert out.dtype == np.uint8 and out.shape == (24, 24, 3)
    assert np.array_equal(out, arr[:, 8:32])  # same size: no resampling, the centred 24 columns


def test_random_crop_is_seeded_and_inside_the_image():
    arr = _gradient(50, 20)
    t = ImageTransform(size=20, crop="random")
    lefts = set()
    for seed in range(20):
        out = t(Image.fromarray(arr), seed=seed)
        assert np.array_equal(out, t(Image.fromarray(arr), seed=seed))
        left = int(np.argmax((arr[0, :, 2] == out[0, 0, 2]) & (arr[0, :, 0] == out[0, 0, 0])))
        assert np.array_equal(out, arr[:, left : left + 20])
        lefts.add(left)
    assert len(lefts) > 5


def test_flips_off_by_default_and_drawn_when_on():
    arr = _gradient(16, 16)
    plain = ImageTransform(size=16)
    assert all(np.array_equal(plain(Image.fromarray(arr), seed=s), arr) for s in range(10))
    flipping = ImageTransform(size=16, flip=True)
    outs = [flipping(Image.fromarray(arr), seed=s) for s in range(20)]
    flipped = [np.array_equal(o, arr[:, ::-1]) for o in outs]
    assert any(flipped) and not all(flipped)
    assert all(f or np.array_equal(o, arr) for f, o in zip(flipped, outs))


def test_resize_is_antialiased_area_like():
    # A 2x2 checkerboard of 8 px blocks resized to 2x2 gives the block colours; a 1-px checkerboard goes grey.
    fine = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    out = ImageTransform(size=8).resize(Image.fromarray(np.stack([fine] * 3, -1)))
    assert abs(float(out.mean()) - 127.5) < 3 and out.std() < 3


def test_squash_keeps_the_whole_image():
    arr = _gradient(32, 16)
    out = ImageTransform(size=16, crop="none")(Image.fromarray(arr))
    assert out[0, -1, 0] > 240 and out[0, 0, 0] < 15  # x goes from 0 to 255 across the output


def test_bad_images_raise_bad_sample(tmp_path):
    with pytest.raises(BadSample) as err:
        decode_image(b"not an image")
    assert err.value.reason == "unreadable_image"
    buffer = io.BytesIO()
    Image.fromarray(_gradient(30, 30)).save(buffer, format="PNG")
    with pytest.raises(BadSample) as err:
        decode_image(buffer.getvalue()[:-40])  # truncated
    assert err.value.reason == "unreadable_image"
    with pytest.raises(BadSample) as err:
        decode_image(tmp_path / "nope.png")
    assert err.value.reason == "missing_image"
    with pytest.raises(BadSample) as err:
        ImageTransform(size=32).square(Image.new("RGB", (10, 100)))
    assert err.value.reason == "too_small"
    with pytest.raises(BadSample) as err:
        clean_caption("   ")
    assert err.value.reason == "missing_caption"
    assert clean_caption(b" a  red\ncircle ") == "a red circle"


def test_rgba_is_composited_on_white_and_pixels_scale():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    buffer = io.BytesIO()
    rgba.save(buffer, format="PNG")
    assert np.asarray(decode_image(buffer.getvalue())).tolist() == [[[255, 255, 255]] * 4] * 4
    x = uint8_to_pixels(np.array([[[[0, 255, 51]]]], dtype=np.uint8))
    assert torch.allclose(x.flatten(), torch.tensor([-1.0, 1.0, 51 / 127.5 - 1]))
    with pytest.raises(ValueError, match="uint8"):
        uint8_to_pixels(np.zeros((1, 2, 2, 3), np.float32))


def test_options_are_validated():
    with pytest.raises(ValueError, match="crop"):
        ImageTransform(crop="middle")
    with pytest.raises(ValueError, match="size"):
        ImageTransform(size=4)


@pytest.fixture()
def folder(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8) for i in range(5)]
    root = write_image_folder(
        tmp_path / "imgs",
        [("a.png", images[0], "first"), ("b.png", images[1], None), ("c.png", images[2], "third"),
         ("d.png", images[3], "  "), ("e.png", images[4], "fifth")],
    )  # fmt: skip
    (root / "c.png").write_bytes(b"garbage")  # unreadable
    with open(root / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "gone.png", "text": "missing file", "source": "x"}) + "\n")
    Image.fromarray(images[0]).save(root / "unlisted.png")
    sub = root / "sub"
    sub.mkdir()
    Image.fromarray(images[1]).save(sub / "z.jpg")
    (sub / "metadata.csv").write_text('file_name,text,score\nz.jpg,"from, csv",0.5\n')
    return root, images


def test_folder_reads_metadata_and_skips_bad_rows(folder):
    root, images = folder
    source = ImageFolderSource(root, part_size=3)
    assert len(source) == 7 and source.num_parts == 3 and source.unlisted == 1
    items = list(source)
    assert [s.key for s in items] == ["a.png", "b.png", "c.png", "d.png", "e.png", "gone.png", "sub/z.jpg"]
    good = [s for s in items if isinstance(s, CaptionedSample)]
    assert [(s.key, s.caption) for s in good] == [("a.png", "first"), ("e.png", "fifth"), ("sub/z.jpg", "from, csv")]
    assert np.array_equal(np.asarray(good[0].image), images[0])
    assert good[2].extra == {"score": "0.5"}
    reasons = {s.key: s.reason for s in items if isinstance(s, SkippedSample)}
    assert reasons == {"b.png": "missing_caption", "c.png": "unreadable_image", "d.png": "missing_caption",
                       "gone.png": "missing_image"}  # fmt: skip
    assert [s.key for s in source.iter_part(2)] == ["sub/z.jpg"]
    counts = SkipCounts(warn_first=0)
    for s in items:
        if isinstance(s, SkippedSample):
            counts.add(s)
    assert counts.total == 4 and counts.counts["missing_caption"] == 2


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        ImageFolderSource(tmp_path)
    (tmp_path / "metadata.jsonl").write_text('{"text": "no file"}\n')
    with pytest.raises(ValueError, match="file_name"):
        ImageFolderSource(tmp_path)
    (tmp_path / "metadata.jsonl").write_text("{oops\n")
    with pytest.raises(ValueError, match="metadata.jsonl:1"):
        ImageFolderSource(tmp_path)


def test_random_crop_rng_is_independent_of_global_state():
    arr = _gradient(40, 20)
    t = ImageTransform(size=20, crop="random")
    random.seed(1)
    a = t(Image.fromarray(arr), seed="k")
    random.seed(2)
    assert np.array_equal(a, t(Image.fromarray(arr), seed="k"))
