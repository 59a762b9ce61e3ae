"""Losses: KL and discretised likelihood against independent references, the hybrid loss's gradient
routing and weighting, float32 VLB under autocast, and NaN-free learned-variance training of a tiny net."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from unclip.diffusion import (
    Parameterization,
    channel_mean_error,
    discretized_gaussian_log_likelihood,
    make_schedule,
    normal_kl,
    q_posterior,
    q_sample,
    sample_timesteps,
    training_losses,
    training_target,
    vlb_terms,
    x0_from_eps,
)

BASE = make_schedule("cosine")


def test_normal_kl_matches_torch_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(50, generator=g, dtype=torch.float64), torch.randn(50, generator=g, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)


def _log_bin_probability(lo: float, hi: float) -> float:
    """log(Φ(hi) - Φ(lo)) in float64 via erfc on the side where it is accurate."""
    if lo > 0:  # upper tail: Φ(hi) - Φ(lo) = Q(lo) - Q(hi), Q(z) = erfc(z/√2)/2
        p = 0.5 * (math.erfc(lo / math.sqrt(2)) - math.erfc(hi / math.sqrt(2)))
    else:
        p = 0.5 * (math.erfc(-hi / math.sqrt(2)) - math.erfc(-lo / math.sqrt(2)))
    return math.log(p)


def test_discretized_log_likelihood_reference_and_normalisation() -> None:
    levels = torch.linspace(-1, 1, 256, dtype=torch.float64)
    for mean, log_scale in ((0.1, -2.0), (-0.97, -4.0), (0.5, 0.3), (0.0, -6.0)):
        means = torch.full_like(levels, mean)
        ll = discretized_gaussian_log_likelihood(levels, means, torch.full_like(levels, log_scale))
        assert ll.exp().sum().item() == pytest.approx(1.0, abs=1e-9)  # a distribution over the 256 levels
        sigma = math.exp(log_scale)
        for k in (0, 1, 100, 127, 128, 200, 254, 255):
            lo = -math.inf if k == 0 else (levels[k].item() - 1 / 255 - mean) / sigma
            hi = math.inf if k == 255 else (levels[k].item() + 1 / 255 - mean) / sigma
            if min(abs(lo), abs(hi)) > 35:  # beyond float64 erfc; the function itself still returns finite values
                assert math.isfinite(ll[k].item()) and ll[k].item() < -600
                continue
            assert ll[k].item() == pytest.approx(_log_bin_probability(lo, hi), rel=1e-6, abs=1e-9)
        # float32 gives the same log-probabilities (no cancellation in the tails).
        ll32 = discretized_gaussian_log_likelihood(
            levels.float(), means.float(), torch.full_like(levels, log_scale).float()
        )
        finite = ll > -80
        torch.testing.assert_close(ll32[finite].double(), ll[finite], rtol=1e-4, atol=1e-4)


def test_vlb_terms_kl_and_decoder_nll() -> None:
    g = torch.Generator().manual_seed(1)
    x0 = (torch.randint(0, 256, (3, 2, 4, 4), generator=g).float() / 127.5 - 1).double()
    t = torch.tensor([0, 10, 700])
    x_t = q_sample(BASE, x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    model_mean = x_t * 0.3 + 0.1
    model_lv = torch.full_like(x0, -5.0)
    vlb = vlb_terms(BASE, x0, x_t, t, model_mean, model_lv)
    assert vlb.dtype == torch.float32
    for i in (1, 2):
        mean, var, _ = q_posterior(BASE, x0[i : i + 1], x_t[i : i + 1], t[i : i + 1])
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(mean, var.sqrt().expand_as(mean)),
            torch.distributions.Normal(model_mean[i : i + 1], math.exp(-2.5)),
        )
        assert vlb[i].item() == pytest.approx(kl.mean().item() / math.log(2), rel=1e-4)
    nll = -discretized_gaussian_log_likelihood(x0[0], model_mean[0], model_lv[0] / 2).mean() / math.log(2)
    assert vlb[0].item() == pytest.approx(nll.item(), rel=1e-5)


class Fixed(nn.Module):
    """A 'network' whose output is a trainable tensor (to inspect gradients) and that records t."""

    def __init__(self, out: torch.Tensor) -> None:
        super().__init__()
        self.out = nn.Parameter(out.clone())
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        self.seen.append(t)
        return self.out * scale


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_mse_targets_and_original_timesteps(prediction) -> None:
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(4, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    sched = BASE.respace("50")
    t = torch.tensor([0, 3, 20, 49])
    net = Fixed(torch.randn(x0.shape, generator=g))
    losses = training_losses(
        net, x0, t, noise, schedule=sched, param=Parameterization(prediction), model_kwargs={"scale": 2.0}
    )
    assert torch.equal(net.seen[0], sched.timesteps[t])  # the network sees original step indices
    a = sched.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    target = {"eps": noise, "x0": x0, "v": a.sqrt() * noise - (1 - a).sqrt() * x0}[prediction]
    expected = ((2.0 * net.out - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(losses["mse"], expected)
    assert torch.equal(losses["loss"], losses["mse"]) and "vlb" not in losses


def test_hybrid_loss_value_gradient_routing_and_weight() -> None:
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, 256, (4, 3, 4, 4), generator=g).float() / 127.5 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 1, 300, 999])
    out = torch.cat([torch.randn(x0.shape, generator=g), torch.rand(x0.shape, generator=g) * 2 - 1], dim=1)
    param = Parameterization("eps", "learned_range")

    net = Fixed(out)
    losses = training_losses(net, x0, t, noise, schedule=BASE, param=param)
    # Independent VLB: posterior mean from the predicted eps, variance interpolated in log space.
    x_t = q_sample(BASE, x0.double(), t, noise.double())
    eps_hat, v = out[:, :3].double(), out[:, 3:].double()
    mean, _, _ = q_posterior(BASE, x0_from_eps(BASE, x_t, t, eps_hat), x_t, t)
    lo = BASE.posterior_log_variance_clipped[t].reshape(-1, 1, 1, 1)
    hi = BASE.betas[t].log().reshape(-1, 1, 1, 1)
    log_var = (v + 1) / 2 * hi + (1 - v) / 2 * lo
    ref = vlb_terms(BASE, x0.double(), x_t, t, mean, log_var)
    torch.testing.assert_close(losses["vlb"], ref, rtol=2e-4, atol=1e-5)
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vlb"])  # λ = 1000/1000

    # VLB trains only the variance channels; MSE only the mean channels.
    losses["vlb"].sum().backward()
    assert net.out.grad[:, :3].abs().max() == 0 and net.out.grad[:, 3:].abs().max() > 0
    net.out.grad = None
    losses = training_losses(net, x0, t, noise, schedule=BASE, param=param)
    losses["mse"].sum().backward()
    assert net.out.grad[:, 3:].abs().max() == 0 and net.out.grad[:, :3].abs().max() > 0

    # RESCALED_MSE weight: len(schedule)/1000 by default, or explicit.
    sched = BASE.respace("100")
    tt = torch.tensor([0, 1, 50, 99])
    lw = training_losses(Fixed(out), x0, tt, noise, schedule=sched, param=param)
    torch.testing.assert_close(lw["loss"], lw["mse"] + 0.1 * lw["vlb"])
    lw = training_losses(Fixed(out), x0, tt, noise, schedule=sched, param=param, lambda_vlb=0.5)
    torch.testing.assert_close(lw["loss"], lw["mse"] + 0.5 * lw["vlb"])


def test_vlb_float32_under_autocast_and_stable_variance() -> None:
    g = torch.Generator().manual_seed(4)
    x0 = torch.rand(4, 3, 4, 4, generator=g) * 2 - 1
    t = torch.tensor([1, 2, 5, 900])
    param = Parameterization("eps", "learned_range")
    conv = nn.Conv2d(3, 6, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = training_losses(lambda x, t: conv(x), x0, t, schedule=BASE, param=param, generator=g)
    assert all(v.dtype == torch.float32 for v in losses.values())

    # Variance channels far out of range: forward stays finite, gradient still points back into range.
    for v_value, sign in ((-3000.0, -1.0), (3000.0, 1.0)):
        out = torch.cat([torch.full_like(x0, 0.05), torch.full_like(x0, v_value)], dim=1)
        net = Fixed(out)
        losses = training_losses(net, x0, t, torch.zeros_like(x0), schedule=BASE, param=param)
        assert torch.isfinite(losses["vlb"]).all()
        losses["loss"].sum().backward()
        grad = net.out.grad[:, 3:]
        assert torch.isfinite(grad).all() and (grad[:3] * sign > 0).all()
    unstable = training_losses(
        Fixed(out.neg()), x0, t, torch.zeros_like(x0), schedule=BASE, param=param, stable_variance=False
    )
    assert not torch.isfinite(unstable["vlb"]).all()  # what the straight-through clamp prevents


class TinyNet(nn.Module):
    """A deliberately small conv net with a timestep embedding and learned-variance output."""

    def __init__(self, ch: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.inp = nn.Conv2d(ch, hidden, 3, padding=1)
        self.temb = nn.Linear(16, hidden)
        self.mid = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.out = nn.Conv2d(hidden, 2 * ch, 3, padding=1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        freqs = torch.exp(-math.log(1000.0) * torch.arange(8, device=x.device) / 8)
        args = t.float()[:, None] * freqs[None]
        emb = self.temb(torch.cat([args.cos(), args.sin()], dim=1))
        h = torch.nn.functional.silu(self.inp(x) + emb[:, :, None, None])
        return self.out(torch.nn.functional.silu(self.mid(h)))


def simple_images(n: int, g: torch.Generator) -> torch.Tensor:
    """Coloured squares on a coloured 8x8 background, quantised to 256 levels in [-1, 1]."""
    bg = torch.rand(n, 3, 1, 1, generator=g).expand(n, 3, 8, 8).clone()
    fg = torch.rand(n, 3, 1, 1, generator=g)
    for i in range(n):
        r, c = torch.randint(0, 5, (2,), generator=g).tolist()
        bg[i, :, r : r + 3, c : c + 3] = fg[i]
    return torch.round(bg * 255) / 127.5 - 1


def test_tiny_model_trains_with_hybrid_loss_without_nans() -> None:
    """250 Adam steps (lr 1e-2) of a 16-channel conv net with learned-range variance: every loss and
    parameter stays finite, and both the MSE and the VLB of a fixed evaluation batch go down."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convs: one thread is fastest and kindest to a shared machine
    try:
        g = torch.Generator().manual_seed(5)
        net = TinyNet()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        param = Parameterization("eps", "learned_range")
        ge = torch.Generator().manual_seed(9)
        x_eval = simple_images(32, ge)
        t_eval = torch.tensor([0, 1, 2, 5, 20, 100, 300, 600] * 4)
        noise_eval = torch.randn(x_eval.shape, generator=ge)

        def evaluate() -> tuple[float, float]:
            with torch.no_grad():
                ev = training_losses(net, x_eval, t_eval, noise_eval, schedule=BASE, param=param)
            assert all(torch.isfinite(v).all() for v in ev.values())
            return ev["mse"].mean().item(), ev["vlb"].mean().item()

        mse0, vlb0 = evaluate()
        for _ in range(250):
            x0 = simple_images(8, g)
            t = sample_timesteps(8, len(BASE), g)
            losses = training_losses(net, x0, t, schedule=BASE, param=param, generator=g)
            loss = losses["loss"].mean()
            assert torch.isfinite(loss) and torch.isfinite(losses["vlb"]).all()
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert all(torch.isfinite(p).all() for p in net.parameters())
        mse1, vlb1 = evaluate()
    finally:
        torch.set_num_threads(threads)
    assert mse1 < 0.8 * mse0, f"MSE did not go down: {mse0:.3f} -> {mse1:.3f}"
    assert vlb1 < vlb0, f"VLB did not go down: {vlb0:.4f} -> {vlb1:.4f}"


