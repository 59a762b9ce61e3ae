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
    again = pipe(["a red circle", "a blue star"], num_images_per_prompt=2, seed=0, output_type="np").images
    assert np.array_equal(np.asarray(images[3]), np.round(again[3] * 255).astype(np.uint8))
    other = pipe("a red circle", seed=1, output_type="np").images
    assert not np.array_equal(other[0], again[0])


def test_guidance_is_one_batched_forward(pipe, monkeypatch):
    calls = []
    decoder = pipe.decoder.model
    original = decoder.run_trunk  # the U-Net's per-step body (the sampler runs it conditioned, not via forward)

    def spy(h, emb, *args, **kw):
        calls.append(h.shape[0])
        return original(h, emb, *args, **kw)

    monkeypatch.setattr(decoder, "run_trunk", spy)
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
    a = pipe("a green cross", seed=3, output_type="pt").images
    b = loaded("a green cross", seed=3, output_type="pt").images
    assert torch.equal(a, b)
    assert loaded.defaults == pipe.defaults


def test_manipulations(pipe, tmp_path):
    source = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    path = tmp_path / "src.png"
    source.save(path)
    assert len(pipe.vary(path, num_images=3, seed=0)) == 3
    frames = pipe.interpolate(source, path, num_frames=3, seed=0, output_type="pt").images
    assert frames.shape == (3, 3, 32, 32)
    frames_slerp = pipe.interpolate(source, source.convert("L"), num_frames=2, noise="slerp", output_type="pt").images
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


# ---------------------------------------------------------------- batched manipulations, the prior interface


