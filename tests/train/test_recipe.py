"""`unclip train shapes --recipe test`: every stage in order, resumable, ending in a loadable pipeline."""

import json

import pytest
import torch
from click.testing import CliRunner

from unclip import UnCLIPPipeline
from unclip.cli.main import cli
from unclip.train.recipe import RECIPES, get_recipe


def test_test_recipe_trains_every_stage_and_resumes(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "shapes", "--recipe", "test", "-o", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    for stage in ("clip", "prior", "decoder", "upsampler"):
        assert (out / stage / "model" / "model.safetensors").is_file(), stage
        assert (out / stage / "checkpoint.pt").is_file()
    pipe = UnCLIPPipeline.from_pretrained(out / "pipeline")
    assert pipe.image_size == get_recipe("test").cache_image_size
    images = pipe("a red circle", num_images_per_prompt=2, seed=0, output_type="pt")
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    weights = (out / "decoder" / "model" / "model.safetensors").read_bytes()
    again = CliRunner().invoke(cli, ["train", "shapes", "--recipe", "test", "-o", str(out), "--no-progress"])
    assert again.exit_code == 0, again.output
    assert (out / "decoder" / "model" / "model.safetensors").read_bytes() == weights  # resumed, not retrained
    assert json.loads((out / "recipe.json").read_text())["name"] == "test"


def test_recipes_are_valid_and_unknown_names_fail():
    for name in RECIPES:
        recipe = get_recipe(name, device="cpu")
        assert recipe.holdout < recipe.cache_size
    assert get_recipe("shapes", device="cuda").name == "shapes-gpu"
    with pytest.raises(ValueError, match="nope"):
        get_recipe("nope")