@pytest.mark.parametrize("gamma", [1.0, 5.0])
def test_min_snr_weighting_counts_every_parameterisation_as_min_snr_x0_error(gamma: float) -> None:
    """A model whose x0 estimate is off by δ pays min(SNR, γ)·|δ|² (Min-SNR-γ, in x0 terms) whatever it predicts.

    The eps and v outputs equivalent to the erroneous x0 estimate are computed here in float64 from the
    definitions (x_t = √ᾱ x0 + √(1-ᾱ) ε, v = √ᾱ ε − √(1-ᾱ) x0), independently of the library's conversions."""
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([0, 10, 150, 400, 700, 999])
    x0 = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    delta = 0.1 * torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    acp = BASE.alphas_cumprod[t].view(-1, 1, 1, 1)
    a, s = acp.sqrt(), (1 - acp).sqrt()
    x_t = a * x0 + s * noise
    x0_hat = x0 + delta
    eps_hat = (x_t - a * x0_hat) / s
    outputs = {"x0": x0_hat, "eps": eps_hat, "v": a * eps_hat - s * x0_hat}
    snr = (acp / (1 - acp)).view(-1)
    expected = snr.clamp(max=gamma) * (delta**2).mean(dim=(1, 2, 3))
    for prediction, out in outputs.items():
        losses = training_losses(
            lambda x, tt, out=out: out, x0, t, noise, schedule=BASE, param=Parameterization(prediction), snr_gamma=gamma
        )
        torch.testing.assert_close(losses["loss"].double(), expected, rtol=1e-4, atol=1e-12)
    with pytest.raises(ValueError, match="gamma"):
        training_losses(lambda x, tt: x, x0, t, noise, schedule=BASE, param=Parameterization("v"), snr_gamma=0.0)


