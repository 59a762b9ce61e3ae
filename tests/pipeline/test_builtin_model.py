"""The built-in `shapes` model ships in the package, loads by name and generates 64 px images."""

from pathlib import Path

import torch

from unclip import UnCLIPPipeline
from unclip.pipeline.unclip_pipeline import builtin_model_dir


def test_builtin_model_is_small_and_complete():
    directory = builtin_model_dir("shapes")
    size = sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
    assert size <= 50 * 2**20, f"built-in model is {size / 2**20:.1f} MB"
    for part in ("clip", "prior", "decoder", "upsampler_1"):
        assert (directory / part / "model.safetensors").is_file(), part


def test_builtin_model_generates():
    pipe = UnCLIPPipeline.from_pretrained("shapes")
    assert pipe.image_size == 64
    out = pipe("a red circle", seed=0, prior_steps=3, decoder_steps=3, upsampler_steps=2, output_type="pt",
               return_embeddings=True)  # fmt: skip
    assert out.images.shape == (1, 3, 64, 64) and torch.isfinite(out.images).all()
    assert out.image_embeddings.shape == (1, pipe.clip.dim)
