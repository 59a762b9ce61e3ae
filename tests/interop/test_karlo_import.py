"""Karlo's release format (Lightning ``.ckpt`` files with per-head packed attention, the CLIP stats file, a
transformers CLIP in ``clip/``, Karlo's yaml configs) loads into the same modules as the diffusers conversion."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace

import pytest
import torch

from unclip.interop.diffusers_import import load_diffusers_pipeline
from unclip.interop.karlo_import import karlo_configs, load_karlo, load_karlo_state, parse_simple_yaml
from unclip.interop.keymap import KARLO_PREFIX, karlo_to_ours, ours_to_karlo
from unclip.interop.random_pipeline import RandomUnCLIPSpec, build_random_diffusers_unclip, save_diffusers_unclip
from unclip.models import model_config

transformers = pytest.importorskip("transformers")

PRIOR_YAML = """model:
  type: prior
  diffusion_sampler: uniform
  hparams:
    text_ctx: 16
    xf_width: 32
    xf_layers: 1
    xf_heads: 2
    xf_final_ln: true
    xf_padding: false
    text_drop: 0.2
    clip_dim: 32
    clip_xf_width: 32

diffusion:
  steps: 1000
  learn_sigma: false
  sigma_small: true
  noise_schedule: squaredcos_cap_v2
  use_kl: false
  predict_xstart: true
  rescale_learned_sigmas: false
  timestep_respacing: ''
"""
# Karlo's decoder_900M_vit_l.yaml with the sizes of the tiny model (Karlo's GroupNorm always has 32 groups)
DECODER_YAML = """model:
  type: t2i-decoder
  diffusion_sampler: uniform
  hparams:
    image_size: 16
    num_channels: 32
    num_res_blocks: 1
    channel_mult: '1,2'
    attention_resolutions: 8
    num_heads: -1
    num_head_channels: 16
    num_heads_upsample: -1
    use_scale_shift_norm: true
    dropout: 0.1
    clip_dim: 32
    clip_emb_mult: 4
    text_ctx: 16
    xf_width: 32
    xf_layers: 0
    xf_heads: 0
    xf_final_ln: false
    xf_padding: false
    resblock_updown: true
    learn_sigma: true
    cache_text_emb: false
    text_drop: 0.3
    clip_emb_type: image
    clip_emb_drop: 0.1
    use_plm: true

diffusion:
  steps: 1000
  learn_sigma: true
  sigma_small: false
  noise_schedule: squaredcos_cap_v2
  use_kl: false
  predict_xstart: false
  rescale_learned_sigmas: true
  timestep_respacing: ''
"""
SR_YAML = """model:
  type: improved_sr_64_256
  diffusion_sampler: uniform
  hparams:
    channels: 32
    depth: 1
    channels_multiple:
      - 1
      - 1
    dropout: 0.0

diffusion:
  steps: 1000
  learn_sigma: false
  sigma_small: true
  noise_schedule: squaredcos_cap_v2
  use_kl: false
  predict_xstart: false
  rescale_learned_sigmas: true
  timestep_respacing: '7'
