"""The built-in `shapes` model ships in the package, loads by name, and draws what it is asked (read by the
shipped oracle, an attribute classifier trained separately on renders)."""

from pathlib import Path

import pytest

from unclip import UnCLIPPipeline
from unclip.measure.oracle import load_oracle, predict
from unclip.pipeline.options import builtin_model_dir


def test_builtin_model_is_small_and_complete():
    directory = builtin_model_dir("shapes")
    size = sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
    assert size <= 50 * 2**20, f"built-in model is {size / 2**20:.1f} MB"
    for part in ("clip", "prior", "decoder", "upsampler_1"):
        assert (directory / part / "model.safetensors").is_file(), part


@pytest.mark.parametrize(
    "prompt,colour,shape", [("a red circle", "red", "circle"), ("a blue square", "blue", "square")]
)
def test_builtin_model_draws_the_named_colour_and_shape(prompt, colour, shape):
    pipe = UnCLIPPipeline.from_pretrained("shapes")
    images = pipe(prompt, num_images_per_prompt=4, seed=0, output_type="pt").images  # the model's default settings
    assert images.shape == (4, 3, 64, 64) and pipe.image_size == 64
    readings = predict(load_oracle(), images * 2 - 1)
    hits = [any(o["colour"] == colour and o["shape"] == shape for o in r["objects"]) for r in readings]
    assert sum(hits) >= 3, (prompt, readings)  # seed 0: 4 of 4 for both prompts
