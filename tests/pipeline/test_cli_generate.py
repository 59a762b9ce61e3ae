"""The generating CLI commands on a tiny saved pipeline (in-process through click's runner)."""

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from unclip.cli.main import cli
from unclip.pipeline import GenerationDefaults
from unclip.pipeline.builder import build_pipeline


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_pipe")
    defaults = GenerationDefaults(prior_steps=2, decoder_steps=2, upsampler_steps=2, inversion_steps=2)
    build_pipeline("tiny", defaults=defaults).save_pretrained(path)
    return path


def run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_generate_to_directory_and_file(model_dir, tmp_path):
    out = tmp_path / "gen"
    result = run(["generate", "a red circle", "-n", "3", "--model", str(model_dir), "-o", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "0002.png", "grid.png"]
    assert Image.open(out / "0000.png").size == (32, 32)
    one = tmp_path / "one.png"
    assert run(["generate", "a red circle", "-n", "1", "--model", str(model_dir), "-o", str(one), "-q"]).exit_code == 0
    assert one.is_file()
    again = tmp_path / "again"
    run(["generate", "a red circle", "-n", "3", "--model", str(model_dir), "-o", str(again), "--seed", "1", "-q"])
    assert np.array_equal(np.asarray(Image.open(again / "0002.png")), np.asarray(Image.open(out / "0002.png")))


def test_manipulation_commands(model_dir, tmp_path):
    src = tmp_path / "src.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(src)
    m = ["--model", str(model_dir)]
    assert run(["vary", str(src), "-n", "2", *m, "-o", str(tmp_path / "v")]).exit_code == 0
    assert run(["interpolate", str(src), str(src), "--frames", "3", *m, "-o", str(tmp_path / "i")]).exit_code == 0
    assert len(list((tmp_path / "i").glob("0*.png"))) == 3
    r = run(
        ["edit", str(src), "--to", "a blue circle", "--theta", "0", "--theta", "0.5", *m, "-o", str(tmp_path / "e")]
    )
    assert r.exit_code == 0 and len(list((tmp_path / "e").glob("0*.png"))) == 2


@pytest.mark.parametrize(
    "args,match",
    [
        (["generate", "", "-o", "x"], "empty"),
        (["generate", "a", "-n", "0", "-o", "x"], "-n"),
        (["generate", "a", "-n", "2", "-o", "one.png"], "names one file"),
        (["generate", "a", "--model", "/no/such/model", "-o", "x"], "/no/such/model"),
        (["vary", "/no/such.png", "-o", "x"], "such.png"),
        (["edit", "img.png", "--to", "b", "--theta", "2", "-o", "x"], "theta"),
    ],
)
def test_errors_are_one_clear_line(model_dir, tmp_path, monkeypatch, args, match):
    monkeypatch.chdir(tmp_path)
    Image.new("RGB", (20, 20)).save(tmp_path / "img.png")
    if "--model" not in args:
        args = [*args, "--model", str(model_dir)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code != 0
    assert match in result.output
    assert "Traceback" not in result.output


def test_commands_leave_autograd_alone(model_dir, tmp_path):
    import torch

    run(["generate", "a red circle", "-n", "1", "--model", str(model_dir), "-o", str(tmp_path / "g.png"), "-q"])
    assert torch.is_grad_enabled()
