"""Classifier-free guidance wrapper and the Predictor's x0 processing."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

from unclip.diffusion import Parameterization, make_schedule
from unclip.samplers import (
    Predictor,
    classifier_free_guidance,
    concat_conditioning,
    ddpm_sample,
    dynamic_threshold,
    guided_denoiser,
)

BASE = make_schedule("cosine")


class Recorder:
    """A conditional pseudo-network that records its calls: out depends on x, t and the embedding."""

    def __init__(self, learned_variance: bool) -> None:
        self.learned_variance = learned_variance
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, *, embed: torch.Tensor, flag: str = "x") -> torch.Tensor:
        assert flag == "on"
        self.calls.append((x.clone(), t.clone(), embed.clone()))
        shift = embed.reshape(embed.shape[0], -1, *([1] * (x.ndim - 2)))[:, : x.shape[1]]
        mean = torch.tanh(x) * (1 + t.reshape(-1, *([1] * (x.ndim - 1))) / 1000) + shift
        if not self.learned_variance:
            return mean
        return torch.cat([mean, torch.sin(x + shift)], dim=1)


@pytest.mark.parametrize(
    "shape,param",
    [
        ((3, 2, 4, 4), Parameterization("eps", "learned_range")),
        ((3, 2), Parameterization("x0", "fixed_small")),
    ],
)
@pytest.mark.parametrize("scale", [0.0, 4.0, 8.0])
def test_cfg_one_forward_formula_and_variance(shape, param, scale) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    t = torch.tensor([5, 500, 999])
    cond, uncond = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    net = Recorder(param.learned_variance)
    guided = classifier_free_guidance(
        net, scale, cond={"embed": cond, "flag": "on"}, uncond={"embed": uncond, "flag": "on"}, param=param
    )
    out = guided(x, t)

    # One forward on the doubled batch [uncond; cond].
    assert len(net.calls) == 1
    x2, t2, e2 = net.calls[0]
    assert torch.equal(x2, torch.cat([x, x])) and torch.equal(t2, torch.cat([t, t]))
    assert torch.equal(e2, torch.cat([uncond, cond]))

    # Independent reference: two separate evaluations.
    ref_net = Recorder(param.learned_variance)
    u = ref_net(x, t, embed=uncond, flag="on")
    c = ref_net(x, t, embed=cond, flag="on")
    if param.learned_variance:
        u_mean, _ = u.chunk(2, dim=1)
        c_mean, c_var = c.chunk(2, dim=1)
        expected = torch.cat([u_mean + scale * (c_mean - u_mean), c_var], dim=1)
    else:
        expected = u + scale * (c - u)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_cfg_scale_one_is_conditional_only() -> None:
    x, t = torch.randn(2, 3), torch.tensor([1, 2])
    net = Recorder(False)
    out = classifier_free_guidance(
        net,
        1.0,
        cond={"embed": torch.ones(2, 3), "flag": "on"},
        uncond={"embed": torch.zeros(2, 3), "flag": "on"},
        param=Parameterization(),
    )(x, t)
    assert len(net.calls) == 1 and net.calls[0][0].shape[0] == 2
    torch.testing.assert_close(out, Recorder(False)(x, t, embed=torch.ones(2, 3), flag="on"))


def test_cfg_in_a_sampler_calls_model_once_per_step() -> None:
    net = Recorder(True)
    param = Parameterization("eps", "learned_range")
    embed = torch.randn(2, 3)
    guided = classifier_free_guidance(
        net, 3.0, cond={"embed": embed, "flag": "on"}, uncond={"embed": -embed, "flag": "on"}, param=param
    )
    out = ddpm_sample(
        Predictor(guided, param, clip_x0=1.0),
        BASE.respace("5"),
        shape=(2, 3, 4, 4),
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == (2, 3, 4, 4) and torch.isfinite(out).all()
    assert len(net.calls) == 5 and all(c[0].shape[0] == 4 for c in net.calls)
    assert [int(c[1][0]) for c in net.calls] == BASE.respace("5").timesteps.flip(0).tolist()


def test_guided_denoiser_custom_doubling_and_errors() -> None:
    seen = {}

    def doubled(x, t):
        seen["batch"] = x.shape[0]
        return torch.cat([torch.zeros_like(x[:2]), torch.ones_like(x[2:])])

    out = guided_denoiser(doubled, 2.5, Parameterization())(torch.randn(2, 4), torch.tensor([3, 3]))
    assert seen["batch"] == 4 and torch.allclose(out, torch.full((2, 4), 2.5))
    with pytest.raises(ValueError, match="guidance_scale"):
        guided_denoiser(doubled, -1.0, Parameterization())
    with pytest.raises(ValueError, match="batch"):
        guided_denoiser(lambda x, t: x[:1], 2.0, Parameterization())(torch.randn(2, 4), torch.tensor([3, 3]))


class Emb(NamedTuple):
    pooled: torch.Tensor
    mask: torch.Tensor | None


def test_concat_conditioning_structures() -> None:
    u = {"text": Emb(torch.zeros(2, 3), torch.zeros(2, 5, dtype=torch.bool)), "k": None, "n": 7}
    c = {"text": Emb(torch.ones(2, 3), torch.ones(2, 5, dtype=torch.bool)), "k": None, "n": 7}
    both = concat_conditioning(u, c)
    assert isinstance(both["text"], Emb) and both["k"] is None and both["n"] == 7
    assert torch.equal(both["text"].pooled, torch.cat([torch.zeros(2, 3), torch.ones(2, 3)]))
    assert both["text"].mask[:2].logical_not().all() and both["text"].mask[2:].all()
    with pytest.raises(ValueError, match="keys"):
        concat_conditioning({"a": torch.zeros(1)}, {"b": torch.zeros(1)})
    with pytest.raises(ValueError, match="beyond the batch"):
        concat_conditioning(torch.zeros(1, 2), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="must match"):
        concat_conditioning({"n": 1}, {"n": 2})


def test_predictor_clamp_keeps_eps_consistent_and_sees_original_timesteps() -> None:
    sampling = BASE.respace("10")
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return 3.0 * torch.ones_like(x)  # eps = 3 -> |x0| large at high noise

    pred = Predictor(model, Parameterization("eps"), clip_x0=1.0)
    x = torch.randn(4, 3, dtype=torch.float64)
    p = pred(x, sampling, 7)
    assert seen[-1].tolist() == [int(sampling.timesteps[7])] * 4 and seen[-1].dtype == torch.long
    assert p.x0.abs().max() <= 1.0 and (p.x0.abs() == 1.0).any()
    a = sampling.alphas_cumprod[7].item()
    torch.testing.assert_close(a**0.5 * p.x0 + (1 - a) ** 0.5 * p.eps, x)  # x_t = √ᾱ x0 + √(1-ᾱ) eps
    assert p.var_values is None
    with pytest.raises(ValueError, match="output shape"):
        Predictor(lambda x, t: x[:, :2], Parameterization("eps"))(x, sampling, 3)
    with pytest.raises(ValueError, match="learned-variance"):
        Predictor(lambda x, t: x, Parameterization("eps", "learned_range"))(x, sampling, 3)
    with pytest.raises(ValueError, match="either"):
        Predictor(model, clip_x0=1.0, threshold=(0.9, 1.0))


def test_dynamic_threshold_matches_reference() -> None:
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64) * torch.tensor([0.5, 2.0, 9.0]).reshape(3, 1, 1, 1)
    out = dynamic_threshold(x0, ratio=0.9, max_value=4.0)
    for b in range(3):
        flat = x0[b].flatten().abs().sort().values
        # numpy-style linear-interpolated quantile, written out
        pos = 0.9 * (flat.numel() - 1)
        lo = int(pos)
        q = flat[lo] + (pos - lo) * (flat[lo + 1] - flat[lo])
        s = min(max(q.item(), 1.0), 4.0)
        torch.testing.assert_close(out[b], x0[b].clamp(-s, s) / s)
    assert out[0].abs().max() <= 1.0  # s = 1 for the small sample: plain clamp


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_keep_mean_guidance_keeps_the_conditional_x0_mean_in_every_parameterisation(prediction: str) -> None:
    """Float64: the guided x0's per-channel spatial mean is the conditional x0's, its zero-mean part is plain
    CFG's; scale 1 is the conditional branch."""
    from unclip.diffusion import prediction_to_x0_eps
    from unclip.samplers import guide

    gen = torch.Generator().manual_seed(3)
    x_t, u, c = (torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([300, 800])

    def x0_of(raw: torch.Tensor) -> torch.Tensor:
        return prediction_to_x0_eps(BASE, x_t, t, raw, prediction)[0]

    kept = guide(u, c, 4.0, keep_mean=True)
    plain = guide(u, c, 4.0)
    torch.testing.assert_close(plain, u + 4.0 * (c - u))
    torch.testing.assert_close(x0_of(kept).mean(dim=(2, 3)), x0_of(c).mean(dim=(2, 3)))
    assert (x0_of(plain).mean(dim=(2, 3)) - x0_of(c).mean(dim=(2, 3))).abs().max() > 0.1
    centred = lambda a: a - a.mean(dim=(2, 3), keepdim=True)  # noqa: E731
    torch.testing.assert_close(centred(x0_of(kept)), centred(x0_of(plain)))
    torch.testing.assert_close(guide(u, c, 1.0, keep_mean=True), c)


def test_keep_mean_through_the_wrapper_and_its_errors() -> None:
    """The doubled-batch wrapper applies it to the mean channels only (variance from the conditional half)."""
    from unclip.samplers import guide

    gen = torch.Generator().manual_seed(4)
    raw = torch.randn(4, 6, 5, 5, generator=gen)
    param = Parameterization("v", "learned_range")
    out = guided_denoiser(lambda x, t: raw, 3.0, param, keep_mean=True)(torch.zeros(2, 3, 5, 5), torch.zeros(2))
    (u_mean, _), (c_mean, c_var) = raw[:2].chunk(2, dim=1), raw[2:].chunk(2, dim=1)
    torch.testing.assert_close(out, torch.cat([guide(u_mean, c_mean, 3.0, keep_mean=True), c_var], dim=1))
    with pytest.raises(ValueError, match=r"keep_mean guidance needs images \[B, C, H, W\], got shape \(2, 8\)"):
        guide(torch.zeros(2, 8), torch.zeros(2, 8), 2.0, keep_mean=True)


def test_zero_mean_noise_is_the_generators_draws_without_their_spatial_mean() -> None:
    from unclip.samplers import ZeroMeanNoise, randn

    like = torch.empty(0, dtype=torch.float64)
    plain = [randn((2, 3, 6, 6), torch.Generator().manual_seed(7), like) for _ in range(1)][0]
    source = ZeroMeanNoise(torch.Generator().manual_seed(7))
    drawn = randn((2, 3, 6, 6), source, like)
    torch.testing.assert_close(drawn, plain - plain.mean(dim=(2, 3), keepdim=True))
    assert float(drawn.mean(dim=(2, 3)).abs().max()) < 1e-12
    assert ZeroMeanNoise(source).generator is source.generator
    with pytest.raises(ValueError, match=r"draws images \[B, C, H, W\], got shape \(2, 8\)"):
        randn((2, 8), source, like)


def test_a_pixelwise_linear_sampler_keeps_zero_mean_noise_out_of_the_image_mean() -> None:
    """With a denoiser that acts on each pixel alike (x0 = x_t / 2), every DDPM sample is a linear combination
    of the draws, so its spatial mean is 0 exactly when every draw has none."""
    from unclip.samplers import ZeroMeanNoise

    predictor = Predictor(lambda x, t: 0.5 * x, Parameterization("x0", "fixed_small"))
    schedule = BASE.respace("10")
    kept = ddpm_sample(
        predictor, schedule, shape=(2, 3, 8, 8), generator=ZeroMeanNoise(torch.Generator().manual_seed(0))
    )
    plain = ddpm_sample(predictor, schedule, shape=(2, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    assert float(kept.mean(dim=(2, 3)).abs().max()) < 1e-6 < float(plain.mean(dim=(2, 3)).abs().max())
