"""UnCLIPPipeline on tiny random parts: shapes, determinism, save/load, manipulations, validation."""

import numpy as np
import pytest
import torch
from PIL import Image

from unclip import UnCLIPPipeline
from unclip.pipeline import GenerationDefaults
from unclip.pipeline.builder import build_pipeline

FAST = dict(prior_steps=3, decoder_steps=3, upsampler_steps=2)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("tiny", defaults=GenerationDefaults(**FAST, inversion_steps=4))


def test_text_to_image_shapes_and_seed_determinism(pipe):
    images = pipe(["a red circle", "a blue star"], num_images_per_prompt=2, seed=0)
    assert len(images) == 4 and all(isinstance(i, Image.Image) for i in images)
    assert images[0].size == (pipe.image_size, pipe.image_size) == (32, 32)
    again = pipe(["a red circle", "a blue star"], num_images_per_prompt=2, seed=0, output_type="np")
    assert np.array_equal(np.asarray(images[3]), np.round(again[3] * 255).astype(np.uint8))
    other = pipe("a red circle", seed=1, output_type="np")
    assert not np.array_equal(other[0], again[0])


def test_guidance_is_one_batched_forward(pipe, monkeypatch):
    calls = []
    decoder = pipe.decoder.model
    original = decoder.forward

    def spy(x, t, **kw):
        calls.append(x.shape[0])
        return original(x, t, **kw)

    monkeypatch.setattr(decoder, "forward", spy)
    pipe("a red circle", num_images_per_prompt=3, seed=0, decoder_guidance_scale=5.0, prior_guidance_scale=2.0)
    assert calls == [6] * FAST["decoder_steps"]  # [uncond; cond] in one call per step
    calls.clear()
    pipe("a red circle", num_images_per_prompt=3, seed=0, decoder_guidance_scale=1.0)
    assert calls == [3] * FAST["decoder_steps"]


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++", "unclip"])
def test_every_sampler_runs(pipe, sampler, monkeypatch):
    if sampler == "unclip":  # diffusers' UnCLIPScheduler knows eps and x0 only (Karlo's stages use eps)
        from unclip.diffusion.stage_config import DiffusionConfig

        monkeypatch.setattr(pipe.decoder, "diffusion", DiffusionConfig(prediction="eps", variance="learned_range"))
        for stage in pipe.upsamplers:
            monkeypatch.setattr(stage, "diffusion", DiffusionConfig(prediction="eps", variance="fixed_small"))
    out = pipe("a star", sampler=sampler, seed=0, output_type="pt", return_embeddings=True)
    assert out.images.shape == (1, 3, 32, 32) and out.images.min() >= 0 and out.images.max() <= 1
    assert out.image_embeddings.shape == (1, pipe.clip.dim)


def test_save_and_load_give_identical_images(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    loaded = UnCLIPPipeline.from_pretrained(tmp_path / "p")
    a = pipe("a green cross", seed=3, output_type="pt")
    b = loaded("a green cross", seed=3, output_type="pt")
    assert torch.equal(a, b)
    assert loaded.defaults == pipe.defaults


def test_manipulations(pipe, tmp_path):
    source = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    path = tmp_path / "src.png"
    source.save(path)
    assert len(pipe.vary(path, num_images=3, seed=0)) == 3
    frames = pipe.interpolate(source, path, num_frames=3, seed=0, output_type="pt")
    assert frames.shape == (3, 3, 32, 32)
    frames_slerp = pipe.interpolate(source, source.convert("L"), num_frames=2, noise="slerp", output_type="pt")
    assert frames_slerp.shape == (2, 3, 32, 32)
    edits = pipe.edit(source, to_text="a blue circle", from_text="a red circle", thetas=[0.0, 0.5], seed=0)
    assert len(edits) == 2


def test_inversion_reconstructs_through_the_decoder(pipe):
    """DDIM inversion then DDIM decoding (eta 0, no guidance) returns the base image."""
    from unclip.stages.decoding import invert_decoder, sample_decoder

    dec = pipe.decoder
    torch.manual_seed(0)
    image = torch.rand(1, 3, 16, 16) * 1.6 - 0.8
    z = torch.randn(1, pipe.clip.dim)
    x_T = invert_decoder(dec.model, dec.diffusion, image, z, steps=50)
    back = sample_decoder(dec.model, dec.diffusion, z, None, steps=50, sampler="ddim", guidance_scale=1.0, x_T=x_T)
    assert (back - image).abs().max() < 0.05


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prompt=""), "empty"),
        (dict(prompt=["ok", 3]), "strings"),
        (dict(prompt="x" * 20_001), "too long"),
        (dict(prompt="a", num_images_per_prompt=0), "num_images_per_prompt"),
        (dict(prompt="a", decoder_steps=-1), "decoder_steps"),
        (dict(prompt="a", sampler="euler"), "sampler"),
        (dict(prompt="a", decoder_guidance_scale=-2.0), "decoder_guidance_scale"),
        (dict(prompt="a", seed=-1), "seed"),
        (dict(prompt="a", output_type="jpg"), "output_type"),
    ],
)
def test_bad_input_is_named(pipe, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pipe(**kwargs)


def test_missing_model_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        UnCLIPPipeline.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="built-in"):
        from unclip.pipeline.unclip_pipeline import builtin_model_dir

        builtin_model_dir("nope")