def _source(seed: int, size: int = 16) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(26, 230, (size, size, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def base_pipe():
    """Decoder only (no upsampler): DDIM at eta 0 then draws no noise at all."""
    return build_pipeline("tiny", num_upsamplers=0, defaults=GenerationDefaults(**FAST, inversion_steps=4))


def test_batched_vary_and_edit_equal_the_per_image_calls(base_pipe, monkeypatch):
    images = [_source(0), _source(1, 24), _source(2)]
    batch_sizes = []
    original = base_pipe.decoder.model.run_trunk  # the per-step U-Net body

    def spy(h, emb, *args, **kw):
        batch_sizes.append(h.shape[0])
        return original(h, emb, *args, **kw)

    monkeypatch.setattr(base_pipe.decoder.model, "run_trunk", spy)
    batched = base_pipe.vary(images, num_images=2, eta=0.0, seed=0, output_type="pt").images
    assert batched.shape == (6, 3, 16, 16)
    assert set(batch_sizes) == {3, 12}  # inversion [3] (unguided), then one guided decoder batch [2 x 3 x 2]
    batch_sizes.clear()
    for i, image in enumerate(images):
        one = base_pipe.vary(image, num_images=2, eta=0.0, seed=0, output_type="pt").images
        torch.testing.assert_close(batched[2 * i : 2 * i + 2], one, atol=2e-5, rtol=0)
    assert not torch.allclose(batched[0], batched[2], atol=1e-3)  # the images really differ
    thetas = [0.0, 0.5]
    to_texts, from_texts = ["a blue circle", "a red star", "a green cross"], ["a red circle", None, "a cross"]
    edits = base_pipe.edit(
        images, to_text=to_texts, from_text=from_texts, thetas=thetas, seed=0, output_type="pt"
    ).images
    assert edits.shape == (6, 3, 16, 16)
    for i, image in enumerate(images):
        one = base_pipe.edit(image, to_text=to_texts[i], from_text=from_texts[i], thetas=thetas, seed=0,
                             output_type="pt").images  # fmt: skip
        torch.testing.assert_close(edits[2 * i : 2 * i + 2], one, atol=2e-5, rtol=0)
    # one caption for every image
    same = base_pipe.edit(images[:2], to_text="a blue circle", thetas=[0.5], output_type="pt").images
    one = base_pipe.edit(images[1], "a blue circle", thetas=[0.5], output_type="pt").images
    torch.testing.assert_close(same[1:], one,
                               atol=2e-5, rtol=0)  # fmt: skip
    with pytest.raises(ValueError, match="one per image"):
        base_pipe.edit(images, to_text=["a", "b"])


def test_one_image_in_a_list_is_the_single_image_call(pipe):
    """With noise (eta 1, a DDPM upsampler) a batch of one is the same computation as the single image, bit for bit."""
    source = _source(3, 40)
    assert torch.equal(pipe.vary([source], num_images=2, seed=4, output_type="pt").images,
                       pipe.vary(source, num_images=2, seed=4, output_type="pt").images)  # fmt: skip
    edits = pipe.edit([source], "a blue circle", thetas=[0.0, 0.5], seed=4, output_type="pt").images
    assert torch.equal(edits, pipe.edit(source, "a blue circle", thetas=[0.0, 0.5], seed=4, output_type="pt").images)


def test_edit_at_theta_zero_is_the_ddim_reconstruction(pipe, base_pipe):
    from dataclasses import replace

    from unclip.images import pil_to_tensor, tensor_to_output

    source = _source(5)
    # θ = 0 decodes the image's own z_i from its inverted x_T: pipe.invert then pipe.decode (DDIM, eta 0)
    edit = pipe.edit(
        source, to_text="a blue star", from_text="a red circle", thetas=[0.0], seed=7, output_type="pt"
    ).images
    z_i, x_T = pipe.invert(source)
    settings = replace(pipe.defaults, decoder_steps=pipe.defaults.inversion_steps)
    decoded = pipe.decode(z_i, None, settings, torch.Generator().manual_seed(7), x_T=x_T, eta=0.0, sampler="ddim")
    torch.testing.assert_close(edit, tensor_to_output(decoded, "pt"), atol=1e-6, rtol=0)
    # and that reconstruction is the image (unguided, enough steps, no upsampler)
    back = base_pipe.edit(source, "a blue star", thetas=[0.0], decoder_guidance_scale=1.0, decoder_steps=50,
                          output_type="pt").images * 2 - 1  # fmt: skip
    assert (back[0] - pil_to_tensor([source], 16)[0]).abs().max() < 0.05


def _ar_pipeline(pipe) -> UnCLIPPipeline:
    from dataclasses import replace

    from unclip.models import build_model, model_config

    clip = pipe.clip
    config = replace(model_config("ar_prior", "tiny"), clip_dim=clip.dim, text_width=clip.token_width,
                     text_len=clip.max_text_length)  # fmt: skip
    torch.manual_seed(0)
    prior = build_model("ar_prior", config)
    prior.fit_quantizers(torch.randn(64, clip.dim), torch.randn(64, clip.dim))
    return UnCLIPPipeline(clip, prior, pipe.decoder, pipe.upsamplers, pipe.defaults)


def test_both_priors_satisfy_the_interface_and_round_trip(pipe, tmp_path):
    import json

    from unclip.pipeline import ARPriorStage, DiffusionPriorStage, Prior

    ar = _ar_pipeline(pipe)
    assert isinstance(pipe.prior, DiffusionPriorStage) and isinstance(ar.prior, ARPriorStage)
    for p, kind in ((pipe, "prior"), (ar, "ar_prior")):
        assert isinstance(p.prior, Prior) and p.prior.kind == kind and not p.prior.module.training
        text = p.embed_prompts(["a red circle", "a blue star"])
        z = p.prior.sample(text, p.null_text(), p.defaults, torch.Generator().manual_seed(0), None)
        assert z.shape == (2, p.clip.dim) and torch.isfinite(z).all()
        p.save_pretrained(tmp_path / kind)
        assert json.loads((tmp_path / kind / "model_index.json").read_text())["prior_kind"] == kind
        loaded = UnCLIPPipeline.from_pretrained(tmp_path / kind)
        assert type(loaded.prior) is type(p.prior)
        kw = dict(seed=3, output_type="pt")
        assert torch.equal(loaded("a green cross", **kw).images, p("a green cross", **kw).images)
    assert not (tmp_path / "ar_prior" / "prior" / "diffusion.json").exists()


def test_the_pipeline_samples_through_the_prior_interface(pipe):
    """Any object with kind/module/sample/save is a prior; the pipeline asks nothing else of it."""
    target = torch.randn(1, pipe.clip.dim)

    class Fixed:
        kind = "fixed"
        module = torch.nn.Linear(1, 1)

        def sample(self, text, null_text, settings, generator, progress):
            assert settings.prior_steps == 5 and null_text.pooled.shape[0] == 1
            return target.expand(text.pooled.shape[0], -1)

        def save(self, directory, dtype=None):
            raise NotImplementedError

    custom = UnCLIPPipeline(pipe.clip, Fixed(), pipe.decoder, pipe.upsamplers, pipe.defaults)
    out = custom("a red circle", num_images_per_prompt=2, prior_steps=5, seed=1, return_embeddings=True)
    assert torch.equal(out.image_embeddings, target.expand(2, -1))
    with pytest.raises(TypeError, match="prior must be"):
        UnCLIPPipeline(pipe.clip, torch.nn.Linear(2, 2), pipe.decoder)


def test_keep_mean_settings_reach_the_stages_and_round_trip(pipe, tmp_path, monkeypatch):
    """The default decides the decoder's guidance (text to image and inpainting alike), survives save/load,
    is not used at guidance 1, and a non-boolean value is refused by name."""
    import unclip.stages.decoding as decoding

    seen = []
    original = decoding.guided_denoiser

    def spy(*args, keep_mean=False):
        seen.append(keep_mean)
        return original(*args, keep_mean=keep_mean)

    upsampled = []
    original_upsampler = decoding.sample_upsampler

    def upsampler_spy(*args, keep_mean=False, **kwargs):
        upsampled.append(keep_mean)
        return original_upsampler(*args, keep_mean=keep_mean, **kwargs)

    sources = []
    original_run = decoding.run_sampler

    def run_spy(*args, generator=None, **kwargs):
        sources.append(type(generator).__name__)
        return original_run(*args, generator=generator, **kwargs)

    monkeypatch.setattr(decoding, "run_sampler", run_spy)
    monkeypatch.setattr(decoding, "guided_denoiser", spy)
    monkeypatch.setattr("unclip.pipeline.unclip_pipeline.sample_upsampler", upsampler_spy)
    monkeypatch.setattr(pipe.defaults, "decoder_guidance_keep_mean", True)
    monkeypatch.setattr(pipe.defaults, "upsampler_keep_mean", True)
    monkeypatch.setattr(pipe.defaults, "decoder_zero_mean_noise", True)
    pipe("a red circle", seed=0, decoder_guidance_scale=4.0)
    assert sources == ["ZeroMeanNoise", "Generator"]  # the decoder's, then the upsampler's
    plain_at_one = pipe("a red circle", seed=0, decoder_guidance_scale=1.0, output_type="pt").images
    mask = Image.fromarray(np.pad(np.full((8, 8), 255, np.uint8), 4))
    pipe.inpaint(_source(0), mask, "a red circle", seed=0, decoder_guidance_scale=4.0)
    assert seen == [True, True]  # guidance 1 builds no guided denoiser
    assert upsampled == [True, True]  # text to image (inpainting keeps its known pixels instead)
    loaded = UnCLIPPipeline.from_pretrained(pipe.save_pretrained(tmp_path / "p"))
    assert loaded.defaults.decoder_guidance_keep_mean is True and loaded.defaults.upsampler_keep_mean is True
    assert loaded.defaults.decoder_zero_mean_noise is True
    monkeypatch.setattr(pipe.defaults, "decoder_guidance_keep_mean", False)
    pipe("a red circle", seed=0, decoder_guidance_scale=4.0)
    assert seen == [True, True, False]  # (the numbers: tests/samplers/test_cfg_guidance.py)
    assert torch.equal(plain_at_one, pipe("a red circle", seed=0, decoder_guidance_scale=1.0, output_type="pt").images)
    monkeypatch.setattr(pipe.defaults, "decoder_guidance_keep_mean", "yes")
    with pytest.raises(ValueError, match="decoder_guidance_keep_mean must be true or false, got 'yes'"):
        pipe("a red circle", seed=0)
    monkeypatch.setattr(pipe.defaults, "decoder_guidance_keep_mean", False)
    monkeypatch.setattr(pipe.defaults, "upsampler_keep_mean", 1)
    with pytest.raises(ValueError, match="upsampler_keep_mean must be true or false, got 1"):
        pipe("a red circle", seed=0)
