"""`unclip train shapes --recipe test`: every stage in order, resumable, ending in a loadable pipeline."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from unclip import UnCLIPPipeline
from unclip.cli.main import cli
from unclip.recipes import RECIPES, get_recipe


def test_test_recipe_trains_every_stage_and_resumes(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "shapes", "--recipe", "test", "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    for stage in ("clip", "prior", "decoder", "upsampler"):
        assert (out / stage / "model" / "model.safetensors").is_file(), stage
        assert (out / stage / "checkpoint.pt").is_file()
    pipe = UnCLIPPipeline.from_pretrained(out / "pipeline")
    assert pipe.image_size == get_recipe("test").cache_image_size
    images = pipe("a red circle", num_images_per_prompt=2, seed=0, output_type="pt").images
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    weights = (out / "decoder" / "model" / "model.safetensors").read_bytes()
    again = CliRunner().invoke(cli, ["train", "shapes", "--recipe", "test", "-o", str(out), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert (out / "decoder" / "model" / "model.safetensors").read_bytes() == weights  # resumed, not retrained
    assert json.loads((out / "recipe.json").read_text())["name"] == "test"
    # the stages use the parameterisations docs/shapes_model.md states (v for decoder and upsampler)
    for stage, prediction in (("decoder", "v"), ("upsampler_1", "v")):
        assert json.loads((out / "pipeline" / stage / "diffusion.json").read_text())["prediction"] == prediction
    assert json.loads((out / "pipeline" / "upsampler_1" / "config.json").read_text())["residual"] is True

    # a second run takes the first run's upsampler instead of training one (it depends on images only)
    second = tmp_path / "second"
    args = ["train", "shapes", "--recipe", "test", "-o", str(second), "--no-progress"]
    reused = CliRunner().invoke(cli, args + ["--reuse-upsampler", str(out / "pipeline")])
    assert reused.exit_code == 0, reused.output
    assert not (second / "upsampler" / "checkpoint.pt").exists()
    upsampler_weights = (out / "pipeline" / "upsampler_1" / "model.safetensors").read_bytes()
    assert (second / "pipeline" / "upsampler_1" / "model.safetensors").read_bytes() == upsampler_weights
    # an upsampler of other sizes is refused, naming the mismatch
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    config = json.loads((out / "pipeline" / "upsampler_1" / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "image_size": 2 * config["image_size"]}))
    bad = CliRunner().invoke(cli, args + ["--reuse-upsampler", str(wrong)])
    assert bad.exit_code != 0 and "image_size" in bad.output


def test_recipes_are_valid_and_unknown_names_fail():
    for name in RECIPES:
        recipe = get_recipe(name, device="cpu")
        assert recipe.holdout < recipe.cache_size
    assert get_recipe("shapes", device="cuda").name == "shapes-gpu"
    with pytest.raises(ValueError, match="nope"):
        get_recipe("nope")


def test_the_shapes_recipes_install_the_built_in_models_defaults():
    """What `unclip train shapes --install` writes into model_index.json is what the shipped model samples with,
    and the shipped recipe.json records the same."""
    from dataclasses import asdict

    from unclip.pipeline import GenerationDefaults

    assets = Path(__file__).resolve().parents[2] / "src" / "unclip" / "assets" / "shapes"
    shipped = json.loads((assets / "model_index.json").read_text())["defaults"]
    for name in ("shapes", "shapes-gpu"):
        assert asdict(GenerationDefaults(**get_recipe(name, device="cpu").defaults)) == shipped, name
    assert json.loads((assets / "recipe.json").read_text())["defaults"] == get_recipe("shapes").defaults
