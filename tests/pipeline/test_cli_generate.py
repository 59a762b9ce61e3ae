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


def _frames(directory):
    return [np.asarray(Image.open(p), dtype=np.int16) for p in sorted(directory.glob("0*.png"))]


@pytest.fixture(scope="module")
def source_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "src.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(path)
    return path


def _reconstruction(model_dir, source_image, rows: int, seed: int) -> list[np.ndarray]:
    """The image's z_i decoded from its DDIM-inverted x_T (eta 0), ``rows`` times in one batch, computed directly."""
    import torch

    from unclip.images import tensor_to_output
    from unclip.pipeline import UnCLIPPipeline

    pipe = UnCLIPPipeline.from_pretrained(model_dir)
    z_i, x_T = pipe.invert(str(source_image))
    settings = pipe._ddim_settings(None, None)
    with torch.no_grad():  # one batch of ``rows``: the upsamplers draw the same noise as the command's batch
        recon = pipe.decode(z_i.repeat(rows, 1), None, settings, torch.Generator().manual_seed(seed),
                            x_T=x_T.repeat(rows, 1, 1, 1), eta=0.0, sampler="ddim")  # fmt: skip
    return [np.asarray(im, dtype=np.int16) for im in tensor_to_output(recon, "pil")]


def test_edit_at_theta_zero_reproduces_the_inversion(model_dir, source_image, tmp_path):
    m = ["--model", str(model_dir), "--seed", "5"]
    r = run(["edit", str(source_image), "--to", "a blue circle", "--theta", "0", "--theta", "0.5", *m,
             "-o", str(tmp_path / "e")])  # fmt: skip
    assert r.exit_code == 0, r.output
    at_zero, at_half = _frames(tmp_path / "e")
    assert np.abs(at_zero - _reconstruction(model_dir, source_image, 2, 5)[0]).max() <= 1  # PNG rounding only
    assert (at_half != at_zero).mean() > 0.3  # same x_T and upsampler noise: only the text diff moves it


