"""``unclip convert``: diffusers / Karlo folders to our layout, ours to diffusers; one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from unclip import UnCLIPPipeline
from unclip.cli.main import cli

diffusers = pytest.importorskip("diffusers")

FAST = dict(seed=0, prior_steps=3, decoder_steps=3, upsampler_steps=2, output_type="pt")


def test_convert_diffusers_to_ours_and_back(t2i_dir, ours_t2i, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["convert", "--from", "diffusers", str(t2i_dir), str(tmp_path / "ours")])
    assert result.exit_code == 0, result.output
    index = json.loads((tmp_path / "ours" / "model_index.json").read_text())
    assert index["format"] == "unclip-pipeline" and index["defaults"]["sampler"] == "unclip"
    converted = UnCLIPPipeline.from_pretrained(tmp_path / "ours")
    assert torch.equal(converted("a red circle", **FAST).images, ours_t2i("a red circle", **FAST).images)

    back = tmp_path / "back"
    result = runner.invoke(cli, ["convert", "--from", "unclip", "--to", "diffusers", str(tmp_path / "ours"), str(back)])
    assert result.exit_code == 0, result.output
    theirs = diffusers.UnCLIPPipeline.from_pretrained(str(back))
    assert torch.equal(theirs.prior.clip_std, ours_t2i.prior.model.clip_std[None])

    half = tmp_path / "half"
    result = runner.invoke(cli, ["convert", "--from", "diffusers", "--dtype", "fp16", str(t2i_dir), str(half)])
    assert result.exit_code == 0, result.output
    from unclip.io import load_safetensors

    assert load_safetensors(half / "decoder" / "model.safetensors")["out.2.weight"].dtype == torch.float16
    assert UnCLIPPipeline.from_pretrained(half, dtype=torch.float16).dtype == torch.float16


def test_convert_errors(t2i_dir, tmp_path):
    runner = CliRunner()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = runner.invoke(cli, ["convert", "--from", "diffusers", str(t2i_dir), str(tmp_path / "full")])
    assert result.exit_code == 2 and "not an empty directory" in result.output
    result = runner.invoke(cli, ["convert", "--from", "karlo", str(tmp_path / "nowhere"), str(tmp_path / "o")])
    assert result.exit_code == 1 and "not found" in result.output and "Traceback" not in result.output
    result = runner.invoke(cli, ["convert", "--from", "diffusers", str(tmp_path / "full"), str(tmp_path / "o2")])
    assert result.exit_code == 1 and "model_index.json" in result.output
    result = runner.invoke(cli, ["convert", "--from", "unclip", "--clip", "c", str(t2i_dir), str(tmp_path / "o3")])
    assert result.exit_code == 2 and "--clip only applies" in result.output
