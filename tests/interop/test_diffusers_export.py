"""Our pipelines exported to diffusers' layout load in diffusers 0.42 and produce the same images."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unclip.diffusion.stage_config import DiffusionConfig
from unclip.interop.diffusers_export import TEXT_PROJ_CLASS, export_diffusers
from unclip.interop.diffusers_import import diffusers_variation, load_diffusers_pipeline
from unclip.models import build_model
from unclip.models.decoder_unet import DecoderConfig
from unclip.models.prior import PriorConfig
from unclip.models.upsampler_unet import UpsamplerConfig
from unclip.pipeline import GenerationDefaults, Stage, UnCLIPPipeline
from unclip.pipeline.builder import build_pipeline

diffusers = pytest.importorskip("diffusers")

PRIOR_DIFFUSION = DiffusionConfig(prediction="x0", variance="fixed_small")  # what UnCLIPScheduler can express
DECODER_DIFFUSION = DiffusionConfig(prediction="eps", variance="learned_range")
UPSAMPLER_DIFFUSION = DiffusionConfig(prediction="eps", variance="fixed_small")


def _load_diffusers(directory, variation=False):
    cls = diffusers.UnCLIPImageVariationPipeline if variation else diffusers.UnCLIPPipeline
    pipe = cls.from_pretrained(str(directory))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run_both(ours: UnCLIPPipeline, theirs, steps=(4, 4, 3), seed=0):
    mine = ours(
        ["a red circle", "blue"], seed=seed, prior_steps=steps[0], decoder_steps=steps[1],
        upsampler_steps=steps[2], sampler="unclip", best_of=1, output_type="np",
    ).images  # fmt: skip
    ref = theirs(
        ["a red circle", "blue"], generator=torch.Generator().manual_seed(seed),
        prior_num_inference_steps=steps[0], decoder_num_inference_steps=steps[1],
        super_res_num_inference_steps=steps[2], output_type="np",
    ).images  # fmt: skip
    assert ref.std() > 0.05
    return mine, ref


def test_imported_pipeline_round_trips_through_export(ours_t2i, ref_t2i, tmp_path):
    out = export_diffusers(ours_t2i, tmp_path / "exported")
    index = json.loads((out / "model_index.json").read_text())
    assert index["text_proj"] == TEXT_PROJ_CLASS and index["_class_name"] == "UnCLIPPipeline"
    theirs = _load_diffusers(out)
    for name in ("prior", "decoder", "text_proj", "super_res_first", "super_res_last", "text_encoder"):
        a, b = getattr(theirs, name).state_dict(), getattr(ref_t2i, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    mine, ref = _run_both(ours_t2i, theirs)
    assert np.abs(mine - ref).max() <= 1e-3


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every zero-initialised parameter (output convs, proj_out, null embedding) random values."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.abs().max() == 0:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def _from_scratch(clip, decoder_uncond: str) -> UnCLIPPipeline:
    """A pipeline of our own untrained networks (as one trained from scratch would be), with a transformers CLIP."""
    torch.manual_seed(0)
    prior = _randomize(build_model("prior", PriorConfig(32, 32, 16, width=48, layers=2, heads=3)), 1)
    prior.set_clip_stats(torch.randn(32) * 0.1, torch.rand(32) + 0.5)
    decoder_cfg = DecoderConfig(
        image_size=16, model_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_ds=(2,), head_channels=8,
        dropout=0.0, norm_groups=8, clip_dim=32, text_width=32, context_width=24,
    )  # fmt: skip
    decoder = _randomize(build_model("decoder", decoder_cfg), 2)
    up_cfg = UpsamplerConfig(image_size=32, low_res_size=16, model_channels=8, channel_mult=(1, 2), num_res_blocks=1,
                             norm_groups=4)  # fmt: skip
    upsampler = _randomize(build_model("upsampler", up_cfg), 3)
    defaults = GenerationDefaults(sampler="unclip", best_of=1, prior_clamp=10.0)
    return UnCLIPPipeline(
        clip,
        Stage(prior, PRIOR_DIFFUSION),
        Stage(decoder, DECODER_DIFFUSION),
        [Stage(upsampler, UPSAMPLER_DIFFUSION)],
        defaults,
        decoder_uncond=decoder_uncond,
    )


def test_pipeline_of_our_own_networks_exports(ours_t2i, tmp_path):
    ours = _from_scratch(ours_t2i.clip, "empty_text")
    out = export_diffusers(ours, tmp_path / "scratch")
    scheduler = json.loads((out / "prior_scheduler" / "scheduler_config.json").read_text())
    assert scheduler["clip_sample_range"] == 10.0 and scheduler["prediction_type"] == "sample"
    theirs = _load_diffusers(out)
    assert torch.equal(theirs.super_res_first.conv_out.weight, theirs.super_res_last.conv_out.weight)
    mine, ref = _run_both(ours, theirs, seed=1)
    assert np.abs(mine - ref).max() <= 1e-3

    masked = _from_scratch(ours_t2i.clip, "masked")
    with pytest.warns(UserWarning, match="masked caption"):
        export_diffusers(masked, tmp_path / "masked")
    mine, ref = _run_both(masked, _load_diffusers(tmp_path / "masked"), seed=1)
    assert np.abs(mine - ref).max() > 1e-2  # diffusers guides against "", ours against the masked caption


def test_variation_export(variation_dir, tmp_path):
    ours = load_diffusers_pipeline(variation_dir)
    out = export_diffusers(ours, tmp_path / "var", variation=True)
    theirs = _load_diffusers(out, variation=True)
    pixels = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    kwargs = dict(num_images_per_prompt=2, output_type="np")
    ref = theirs(pixels, generator=torch.Generator().manual_seed(0), decoder_num_inference_steps=5,
                 super_res_num_inference_steps=3, **kwargs).images  # fmt: skip
    mine = diffusers_variation(ours, pixels, generator=torch.Generator().manual_seed(0), decoder_steps=5,
                               upsampler_steps=3, **kwargs)  # fmt: skip
    assert np.abs(mine - ref).max() <= 1e-3


def test_pipelines_that_do_not_fit_are_refused(ours_t2i, tmp_path):
    with pytest.raises(ValueError, match="transformers CLIP"):
        export_diffusers(build_pipeline("tiny"), tmp_path / "a")
    two = _from_scratch(ours_t2i.clip, "empty_text")
    two.upsamplers = []
    with pytest.raises(ValueError, match="exactly one super-resolution"):
        export_diffusers(two, tmp_path / "b")
    with pytest.raises(ValueError, match="image encoder"):
        export_diffusers(ours_t2i, tmp_path / "c", variation=True)
    v_pred = _from_scratch(ours_t2i.clip, "empty_text")
    v_pred.decoder.diffusion = DiffusionConfig(prediction="v", variance="learned_range")
    with pytest.raises(ValueError, match="eps/x0 prediction"):
        export_diffusers(v_pred, tmp_path / "d")
