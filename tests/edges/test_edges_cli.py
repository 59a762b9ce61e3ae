"""Issue 15's edge corpus, generation side: the CLI's one-line errors, output paths checked before any work, bounded
resources, nothing non-finite written, faithful inputs and every listed sampler working. Each case failed on the
code before the issue (crash, traceback, bad file or silent loss). The training and server cases are in
test_edges_training.py and test_edges_web.py beside this file.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unclip import UnCLIPPipeline
from unclip.cli import generate_cmds
from unclip.cli.main import main
from unclip.pipeline import GenerationDefaults
from unclip.pipeline.builder import build_pipeline

FAST = dict(prior_steps=2, decoder_steps=2, upsampler_steps=2, inversion_steps=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny_pipe")
    build_pipeline("tiny", defaults=GenerationDefaults(**FAST, best_of=1)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pipe(model_dir) -> UnCLIPPipeline:
    return UnCLIPPipeline.from_pretrained(model_dir)


def cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run the ``unclip`` entry point in-process: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code != 0, err
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if a command gets as far as loading the model (checks must come first)."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad option was refused")

    monkeypatch.setattr(generate_cmds, "_load", refuse)


# ---------------------------------------------------------------- item 3: nothing non-finite is written


def test_nan_weights_stop_naming_the_stage_and_write_nothing(pipe, tmp_path, capsys):
    """issue 15 item 3: NaN weights gave an all-black PNG and exit 0."""
    broken = tmp_path / "nan_pipe"
    pipe.save_pretrained(broken)
    bad = UnCLIPPipeline.from_pretrained(broken)
    with torch.no_grad():
        next(bad.decoder.model.parameters()).fill_(float("nan"))
    bad.save_pretrained(broken)
    out = tmp_path / "out.png"
    code, _, err = cli(["generate", "a red circle", "--model", str(broken), "-o", str(out)], capsys)
    assert_one_line_error(code, err, "decoder", "non-finite")
    assert not out.exists() and not list(tmp_path.glob(".*.tmp"))


def test_infinite_eta_is_refused(pipe, tmp_path, capsys, no_model_load):
    """issue 15 item 3: `--eta inf` ran and wrote an all-black PNG."""
    for value in ("inf", "nan"):
        code, _, err = cli(["generate", "a", "--eta", value, "-o", str(tmp_path / "x.png")], capsys)
        assert_one_line_error(code, err, "--eta", value)
    with pytest.raises(ValueError, match="eta must be a finite number"):
        pipe("a red circle", eta=float("inf"), sampler="ddim")
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- item 4: resources bounded before they are taken


def test_huge_best_of_is_refused_before_allocation(pipe, tmp_path, capsys, no_model_load):
    """issue 15 item 4: `--best-of 100000000` tried to allocate 51 GB."""
    code, _, err = cli(["generate", "a", "--best-of", "100000000", "-o", str(tmp_path / "x.png")], capsys)
    assert_one_line_error(code, err, "--best-of", "100000000")
    with pytest.raises(ValueError, match="best_of must be at most 64"):
        pipe("a red circle", best_of=100_000_000)


def test_images_beyond_available_memory_are_refused_before_sampling(pipe, monkeypatch):
    """issue 15 item 4: batch sizes were never compared with the machine's memory."""
    import unclip.limits

    monkeypatch.setattr(unclip.limits, "available_memory_bytes", lambda: 4 * 2**20)
    calls = []
    monkeypatch.setattr(pipe, "run_prior", lambda *a, **k: calls.append(1))
    with pytest.raises(unclip.limits.ResourceLimitError, match=r"num_images_per_prompt 64 needs about .* at most"):
        pipe("a red circle", num_images_per_prompt=64)
    assert calls == []


def test_config_with_huge_channels_is_refused_before_allocation(pipe, tmp_path, monkeypatch):
    """issue 15 item 4: a config with 65536 channels allocated before failing."""
    import unclip.limits

    directory = tmp_path / "wide"
    pipe.save_pretrained(directory)
    config_path = directory / "decoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["model_channels"] = 512  # ~0.2 GB of weights: far more than the 8 MiB the test says are free
    config_path.write_text(json.dumps(config))
    monkeypatch.setattr(unclip.limits, "available_memory_bytes", lambda: 8 * 2**20)
    with pytest.raises(unclip.limits.ResourceLimitError, match=r"decoder/config.json: the decoder network .* GiB"):
        UnCLIPPipeline.from_pretrained(directory)


# ---------------------------------------------------------------- item 5: every CLI error is one line


@pytest.mark.parametrize("device", ["cuda", "cuda:7", "bogus", "meta"])
def test_unknown_or_unavailable_device_is_one_line(device, tmp_path, capsys, no_model_load):
    """issue 15 item 5: an unavailable --device raised a torch traceback after loading."""
    if device.startswith("cuda") and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = cli(["generate", "a", "--device", device, "-o", str(tmp_path / "x.png")], capsys)
    assert_one_line_error(code, err, "--device", device)


