import numpy as np
import pytest
import torch
from PIL import Image

from unclip.images import load_image, make_grid, pil_to_tensor, slerp, tensor_to_output


def test_load_image_modes_and_paths(tmp_path):
    rgba = Image.new("RGBA", (20, 10), (255, 0, 0, 0))  # fully transparent red -> white
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)
    gray = Image.new("L", (16, 16), 100)
    assert load_image(gray).mode == "RGB"
    path = tmp_path / "x.png"
    Image.new("RGB", (12, 12), (1, 2, 3)).save(path)
    assert load_image(path).getpixel((5, 5)) == (1, 2, 3)


def test_load_image_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png"):
        load_image(bad)
    with pytest.raises(ValueError, match="too small: 4x4"):
        load_image(Image.new("RGB", (4, 4)))
    with pytest.raises(TypeError, match="int"):
        load_image(3)


def test_pil_tensor_round_trip():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    t = pil_to_tensor([Image.fromarray(array)], 32)
    assert t.shape == (1, 3, 32, 32) and t.min() >= -1 and t.max() <= 1
    back = tensor_to_output(t, "np")[0]
    assert np.abs(back * 255 - array).max() < 0.51
    assert np.array_equal(np.asarray(tensor_to_output(t, "pil")[0]), array)
    with pytest.raises(ValueError, match="output_type"):
        tensor_to_output(t, "jpg")


def test_non_square_is_centre_cropped():
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    image.paste((255, 255, 255), (10, 0, 20, 10))  # white centre square
    t = pil_to_tensor([image], 10)
    assert torch.allclose(t, torch.ones_like(t), atol=1e-6)


def test_make_grid_size():
    grid = make_grid([Image.new("RGB", (8, 8))] * 5, columns=3, pad=1)
    assert grid.size == (3 * 8 + 4, 2 * 8 + 3)


def test_slerp_matches_closed_form():
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 2.0]])
    mid = slerp(a, b, 0.5)
    # direction at 45 degrees, norm interpolated linearly to 1.5
    expected = torch.tensor([[1.5 / 2**0.5, 1.5 / 2**0.5]])
    assert torch.allclose(mid, expected, atol=1e-6)
    assert torch.allclose(slerp(a, b, 0.0), a) and torch.allclose(slerp(a, b, 1.0), b)
    assert torch.allclose(slerp(a, 3 * a, 0.5), 2 * a)  # parallel vectors
