"""Key maps: ours <-> diffusers and ours <-> Karlo are exact inverses and cover every tensor."""

from __future__ import annotations

import pytest
import torch

from unclip.interop.keymap import (
    decoder_links,
    diffusers_to_ours,
    karlo_to_ours,
    ours_to_diffusers,
    ours_to_karlo,
    prior_links,
    upsampler_links,
)
from unclip.models import build_model
from unclip.models.decoder_unet import DecoderConfig


def _random_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "kind, config, links",
    [
        ("prior", "tiny", prior_links),
        (
            "decoder",
            DecoderConfig(
                image_size=16,
                model_channels=16,
                channel_mult=(1, 2, 2),
                num_res_blocks=2,
                attention_ds=(2, 4),
                head_channels=8,
                norm_groups=8,
                clip_dim=12,
                text_width=12,
                context_width=24,
            ),
            decoder_links,
        ),  # fmt: skip
        ("upsampler", "tiny", upsampler_links),
    ],
)
def test_diffusers_map_round_trips(kind, config, links):
    model = build_model(kind, config)
    state = _random_state(model)
    their = ours_to_diffusers(state, links(model.config))
    assert all(not k.startswith(("input_blocks", "output_blocks", "middle_block")) for k in their)
    back = diffusers_to_ours(their, links(model.config))
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    model.load_state_dict(back, strict=True)
    with pytest.raises(ValueError, match="missing"):
        diffusers_to_ours({k: v for k, v in list(their.items())[1:]}, links(model.config), "x")
    with pytest.raises(ValueError, match="unexpected"):
        ours_to_diffusers({**state, "extra": torch.zeros(1)}, links(model.config))


def test_karlo_map_is_a_prefix_change():
    decoder = build_model("decoder", "tiny")
    state = _random_state(decoder)
    karlo = ours_to_karlo(state, "decoder")
    assert "model.cf_param" in karlo and all(k.startswith("model.") for k in karlo)
    assert karlo_to_ours(karlo, "decoder").keys() == state.keys()
    assert torch.equal(karlo_to_ours(karlo, "decoder")["null_image_embedding"], state["null_image_embedding"])
    prior = _random_state(build_model("prior", "tiny"))
    assert "model.clip_mean" not in ours_to_karlo(prior, "prior")
    with pytest.raises(ValueError, match="unknown Karlo part"):
        ours_to_karlo(prior, "vae")
