"""``unclip inpaint IMAGE MASK PROMPT`` on a tiny saved pipeline: files, kept pixels, metadata, one-line errors
before the model is loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unclip.cli import generate_cmds, inpaint_cmd
from unclip.cli.main import main
from unclip.images import read_png_params
from unclip.pipeline import GenerationDefaults
from unclip.pipeline.builder import build_pipeline

SIDE = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_pipe")
    defaults = GenerationDefaults(prior_steps=2, decoder_steps=3, upsampler_steps=2, inversion_steps=2, best_of=1)
    build_pipeline("tiny", defaults=defaults).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A random 32x32 source, a mask repainting rows 8:20 x columns 4:18, a mask of another size, a black one."""
    root = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(root / "src.png")
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[8:20, 4:18] = 255
    Image.fromarray(mask).save(root / "mask.png")
    Image.fromarray(np.full((20, 24), 255, np.uint8)).save(root / "small_mask.png")
    Image.fromarray(np.zeros((SIDE, SIDE), np.uint8)).save(root / "black.png")
    (root / "not_an_image.png").write_text("hello")
    return {p.stem: p for p in root.iterdir()}


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_inpaint_writes_images_that_keep_the_unmasked_pixels(model_dir, files, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["inpaint", str(files["src"]), str(files["mask"]), "a blue star", "-n", "2", "--model", str(model_dir)]
    code, stdout, _ = cli([*args, "--seed", "3", "-o", str(out)], capsys)
    assert code == 0 and "wrote 2 image(s)" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "grid.png"]
    source = np.asarray(Image.open(files["src"]), dtype=np.int16)
    keep = np.asarray(Image.open(files["mask"])) == 0
    for name in ("0000.png", "0001.png"):
        image = np.asarray(Image.open(out / name), dtype=np.int16)
        assert np.array_equal(image[keep], source[keep])
        assert np.abs(image[~keep] - source[~keep]).mean() > 20
    params = read_png_params((out / "0001.png").read_bytes())
    assert params["command"] == "inpaint" and params["prompt"] == "a blue star" and params["seed"] == 3
    assert params["mask"] == str(files["mask"]) and params["index"] == 1 and params["context_candidates"] == 16
    again = tmp_path / "again"
    assert cli([*args, "--seed", "3", "-o", str(again), "-q"], capsys)[0] == 0
    assert (again / "0001.png").read_bytes() == (out / "0001.png").read_bytes()


def test_jump_back_options_run_and_one_file(model_dir, files, tmp_path, capsys):
    one = tmp_path / "one.png"
    args = ["inpaint", str(files["src"]), str(files["mask"]), "a red circle", "--model", str(model_dir)]
    code, _, err = cli(
        [*args, "--jump-length", "1", "--jump-n-sample", "2", "--candidates", "1", "-o", str(one)], capsys
    )
    assert code == 0, err
    params = read_png_params(one.read_bytes())
    assert (params["jump_length"], params["jump_n_sample"], params["context_candidates"]) == (1, 2, 1)


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(generate_cmds, "_load", refuse)


@pytest.mark.parametrize(
    "change,needles",
    [
        (dict(mask="/no/such/mask.png"), ["MASK", "/no/such/mask.png"]),
        (dict(image="/no/such/image.png"), ["IMAGE", "/no/such/image.png"]),
        (dict(mask="small_mask"), ["mask is 24x20 but the image is 32x32"]),
        (dict(mask="black"), ["nothing to inpaint"]),
        (dict(mask="not_an_image"), ["not a readable image"]),
        (dict(prompt="  "), ["PROMPT", "empty"]),
        (dict(extra=["--jump-n-sample", "0"]), ["--jump-n-sample", "0"]),
        (dict(extra=["--jump-n-sample", "51"]), ["--jump-n-sample", "51"]),
        (dict(extra=["--jump-length", "0"]), ["--jump-length", "0"]),
        (dict(extra=["--jump-length", "5", "--jump-n-sample", "2", "--decoder-steps", "5"]), ["--jump-length", "5"]),
        (dict(extra=["--candidates", "0"]), ["--candidates"]),
        (dict(extra=["-n", "2", "-o", "x.png"]), ["names one file"]),
    ],
)
def test_bad_inputs_are_one_line_before_loading(files, tmp_path, capsys, no_model_load, change, needles):
    image = change.get("image", str(files["src"]))
    mask = change.get("mask", str(files["mask"]))
    mask = str(files[mask]) if mask in files else mask
    extra = change.get("extra", [])
    out = [] if "-o" in extra else ["-o", str(tmp_path / "out")]
    code, _, err = cli(["inpaint", image, mask, change.get("prompt", "a blue star"), *extra, *out], capsys)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("Error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    assert not (tmp_path / "out").exists()


def test_jump_length_past_the_model_steps_is_one_line(model_dir, files, tmp_path, capsys):
    """The model's default decoder steps (3) are known only once it is loaded."""
    args = ["inpaint", str(files["src"]), str(files["mask"]), "a star", "--model", str(model_dir)]
    code, _, err = cli([*args, "--jump-n-sample", "2", "--jump-length", "3", "-o", str(tmp_path / "o")], capsys)
    assert code == 1 and err.count("\n") == 1 and "jump_length must be less than decoder_steps (3)" in err


def test_cli_constants_agree_with_the_library():
    from unclip.pipeline import inpainting

    assert inpaint_cmd.MAX_JUMP_N_SAMPLE == inpainting.MAX_JUMP_N_SAMPLE
    assert inpaint_cmd.CONTEXT_CANDIDATES == inpainting.CONTEXT_CANDIDATES