def test_channel_mean_weight_adds_the_global_colour_error_in_closed_form() -> None:
    """An error of c_k per channel plus a zero-mean pattern: MSE = mean(c^2) + pattern energy, the extra term
    is w * mean(c^2) exactly; a pattern with zero spatial mean adds nothing to it."""
    torch.manual_seed(0)
    x0 = torch.rand(3, 3, 4, 4, dtype=torch.float64) * 2 - 1
    noise = torch.randn_like(x0)
    t = torch.tensor([5, 400, 990])
    target = training_target(BASE, x0, t, noise, "v")
    offset = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64).reshape(1, 3, 1, 1)
    checker = (torch.arange(4).reshape(4, 1) + torch.arange(4)).remainder(2).to(torch.float64) * 2 - 1  # mean 0
    error = offset + 0.3 * checker
    losses = training_losses(
        lambda x, tt: target + error, x0, t, noise, schedule=BASE, param=Parameterization("v"), channel_mean_weight=4.0
    )
    dc = offset.pow(2).mean()
    torch.testing.assert_close(losses["channel_mean_mse"].double(), dc.expand(3), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(losses["mse"].double(), (dc + 0.09).expand(3), rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(losses["loss"].double(), (dc + 0.09 + 4.0 * dc).expand(3), rtol=1e-6, atol=1e-12)
    pattern_only = training_losses(
        lambda x, tt: target + 0.3 * checker, x0, t, noise, schedule=BASE, param=Parameterization("v"),
        channel_mean_weight=4.0,
    )  # fmt: skip
    assert float(pattern_only["channel_mean_mse"].abs().max()) < 1e-12
    assert channel_mean_error(error.expand(2, -1, -1, -1)).shape == (2,)


def test_channel_mean_weight_refuses_bad_values_and_non_images() -> None:
    x0 = torch.zeros(2, 3, 4, 4)
    t = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="channel_mean_weight must be >= 0, got -1"):
        training_losses(lambda x, tt: x, x0, t, schedule=BASE, param=Parameterization("v"), channel_mean_weight=-1.0)
    with pytest.raises(ValueError, match=r"needs images \[B, C, H, W\], got x0 of shape \(2, 8\)"):
        training_losses(
            lambda x, tt: x, torch.zeros(2, 8), t, schedule=BASE, param=Parameterization("v"), channel_mean_weight=1.0
        )
