"""Forward process, posterior, parameterisation conversions and variances against float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from unclip.diffusion import (
    Parameterization,
    eps_from_v,
    eps_from_x0,
    make_schedule,
    model_log_variance,
    prediction_to_x0_eps,
    q_posterior,
    q_sample,
    training_target,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)

BASE = make_schedule("cosine")
G = torch.Generator().manual_seed(0)
X0 = torch.rand(4, 3, 5, 5, generator=G, dtype=torch.float64) * 2 - 1
EPS = torch.randn(4, 3, 5, 5, generator=G, dtype=torch.float64)
T = torch.tensor([0, 1, 400, 999])


def test_q_sample_formula_and_moments() -> None:
    x_t = q_sample(BASE, X0, T, EPS)
    for i, t in enumerate(T.tolist()):
        a = BASE.alphas_cumprod[t].item()
        torch.testing.assert_close(x_t[i], math.sqrt(a) * X0[i] + math.sqrt(1 - a) * EPS[i])
    # Composition of single steps gives the same marginal: q(x_2|x_0) from two q(x_t|x_{t-1}) steps.
    n = 200000
    x0 = torch.full((n, 1), 0.7, dtype=torch.float64)
    b = BASE.betas
    x1 = (1 - b[0]).sqrt() * x0 + b[0].sqrt() * torch.randn(n, 1, generator=G, dtype=torch.float64)
    x2 = (1 - b[1]).sqrt() * x1 + b[1].sqrt() * torch.randn(n, 1, generator=G, dtype=torch.float64)
    direct = q_sample(BASE, x0, 1, torch.randn(n, 1, generator=G, dtype=torch.float64))
    assert abs(x2.mean() - direct.mean()) < 1e-4 and abs(x2.var() / direct.var() - 1) < 0.02


@pytest.mark.parametrize("schedule", [BASE, BASE.respace("25")], ids=["full", "respaced"])
def test_q_posterior_matches_bayes(schedule) -> None:
    """q(x_{t-1}|x_t, x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0), both Gaussian: precision-weighted combination."""
    t = torch.tensor([1, 2, len(schedule) // 2, len(schedule) - 1])
    x_t = q_sample(schedule, X0, t, EPS)
    mean, var, log_var = q_posterior(schedule, X0, x_t, t)
    for i, ti in enumerate(t.tolist()):
        a_prev = schedule.alphas_cumprod[ti - 1].item()
        alpha = schedule.alphas_cumprod[ti].item() / a_prev
        beta = 1 - alpha
        precision = 1 / (1 - a_prev) + alpha / beta
        ref_var = 1 / precision
        ref_mean = ref_var * (math.sqrt(a_prev) * X0[i] / (1 - a_prev) + math.sqrt(alpha) * x_t[i] / beta)
        torch.testing.assert_close(mean[i], ref_mean, rtol=1e-9, atol=1e-9)
        assert var[i].item() == pytest.approx(ref_var, rel=1e-9)
        assert log_var[i].item() == pytest.approx(math.log(ref_var), rel=1e-9)
    # At the first step the posterior is the point mass at x0 (its log-variance is clipped to β̃_1).
    m0, v0, lv0 = q_posterior(schedule, X0, q_sample(schedule, X0, 0, EPS), 0)
    torch.testing.assert_close(m0, X0)
    assert v0 == 0.0 and lv0 == pytest.approx(math.log(schedule.posterior_variance[1].item()))


def test_conversions_round_trip() -> None:
    x_t = q_sample(BASE, X0, T, EPS)
    v = v_from_x0_eps(BASE, X0, T, EPS)
    torch.testing.assert_close(x0_from_v(BASE, x_t, T, v), X0)
    torch.testing.assert_close(eps_from_v(BASE, x_t, T, v), EPS)
    t, xt = T[:3], x_t[:3]  # ᾱ_999 ~ 2e-9 makes eps -> x0 ill-conditioned; check it separately below
    torch.testing.assert_close(x0_from_eps(BASE, xt, t, EPS[:3]), X0[:3])
    torch.testing.assert_close(eps_from_x0(BASE, xt, t, X0[:3]), EPS[:3])
    torch.testing.assert_close(x0_from_eps(BASE, x_t[3:], T[3:], EPS[3:]), X0[3:], rtol=0, atol=1e-6)
    for kind, pred in (("eps", EPS), ("x0", X0), ("v", v)):
        x0, eps = prediction_to_x0_eps(BASE, xt, t, pred[:3], kind)
        torch.testing.assert_close(x0, X0[:3])
        torch.testing.assert_close(eps, EPS[:3])
        assert torch.equal(training_target(BASE, X0, T, EPS, kind), pred)
    # v = √ᾱ eps − √(1−ᾱ) x0, written out.
    a = BASE.alphas_cumprod[400].item()
    torch.testing.assert_close(v[2], math.sqrt(a) * EPS[2] - math.sqrt(1 - a) * X0[2])
    with pytest.raises(ValueError, match="prediction"):
        prediction_to_x0_eps(BASE, xt, t, EPS[:3], "score")


def test_model_log_variance_kinds() -> None:
    sched = BASE.respace("25")
    like = torch.zeros(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 5, 24])
    small = model_log_variance(sched, t, "fixed_small", None, like)
    large = model_log_variance(sched, t, "fixed_large", None, like)
    torch.testing.assert_close(small.flatten(), sched.posterior_log_variance_clipped[t])
    torch.testing.assert_close(large.flatten()[1:], sched.betas[t[1:]].log())
    assert large.flatten()[0] == sched.posterior_variance[1].log()  # improved DDPM: β̃_1 at t = 0
    assert model_log_variance(sched, 5, "fixed_large", None, like).item() == pytest.approx(sched.betas[5].log().item())
    v = torch.stack([torch.full((2, 4, 4), -1.0), torch.full((2, 4, 4), 1.0), torch.zeros(2, 4, 4)]).double()
    lr = model_log_variance(sched, torch.tensor([5, 5, 5]), "learned_range", v, like)
    assert lr[0].unique().item() == pytest.approx(sched.posterior_log_variance_clipped[5].item())
    assert lr[1].unique().item() == pytest.approx(sched.betas[5].log().item())
    mid = 0.5 * (sched.betas[5].log() + sched.posterior_log_variance_clipped[5])
    assert lr[2].unique().item() == pytest.approx(mid.item())
    assert torch.equal(model_log_variance(sched, t, "learned", v, like), v)
    with pytest.raises(ValueError, match="variance channels"):
        model_log_variance(sched, t, "learned_range", None, like)


def test_parameterization_split_and_validation() -> None:
    p = Parameterization("eps", "learned_range")
    x = torch.zeros(2, 3, 4, 4)
    mean, var = p.split(torch.arange(2 * 6 * 16, dtype=torch.float32).reshape(2, 6, 4, 4), x)
    assert mean.shape == var.shape == x.shape and mean[0, 0, 0, 0] == 0 and var[0, 0, 0, 0] == 48
    assert p.out_channels(3) == 6 and Parameterization().out_channels(3) == 3
    emb_mean, emb_var = p.split(torch.zeros(2, 16), torch.zeros(2, 8))
    assert emb_mean.shape == emb_var.shape == (2, 8)
    with pytest.raises(ValueError, match="prediction"):
        Parameterization("score")
    with pytest.raises(ValueError, match="variance"):
        Parameterization("eps", "fixed_medium")
    with pytest.raises(ValueError, match="learned-variance"):
        p.split(torch.zeros(2, 3, 4, 4), x)