def test_output_paths_are_checked_before_any_work(tmp_path, capsys, no_model_load):
    """issue 15 item 5: a bad -o failed only after sampling (13 s), with a traceback."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, needle in [(a_file / "x.png", "is a file"), (a_file / "sub", "is a file"), ("/dev/full", "/dev/full")]:
        code, _, err = cli(["generate", "a", "-o", str(out)], capsys)
        assert_one_line_error(code, err, needle)
    code, _, err = cli(["generate", "a", "-o", str(tmp_path / "x.gif")], capsys)
    assert_one_line_error(code, err, ".gif")


def test_seeds_past_64_bits_are_one_line(pipe, tmp_path, capsys, no_model_load):
    """issue 15 item 5: `--seed 18446744073709551616` crashed in torch's manual_seed."""
    code, _, err = cli(["generate", "a", "--seed", str(2**64), "-o", str(tmp_path / "x.png")], capsys)
    assert_one_line_error(code, err, "--seed", str(2**64))
    with pytest.raises(ValueError, match="seed must be an integer"):
        pipe("a red circle", seed=2**64)


def test_invalid_utf8_prompt_is_one_line(model_dir, tmp_path, capsys):
    """issue 15 item 5: undecodable bytes in argv (lone surrogates) crashed the tokenizer."""
    prompt = os.fsdecode(b"a red \xff circle")
    code, _, err = cli(["generate", prompt, "--model", str(model_dir), "-o", str(tmp_path / "x.png")], capsys)
    assert_one_line_error(code, err, "UTF-8")


def test_decompression_bomb_is_refused_before_decoding(model_dir, tmp_path, capsys):
    """issue 15 item 5: a 20000x20000 PNG of 50 KB raised PIL's DecompressionBombError as a traceback."""
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)
    assert bomb.stat().st_size < 200_000
    code, _, err = cli(["vary", str(bomb), "--model", str(model_dir), "-o", str(tmp_path / "v")], capsys)
    assert_one_line_error(code, err, "bomb.png", "too large")


def test_transformers_clip_that_needs_pickle_is_one_line(tmp_path):
    """issue 15 item 5: a pytorch_model.bin needing full unpickling raised UnpicklingError (a multi-line
    traceback); the error must not suggest --trust-pickle, which no loading command has."""
    import argparse
    import sys

    import transformers
    from safetensors.torch import load_file

    sys.path.insert(0, str(Path(__file__).parents[1] / "encoders"))
    import test_hf_clip as tiny  # the tiny offline CLIP builders of the encoder tests

    from unclip.encoders.loading import load_clip

    vocab = tiny._write_tokenizer(tmp_path)
    text, vision = tiny._configs(vocab)
    config = transformers.CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=24)
    transformers.CLIPModel(config).save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    torch.save({**state, "extra": argparse.Namespace(a=1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="need full unpickling") as err:
        load_clip(tmp_path)
    assert "\n" not in str(err.value) and "--trust-pickle" not in str(err.value)


def test_config_type_error_names_file_and_field(pipe, tmp_path):
    """issue 15 item 5: `"model_channels": "wide"` failed deep inside the network's constructor."""
    directory = tmp_path / "typo"
    pipe.save_pretrained(directory)
    config_path = directory / "decoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["model_channels"] = "wide"
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"decoder/config.json: field 'model_channels' must be int, got 'wide'"):
        UnCLIPPipeline.from_pretrained(directory)
    config["model_channels"], config["channel_mult"] = 16, [1, "two"]
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"field 'channel_mult\[1\]' must be int"):
        UnCLIPPipeline.from_pretrained(directory)


# ---------------------------------------------------------------- item 6: outputs behave as users expect


def test_png_output_without_n_writes_one_image_with_its_parameters(model_dir, tmp_path, capsys):
    """issue 15 item 6: `-o x.png` without -n refused (-n defaulted to 4); CLI PNGs carried no parameters;
    files were 0600 whatever the umask."""
    out = tmp_path / "x.png"
    old = os.umask(0o022)
    try:
        code, _, err = cli(
            ["generate", "a red circle", "--model", str(model_dir), "-o", str(out), "--seed", "7"], capsys
        )
    finally:
        os.umask(old)
    assert code == 0, err
    assert (out.stat().st_mode & 0o777) == 0o644
    with Image.open(out) as image:
        params = json.loads(image.text["unclip"])
        assert image.text["prompt"] == "a red circle" and image.text["seed"] == "7"
    assert params["prompt"] == "a red circle" and params["seed"] == 7 and params["command"] == "generate"


def test_jpg_output_is_a_jpeg_not_a_directory(model_dir, tmp_path, capsys):
    """issue 15 item 6: `-o out.jpg` silently became a directory of PNGs."""
    out = tmp_path / "out.jpg"
    code, _, err = cli(["generate", "a red circle", "--model", str(model_dir), "-o", str(out), "-q"], capsys)
    assert code == 0, err
    assert out.is_file()
    with Image.open(out) as image:
        assert image.format == "JPEG" and json.loads(image.info["comment"])["prompt"] == "a red circle"