"""
SPEC = RandomUnCLIPSpec(
    decoder_channels=(32, 64), decoder_groups=32, decoder_head_dim=16, sr_channels=(32, 32), sr_groups=32,
    sr_size=64, seed=7,
)  # fmt: skip


@pytest.fixture(scope="module")
def karlo_case(tmp_path_factory):
    """(diffusers pipeline, our import of it, a Karlo release folder holding the same weights)."""
    root = tmp_path_factory.mktemp("karlo")
    ref = build_random_diffusers_unclip(SPEC)
    via_diffusers = load_diffusers_pipeline(save_diffusers_unclip(ref, root / "diffusers"))
    karlo = root / "release"
    (karlo / "configs").mkdir(parents=True)
    for name, text in [("prior_1B_vit_l", PRIOR_YAML), ("decoder_900M_vit_l", DECODER_YAML)]:
        (karlo / "configs" / f"{name}.yaml").write_text(text)
    (karlo / "improved_sr_64_256_1.4B.yaml").write_text(SR_YAML)
    prior = ours_to_karlo(via_diffusers.prior.model.state_dict(), "prior")
    assert "model.clip_mean" not in prior  # non-persistent in Karlo: the stats live in their own file
    torch.save({"state_dict": prior, "global_step": 10}, karlo / "prior-ckpt-step=01000000-of-01000000.ckpt")
    decoder = ours_to_karlo(via_diffusers.decoder.model.state_dict(), "decoder")
    torch.save({"state_dict": decoder, "epoch": 1}, karlo / "decoder-ckpt-step=01000000-of-01000000.ckpt")
    stage = via_diffusers.upsamplers[0]
    sr = ours_to_karlo(stage.model.state_dict(), "sr_first") | ours_to_karlo(
        stage.last_step_model.state_dict(), "sr_last"
    )
    torch.save({"state_dict": sr}, karlo / "improved-sr-ckpt-step=1.2M.ckpt")
    torch.save((ref.prior.clip_mean.detach()[0], ref.prior.clip_std.detach()[0]), karlo / "ViT-L-14_stats.th")
    # a transformers CLIPModel folder whose text tower is the pipeline's text encoder
    te = ref.text_encoder
    vision = transformers.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
        patch_size=16, projection_dim=32,
    )  # fmt: skip
    config = transformers.CLIPConfig(text_config=te.config.to_dict(), vision_config=vision.to_dict(), projection_dim=32)
    clip = transformers.CLIPModel(config)
    missing, unexpected = clip.load_state_dict(te.state_dict(), strict=False)
    assert not unexpected and not [k for k in missing if k.startswith("text")]
    clip.save_pretrained(karlo / "clip")
    ref.tokenizer.save_pretrained(karlo / "clip")
    return ref, via_diffusers, karlo


def test_karlo_checkpoints_hold_per_head_packed_attention(karlo_case):
    """The Karlo layout built by the inverse map interleaves heads: rows [q_0, k_0, v_0, q_1, ...]."""
    ref, _, karlo = karlo_case
    prior = load_karlo_state(next(karlo.glob("prior*.ckpt")))
    qkv = prior["model.transformer.resblocks.0.attn.c_qkv.weight"]
    attn = ref.prior.transformer_blocks[0].attn1
    d = SPEC.prior_head_dim
    for head in range(SPEC.prior_heads):
        block = qkv[3 * d * head : 3 * d * (head + 1)]
        for i, proj in enumerate((attn.to_q, attn.to_k, attn.to_v)):
            assert torch.equal(block[i * d : (i + 1) * d], proj.weight[head * d : (head + 1) * d])
    decoder = load_karlo_state(next(karlo.glob("decoder*.ckpt")))
    kv = decoder["model.input_blocks.3.1.encoder_kv.weight"][:, :, 0]  # level 1, first block: width 64, 4 heads
    attn = ref.decoder.down_blocks[1].attentions[0]
    d = SPEC.decoder_head_dim
    assert torch.equal(kv[:d], attn.add_k_proj.weight[:d]) and torch.equal(kv[d : 2 * d], attn.add_v_proj.weight[:d])
    assert torch.equal(decoder["model.cf_param"], ref.text_proj.learned_classifier_free_guidance_embeddings)


def test_karlo_folder_loads_the_same_modules(karlo_case):
    _, via_diffusers, karlo = karlo_case
    pipe = load_karlo(karlo)
    pairs = [
        (pipe.prior.model, via_diffusers.prior.model),
        (pipe.decoder.model, via_diffusers.decoder.model),
        (pipe.upsamplers[0].model, via_diffusers.upsamplers[0].model),
        (pipe.upsamplers[0].last_step_model, via_diffusers.upsamplers[0].last_step_model),
    ]
    for ours, theirs in pairs:
        assert ours.config == theirs.config or type(ours).__name__ == "DecoderUNet"
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    text, ref_text = pipe.clip.embed_text(["a red circle"]), via_diffusers.clip.embed_text(["a red circle"])
    torch.testing.assert_close(text.pooled, ref_text.pooled)
    assert not pipe.clip.center_crop and pipe.decoder_uncond == "empty_text"
    d = pipe.defaults
    assert (d.sampler, d.prior_clamp, d.best_of, d.upsampler_steps) == ("ddpm", 10.0, 1, 7)
    assert pipe.decoder.diffusion.variance == "learned_range" and pipe.prior.diffusion.prediction == "x0"
    assert pipe.image_size == 64
    # same modules, same settings -> same images as the diffusers import
    karlo_style = pipe(
        "a red circle", seed=0, prior_steps=3, decoder_steps=3, upsampler_steps=2, output_type="pt"
    ).images
    assert karlo_style.shape == (1, 3, 64, 64)
    pipe.defaults = replace(pipe.defaults, prior_clamp=5.0)
    kwargs = dict(seed=0, prior_steps=3, decoder_steps=3, upsampler_steps=2, sampler="unclip", output_type="pt")
    torch.testing.assert_close(
        pipe("a red circle", **kwargs), via_diffusers("a red circle", **kwargs), atol=1e-5, rtol=0
    )


def test_pickled_checkpoints_need_trust(tmp_path):
    state = {"model.x": torch.ones(2)}
    torch.save({"state_dict": state, "hyper_parameters": argparse.Namespace(lr=1.0)}, tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="trust-pickle"):
        load_karlo_state(tmp_path / "a.ckpt")
    assert torch.equal(load_karlo_state(tmp_path / "a.ckpt", trust_pickle=True)["model.x"], torch.ones(2))
    torch.save({"something": "else"}, tmp_path / "b.ckpt")
    with pytest.raises(ValueError, match="no state dict"):
        load_karlo_state(tmp_path / "b.ckpt")
    with pytest.raises(ValueError, match="no 'model_first_steps.\\*' weights"):
        karlo_to_ours(state, "sr_first")
    assert set(KARLO_PREFIX) == {"prior", "decoder", "sr_first", "sr_last"}


def test_yaml_fallback_parser_matches_pyyaml(monkeypatch):
    yaml = pytest.importorskip("yaml")
    expected = [yaml.safe_load(text) for text in (PRIOR_YAML, DECODER_YAML, SR_YAML)]
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml -> ImportError: the fallback runs
    assert [parse_simple_yaml(text) for text in (PRIOR_YAML, DECODER_YAML, SR_YAML)] == expected
    with pytest.raises(ValueError, match="line 2"):
        parse_simple_yaml("model:\n  hparams: {a: 1}\n")


def test_published_configuration_without_yaml(tmp_path):
    configs = karlo_configs(tmp_path)
    assert configs.prior == model_config("prior", "karlo")
    assert configs.decoder == model_config("decoder", "karlo")
    assert configs.sr == model_config("upsampler", "karlo")
    assert (configs.diffusion["prior"].prediction, configs.diffusion["decoder"].variance) == ("x0", "learned_range")
    with pytest.raises(FileNotFoundError, match="clip"):
        load_karlo(tmp_path)
