"""Every sampler against the closed-form ideal denoiser of Gaussian data.

For x0 ~ N(mu, diag(s^2)) and x_t = sqrt(a) x0 + sqrt(1-a) eps, the posterior is Gaussian:
E[x0|x_t] = mu + sqrt(a) s^2/(a s^2 + 1 - a) (x_t - sqrt(a) mu), Var[x0|x_t] = s^2 (1-a)/(a s^2 + 1 - a).
Plugged in as the model, a correct sampler must reproduce mu and s (up to its discretisation bias, kept
small by the step counts below). With the ideal *variance* as well (Var[x_{t-1}|x_t] = β̃ + c1² Var[x0|x_t]),
ancestral sampling is exact for any number of steps.
"""

from __future__ import annotations

import math

import pytest
import torch

from unclip.diffusion import NoiseSchedule, Parameterization, make_schedule
from unclip.samplers import (
    Predictor,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    dpm_solver_timesteps,
    run_sampler,
    unclip_sample,
)

BASE = make_schedule("cosine")
D = 6
MU = torch.linspace(-0.6, 0.6, D, dtype=torch.float64)
S = torch.linspace(0.25, 0.8, D, dtype=torch.float64)
B = 10000


def posterior_x0(x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(E[x0|x_t], Var[x0|x_t], ᾱ_t) for the Gaussian data at original steps t [B]."""
    a = BASE.alphas_cumprod[t].to(x).unsqueeze(1)
    denom = a * S**2 + 1 - a
    mean = MU + a.sqrt() * S**2 / denom * (x - a.sqrt() * MU)
    return mean, S**2 * (1 - a) / denom, a


def ideal_denoiser(prediction: str, variance: str = "fixed_small", sampling: NoiseSchedule | None = None):
    """The exact model: mean channels for ``prediction``; optimal variance channels on ``sampling``'s steps."""

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        m, var_x0, a = posterior_x0(x, t)
        eps = (x - a.sqrt() * m) / (1 - a).sqrt()
        out = {"x0": m, "eps": eps, "v": a.sqrt() * eps - (1 - a).sqrt() * m}[prediction]
        if variance == "fixed_small":
            return out
        # Respaced step of each original t, and the exact reverse variance of that step.
        i = torch.searchsorted(sampling.timesteps, t)
        coef1 = sampling.posterior_mean_coef1[i].to(x).unsqueeze(1)
        log_var = (sampling.posterior_variance[i].to(x).unsqueeze(1) + coef1**2 * var_x0).log()
        if variance == "learned_range":
            lo = sampling.posterior_variance[i].clamp(min=1e-30).log().to(x).unsqueeze(1)
            hi = sampling.betas[i].log().to(x).unsqueeze(1)
            log_var = 2 * (log_var - lo) / (hi - lo) - 1  # v such that f log β + (1-f) log β̃ = log_var
        return torch.cat([out, log_var], dim=1)

    return denoise


def check_moments(x: torch.Tensor, std_tol: float) -> None:
    assert x.shape == (B, D) and x.dtype == torch.float64
    assert torch.isfinite(x).all()
    mean_err = ((x.mean(0) - MU) / S).abs().max().item()
    std_err = (x.std(0) / S - 1).abs().max().item()
    assert mean_err < 0.05, f"mean off by {mean_err:.3f} data stds"
    assert std_err < std_tol, f"std off by {std_err:.3f} (relative)"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("prediction,variance", [("eps", "learned"), ("v", "learned_range"), ("x0", "learned_range")])
def test_ddpm_exact_with_ideal_variance(prediction: str, variance: str) -> None:
    sampling = BASE.respace("10")
    param = Parameterization(prediction, variance)
    predictor = Predictor(ideal_denoiser(prediction, variance, sampling), param)
    x = ddpm_sample(predictor, sampling, shape=(B, D), generator=gen(1), dtype=torch.float64)
    check_moments(x, std_tol=0.035)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_fixed_small(prediction: str) -> None:
    predictor = Predictor(ideal_denoiser(prediction), Parameterization(prediction, "fixed_small"))
    x = ddpm_sample(predictor, BASE.respace("200"), shape=(B, D), generator=gen(2), dtype=torch.float64)
    check_moments(x, std_tol=0.045)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim(eta: float) -> None:
    predictor = Predictor(ideal_denoiser("eps"), Parameterization("eps"))
    x = ddim_sample(predictor, BASE.respace("200"), eta=eta, shape=(B, D), generator=gen(3), dtype=torch.float64)
    check_moments(x, std_tol=0.045)


def test_dpm_solver_pp() -> None:
    predictor = Predictor(ideal_denoiser("v"), Parameterization("v"))
    sampling = BASE.respace(dpm_solver_timesteps(1000, 50))
    x = dpm_solver_sample(predictor, sampling, shape=(B, D), generator=gen(4), dtype=torch.float64)
    check_moments(x, std_tol=0.04)


def test_unclip_exact_with_ideal_learned_range() -> None:
    sampling = BASE.respace("10")  # the unclip sampler's own timesteps for n = 10
    param = Parameterization("eps", "learned_range")
    predictor = Predictor(ideal_denoiser("eps", "learned_range", sampling), param)
    x = unclip_sample(predictor, BASE, 10, shape=(B, D), generator=gen(5), dtype=torch.float64)
    check_moments(x, std_tol=0.035)


def test_unclip_fixed_small_log() -> None:
    predictor = Predictor(ideal_denoiser("x0"), Parameterization("x0"), clip_x0=5.0)
    x = unclip_sample(predictor, BASE, 200, shape=(B, D), generator=gen(6), dtype=torch.float64)
    check_moments(x, std_tol=0.045)


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm++", "unclip"])
def test_run_sampler_float32(name: str) -> None:
    """The dispatcher, in float32, with moderate step counts: moments within a looser tolerance."""
    predictor = Predictor(ideal_denoiser("eps"), Parameterization("eps"))
    steps = 50 if name == "dpm++" else 200
    x = run_sampler(name, predictor, BASE, steps, shape=(B, D), generator=gen(7), eta=0.0)
    assert x.dtype == torch.float32
    check_moments(x.double(), std_tol=0.05)


def test_ddim_inversion_round_trip_and_gaussianity() -> None:
    """x0 -> x_T -> x0 with eta=0 DDIM: small round-trip error; the inverted data look like N(0, I)."""
    predictor = Predictor(ideal_denoiser("eps"), Parameterization("eps"))
    sampling = BASE.respace("100")
    x0 = MU + S * torch.randn(B, D, generator=gen(8), dtype=torch.float64)
    x_T = ddim_invert(predictor, sampling, x0)
    assert x_T.mean(0).abs().max() < 0.05
    assert (x_T.std(0) - 1).abs().max() < 0.05
    back = ddim_sample(predictor, sampling, x_T, eta=0.0)
    rel = ((back - x0).norm() / x0.norm()).item()
    assert rel < 0.04, f"round-trip relative error {rel:.2e}"  # first order: ~2.3e-2 at 100 steps, ~1/n
    # The noise-free walk is the same path both ways: x_T is a deterministic function of x0.
    assert torch.equal(ddim_invert(predictor, sampling, x0), x_T)


def test_ddim_inversion_error_shrinks_with_steps() -> None:
    predictor = Predictor(ideal_denoiser("x0"), Parameterization("x0"))
    x0 = MU + S * torch.randn(256, D, generator=gen(9), dtype=torch.float64)
    errors = []
    for n in (25, 100, 400):
        sampling = BASE.respace(str(n))
        back = ddim_sample(predictor, sampling, ddim_invert(predictor, sampling, x0), eta=0.0)
        errors.append(((back - x0).norm() / x0.norm()).item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.3 * errors[0] and math.isfinite(errors[0])