def test_variations_are_seeded_draws_around_the_reconstruction(model_dir, source_image, tmp_path):
    m = ["--model", str(model_dir)]
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        r = run(["vary", str(source_image), "-n", "2", *m, "--seed", seed, "-o", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    a, b, c = (_frames(tmp_path / n) for n in "abc")
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # same seed, same variations
    assert (a[0] != a[1]).mean() > 0.3  # eta 1: the two variations differ
    assert (a[0] != c[0]).mean() > 0.3  # another seed, other draws
    r = run(["vary", str(source_image), "-n", "2", "--eta", "0", *m, "--seed", "3", "-o", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    for got, want in zip(_frames(tmp_path / "d"), _reconstruction(model_dir, source_image, 2, 3)):
        assert np.abs(got - want).max() <= 1  # eta 0: a variation is the reconstruction


def test_interpolating_an_image_with_itself_decodes_its_embedding_from_one_noise(model_dir, source_image, tmp_path):
    import torch

    from unclip.images import tensor_to_output
    from unclip.pipeline import UnCLIPPipeline

    other = tmp_path / "other.png"
    Image.new("RGB", (30, 30), (20, 40, 220)).save(other)
    m = ["--model", str(model_dir), "--seed", "2", "--frames", "3"]
    assert run(["interpolate", str(source_image), str(source_image), *m, "-o", str(tmp_path / "same")]).exit_code == 0
    pipe = UnCLIPPipeline.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(2)
    size = pipe.decoder.model.config.image_size
    x_T = torch.randn((1, 3, size, size), generator=generator).repeat(3, 1, 1, 1)
    z = pipe.embed_images([str(source_image)]).repeat(3, 1)
    with torch.no_grad():
        want = pipe.decode(z, None, pipe._ddim_settings(None, None), generator, x_T=x_T, eta=0.0, sampler="ddim")
    for got, ref in zip(_frames(tmp_path / "same"), tensor_to_output(want, "pil")):
        assert np.abs(got - np.asarray(ref, dtype=np.int16)).max() <= 1
    assert run(["interpolate", str(source_image), str(other), *m, "-o", str(tmp_path / "ab")]).exit_code == 0
    ab = _frames(tmp_path / "ab")
    assert (ab[2] != ab[0]).mean() > 0.3  # the far end is the other image


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


def test_console_script_fast_exit_keeps_every_file_and_line(model_dir, tmp_path):
    """The console script ends ``generate`` with os._exit after flushing: the files and the last line survive,
    and the exit code is 0 (bad input still exits 2 through the normal path)."""
    import subprocess
    import sys

    out = tmp_path / "cli"
    code = "import sys; from unclip.cli.main import main; sys.argv[0] = 'unclip'; main()"
    args = [sys.executable, "-c", code, "generate", "a red circle", "-n", "2", "--model", str(model_dir), "-o",
            str(out)]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"wrote 2 image(s) to {out}")
    assert sorted(p.name for p in out.iterdir()) == ["0000.png", "0001.png", "grid.png"]
    assert Image.open(out / "0001.png").size == (32, 32)
    bad = subprocess.run(args[:3] + ["generate", "x", "-n", "0", "-o", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "Error:" in bad.stderr


def test_console_script_pauses_the_collector_until_the_pipeline_is_loaded(model_dir, tmp_path):
    """unclip.cli.startup through the real console-script path: the collector is off before the pipeline loads
    and on after."""
    import subprocess
    import sys

    out = tmp_path / "cli"
    code = (
        "import gc, sys\n"
        "import unclip.cli.generate_cmds as g\n"
        "load = g._load\n"
        "def traced(*a, **k):\n"
        "    before = gc.isenabled()\n"
        "    result = load(*a, **k)\n"
        "    print('gc', before, gc.isenabled(), gc.get_freeze_count() > 0, file=sys.stderr)\n"
        "    return result\n"
        "g._load = traced\n"
        "from unclip.cli.main import main\n"
        "sys.argv[0] = 'unclip'\n"
        "main()\n"
    )
    args = [sys.executable, "-c", code, "generate", "a red circle", "-n", "1", "--model", str(model_dir), "-o",
            str(out)]  # fmt: skip
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "gc False True True" in result.stderr


def test_keep_mean_switch_sets_the_three_colour_settings(model_dir, tmp_path, monkeypatch):
    """--keep-mean / --no-keep-mean override the model's three mean-colour defaults and are recorded in the
    images' metadata; without either the model's own defaults run."""
    from unclip.pipeline import UnCLIPPipeline
    from unclip.pipeline.options import MEAN_COLOUR_SETTINGS as KEEP_MEAN_SETTINGS

    seen = []
    real = UnCLIPPipeline.decode

    def decode(self, z_i, text, settings, *args, **kwargs):
        seen.append(tuple(getattr(settings, name) for name in KEEP_MEAN_SETTINGS))
        return real(self, z_i, text, settings, *args, **kwargs)

    monkeypatch.setattr(UnCLIPPipeline, "decode", decode)
    base = ["generate", "a red circle", "-n", "1", "--model", str(model_dir), "-q"]
    assert run([*base, "-o", str(tmp_path / "a.png")]).exit_code == 0
    assert run([*base, "--keep-mean", "-o", str(tmp_path / "b.png")]).exit_code == 0
    assert run([*base, "--no-keep-mean", "-o", str(tmp_path / "c.png")]).exit_code == 0
    assert seen == [(False, False, False), (True, True, True), (False, False, False)]
    from unclip.images import PARAMS_KEY

    assert '"keep_mean": true' in Image.open(tmp_path / "b.png").text[PARAMS_KEY]
    assert "keep_mean" not in Image.open(tmp_path / "a.png").text[PARAMS_KEY]
