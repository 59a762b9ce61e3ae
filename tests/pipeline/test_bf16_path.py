"""The bf16 path: networks in bf16, the sampler arithmetic and the results in float32; --precision and auto."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from unclip.cli.main import cli
from unclip.nn.conv import Conv2d
from unclip.pipeline import GenerationDefaults
from unclip.pipeline.builder import build_pipeline
from unclip.precision import native_bf16, resolve_precision
from unclip.samplers import sampling_dtype

FAST = dict(prior_steps=3, decoder_steps=3, upsampler_steps=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_pipe_bf16")
    build_pipeline("tiny", defaults=GenerationDefaults(**FAST)).save_pretrained(path)  # precision "auto"
    return path


def test_bf16_pipeline_runs_networks_in_bf16_and_samples_in_float32(model_dir):
    from unclip import UnCLIPPipeline

    fp32 = UnCLIPPipeline.from_pretrained(model_dir).to("cpu", torch.float32)
    bf16 = UnCLIPPipeline.from_pretrained(model_dir).to("cpu", torch.bfloat16)
    conv_inputs = []
    for module in bf16.decoder.model.modules():
        if isinstance(module, Conv2d):
            module.register_forward_pre_hook(lambda m, args: conv_inputs.append(args[0].dtype))
    steps = []
    out = bf16("a red circle", num_images_per_prompt=2, seed=0, output_type="pt", return_embeddings=True,
               progress=lambda stage, step, total: steps.append(stage))  # fmt: skip
    assert conv_inputs and set(conv_inputs) == {torch.bfloat16}  # the networks run in bf16
    assert out.images.dtype == torch.float32 and out.image_embeddings.dtype == torch.float32  # the walk: float32
    reference = fp32("a red circle", num_images_per_prompt=2, seed=0, output_type="pt").images
    assert torch.isfinite(out.images).all()
    assert float((out.images - reference).abs().mean()) < 0.05  # same images, to bf16 rounding
    assert sampling_dtype(torch.bfloat16) == sampling_dtype(torch.float16) == torch.float32
    assert sampling_dtype(torch.float64) == torch.float64


def _metadata(path):
    return json.loads(Image.open(path).text["unclip"])


@pytest.mark.parametrize("native,expected", [("1", "bf16"), ("0", "fp32")])
def test_cli_precision_auto_follows_the_hardware_and_the_model_default(model_dir, tmp_path, monkeypatch, native,
                                                                       expected):  # fmt: skip
    monkeypatch.setenv("UNCLIP_NATIVE_BF16", native)
    assert native_bf16("cpu") is (native == "1")
    out = tmp_path / "auto.png"
    result = CliRunner().invoke(cli, ["generate", "a red circle", "--model", str(model_dir), "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert _metadata(out)["precision"] == expected
    # the built-in model runs bf16 where it is native (2.4x faster steps on an AMX Xeon, docs/performance.md)
    from unclip.pipeline.serialization import load_pipeline

    assert load_pipeline("shapes").defaults.precision == "auto"


def test_cli_explicit_precision_and_bad_values(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("UNCLIP_NATIVE_BF16", "0")  # an explicit bf16 runs even where it is emulated
    runner = CliRunner()
    paths = {}
    for precision in ("fp32", "bf16"):
        paths[precision] = tmp_path / f"{precision}.png"
        args = ["generate", "a red circle", "--model", str(model_dir), "-o", str(paths[precision]), "--seed", "4",
                "--precision", precision, "-q"]  # fmt: skip
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        assert _metadata(paths[precision])["precision"] == precision
    a, b = (np.asarray(Image.open(paths[p]), dtype=np.int16) for p in ("fp32", "bf16"))
    assert np.abs(a - b).mean() < 12  # same image to bf16 rounding (tiny random nets amplify it)
    bad = runner.invoke(cli, ["generate", "x", "--model", str(model_dir), "-o", str(tmp_path / "x.png"),
                              "--precision", "fp8"])  # fmt: skip
    assert bad.exit_code != 0 and "fp8" in bad.output
    with pytest.raises(ValueError, match="precision 'half' must be one of auto, fp32, bf16, fp16"):
        resolve_precision("half")