# ---------------------------------------------------------------- item 7: inputs are read faithfully


def test_16_bit_images_keep_their_tones(tmp_path):
    """issue 15 item 7: a 0-65535 gradient loaded 99.6 % white."""
    from unclip.images import load_image

    gradient = np.linspace(0, 65535, 64 * 256).reshape(64, 256).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "g16.png")
    loaded = np.asarray(load_image(tmp_path / "g16.png"))[..., 0].astype(float)
    expected = gradient / 65535 * 255
    assert np.abs(loaded - expected).max() <= 1.0
    assert (loaded == 255).mean() < 0.01


def test_long_prompts_are_truncated_with_a_warning_naming_the_cut(pipe):
    """issue 15 item 7: a 1,001-character prompt was refused, and tokens past the context were cut silently."""
    long_prompt = "a red circle " + "on the left " * 90
    assert len(long_prompt) > 1000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = pipe(long_prompt, seed=0)
    assert len(images) == 1
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("prompt truncated to the") and "the left on the left" in m for m in messages), messages


def test_unknown_words_are_reported(pipe):
    """issue 15 item 7: words outside the tokenizer's vocabulary were spelled as bytes without a word."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pipe("a red zebra circle", seed=0)
    assert any("does not know" in str(w.message) and "zebra" in str(w.message) for w in caught)


# ---------------------------------------------------------------- item 8: every option a front end offers works


def test_unclip_sampler_runs_v_prediction_models(pipe):
    """issue 15 item 8: `--sampler unclip` failed on the built-in model (v prediction); the tiny pipeline's
    decoder and upsampler are v models too."""
    assert pipe.decoder.diffusion.prediction == "v"
    out = pipe("a star", sampler="unclip", seed=0, output_type="pt").images
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()


@pytest.mark.parametrize("variance", ["fixed_small", "learned_range"])
def test_unclip_sampler_v_matches_ddpm_on_the_respaced_schedule(variance):
    """issue 15 item 8: the v branch of sampler "unclip" is DDPM on the evenly respaced schedule (float64 reference)."""
    from unclip.diffusion import Parameterization, make_schedule
    from unclip.samplers.base import Predictor
    from unclip.samplers.ddpm import ddpm_sample
    from unclip.samplers.unclip import unclip_sample as unclip_sample_fp32

    channels = 2 if variance == "learned_range" else 1

    def denoiser(x, t):  # any smooth function of (x, t) stands in for a network predicting v (and variance)
        v = torch.tanh(0.5 * x) * (1 + t.float().view(-1, 1) / 1000)
        return torch.cat([v, torch.tanh(x)], dim=1) if channels == 2 else v

    param = Parameterization("v", variance)
    schedule = make_schedule("cosine")
    x_T = torch.randn(4, 1, generator=torch.Generator().manual_seed(0))
    ours = unclip_sample_fp32(Predictor(denoiser, param), schedule, 10, x_T.clone(),
                              generator=torch.Generator().manual_seed(1))  # fmt: skip
    respaced = schedule.respace("10")
    reference = ddpm_sample(Predictor(lambda x, t: denoiser(x.double(), t).double(), param),
                            respaced, x_T.double(), generator=torch.Generator().manual_seed(1))  # fmt: skip
    # float32 against float64 (diffusers' own arithmetic cancels near t = 999): ~5e-4; a wrong v -> x0 is O(1) off
    torch.testing.assert_close(ours.double(), reference, atol=2e-3, rtol=1e-3)
    as_eps = ddpm_sample(Predictor(lambda x, t: denoiser(x.double(), t).double(), Parameterization("eps", variance)),
                         schedule.respace("10"), x_T.double(), generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert (ours.double() - as_eps).abs().max() > 0.05


def test_front_ends_share_one_source_for_samplers_and_ranges():
    """issue 15 item 8: θ was 0-1 on the CLI and 0-0.5 in the API; the CLI kept its own sampler list."""
    from unclip.cli.generate_cmds import edit, generate
    from unclip.pipeline import bounds
    from unclip.samplers.run import SAMPLER_NAMES
    from unclip.web.config import ServeConfig
    from unclip.web.schemas import request_models

    options = {p.name: p for p in generate.params}
    assert tuple(options["sampler"].type.choices) == SAMPLER_NAMES
    assert (options["num_images"].type.min, options["num_images"].type.max) == (1, bounds.MAX_IMAGES)
    theta = next(p for p in edit.params if p.name == "thetas").type
    assert (theta.low, theta.high) == bounds.THETA_RANGE
    schema = request_models(ServeConfig().limits).text_diff.model_json_schema()
    item = schema["properties"]["thetas"]["items"]
    assert (item["minimum"], item["maximum"]) == bounds.THETA_RANGE
