"""RePaint (samplers/repaint.py) against independent references: hand-written jump schedules, DDPM itself when
nothing is known, exactness of the known region, and the closed-form conditional of correlated Gaussian data.

For x0 ~ N(mu, Σ) the ideal denoiser is E[x0|x_t] = mu + sqrt(a) Σ (a Σ + (1-a) I)^-1 (x_t - sqrt(a) mu), and the
distribution of the unknown coordinates given the known ones is N(mu_u + Σ_uk Σ_kk^-1 (x_k - mu_k), ...). Plain
replacement (r = 1) is biased away from that conditional (what RePaint's resampling is for, §4.2); with
jump-back the samples' mean comes to it.
"""

from __future__ import annotations

import pytest
import torch

from unclip.diffusion import Parameterization, make_schedule
from unclip.samplers import Predictor, ddpm_sample
from unclip.samplers.repaint import RePaintOptions, repaint_renoise, repaint_sample, repaint_timesteps

BASE = make_schedule("cosine")


def toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth stand-in network: raw output [like x] (doubled channels for learned variance are cat'ed)."""
    return 0.5 * torch.tanh(x) + t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype) / 2000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- the jump schedule


def test_jump_schedule_matches_hand_written_lists() -> None:
    assert repaint_timesteps(5) == [4, 3, 2, 1, 0, -1]
    assert repaint_timesteps(5, RePaintOptions(jump_length=3, jump_n_sample=1)) == [4, 3, 2, 1, 0, -1]
    assert repaint_timesteps(6, RePaintOptions(2, 2)) == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    assert repaint_timesteps(10, RePaintOptions(3, 3)) == [
        9, 8, 7, 6, 7, 8, 9, 8, 7, 6, 7, 8, 9, 8, 7, 6,  # jump point 6, twice
        5, 4, 3, 4, 5, 6, 5, 4, 3, 4, 5, 6, 5, 4, 3,  # jump point 3, twice
        2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0,  # jump point 0, twice
        -1,
    ]  # fmt: skip
    assert repaint_timesteps(3, RePaintOptions(1, 2)) == [2, 1, 2, 1, 0, 1, 0, -1]  # jump points 1 and 0 (j < 3 - 1)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: repaint_timesteps(0), "num_steps"),
        (lambda: repaint_timesteps(4, RePaintOptions(4, 2)), "jump_length must be less"),
        (lambda: RePaintOptions(jump_length=0), "jump_length"),
        (lambda: RePaintOptions(jump_n_sample=1.5), "jump_n_sample"),
        (lambda: RePaintOptions(jump_n_sample=True), "jump_n_sample"),
    ],
)
def test_bad_schedules_are_named(call, match) -> None:
    with pytest.raises(ValueError, match=match):
        call()


def test_model_sees_the_schedule_and_draws_are_counted() -> None:
    """6 steps, L = 2, r = 2: evaluations at the hand-written step indices, 1 + 9 + 4 noise draws."""
    sampling = BASE.respace("6")
    seen: list[int] = []

    def spy(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(int(t[0]))
        return toy_model(x, t)

    calls = []
    g = gen(4)
    shape = (2, 3, 4, 4)
    repaint_sample(
        Predictor(spy, Parameterization("eps"), clip_x0=1.0), sampling, torch.zeros(shape), torch.zeros(1, 1, 4, 4),
        options=RePaintOptions(2, 2), generator=g, progress=lambda *a: calls.append(a),
    )  # fmt: skip
    indices = [5, 4, 3, 4, 3, 2, 1, 2, 1, 0]
    assert seen == [int(sampling.timesteps[i]) for i in indices]
    assert calls == [("repaint", k, 10) for k in range(1, 11)]
    replay = gen(4)
    for _ in range(1 + 9 + 4):  # x_T, one per noisy evaluation (not the last), one per re-noising
        torch.randn(shape, generator=replay)
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=replay))


def test_renoise_is_the_forward_step() -> None:
    sampling = BASE.respace("10")
    x, z = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    up = repaint_renoise(sampling, x, 4, noise=z)
    a_prev, a = sampling.alphas_cumprod[3], sampling.alphas_cumprod[4]
    assert torch.allclose(up, (a / a_prev).sqrt() * x + (1 - a / a_prev).sqrt() * z)
    with pytest.raises(IndexError):
        repaint_renoise(sampling, x, 0, noise=z)


# ---------------------------------------------------------------- the known and the generated region


@pytest.mark.parametrize("variance", ["fixed_small", "learned_range"])
def test_nothing_known_is_ddpm_bit_for_bit(variance: str) -> None:
    param = Parameterization("v", variance)

    def model(x, t):
        out = toy_model(x, t)
        return torch.cat([out, torch.tanh(x)], dim=1) if param.learned_variance else out

    predictor = Predictor(model, param, clip_x0=1.0)
    sampling = BASE.respace("7")
    known = torch.randn(2, 3, 8, 8, generator=gen(9))
    ours = repaint_sample(predictor, sampling, known, torch.zeros(1, 1, 8, 8), generator=gen(1))
    reference = ddpm_sample(predictor, sampling, shape=known.shape, generator=gen(1))
    assert torch.equal(ours, reference)
    x_T = torch.randn(known.shape, generator=gen(2))
    ours = repaint_sample(predictor, sampling, known, torch.zeros(()), x_T.clone(), generator=gen(3))
    assert torch.equal(ours, ddpm_sample(predictor, sampling, x_T.clone(), generator=gen(3)))


@pytest.mark.parametrize("options", [RePaintOptions(), RePaintOptions(2, 3)])
def test_everything_known_returns_the_known_image(options: RePaintOptions) -> None:
    known = torch.rand(2, 3, 8, 8, generator=gen(5)) * 2 - 1
    predictor = Predictor(toy_model, Parameterization("eps"), clip_x0=1.0)
    out = repaint_sample(predictor, BASE.respace("8"), known, torch.ones(1, 1, 1, 1), options=options, generator=gen(0))
    assert torch.equal(out, known)


def test_known_region_is_exact_and_the_rest_follows_the_model() -> None:
    """Point-mass data at c: the model always predicts x0 = c. The unknown region ends at c, the known one at the
    (different) known image, exactly."""
    c = torch.full((1, 3, 8, 8), 0.3)
    predictor = Predictor(lambda x, t: c.expand_as(x), Parameterization("x0"))
    known = torch.rand(2, 3, 8, 8, generator=gen(6)) * 2 - 1
    keep = (torch.rand(2, 1, 8, 8, generator=gen(7)) < 0.5).float()
    for options in (RePaintOptions(), RePaintOptions(3, 2)):
        out = repaint_sample(predictor, BASE.respace("10"), known, keep, options=options, generator=gen(8))
        inside = keep.expand_as(known).bool()
        assert torch.equal(out[inside], known[inside])
        assert torch.allclose(out[~inside], c.expand_as(known)[~inside], atol=1e-5)


def test_bad_keep_is_named() -> None:
    predictor = Predictor(toy_model, Parameterization("eps"))
    sampling = BASE.respace("3")
    known = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="broadcast"):
        repaint_sample(predictor, sampling, known, torch.zeros(2, 1, 5, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        repaint_sample(predictor, sampling, known, torch.full((1, 1, 4, 4), 2.0))
    with pytest.raises(TypeError, match="tensor"):
        repaint_sample(predictor, sampling, known, [[1.0]])


# ---------------------------------------------------------------- the closed-form conditional of Gaussian data

SIGMA_S = torch.tensor([0.5, 0.4, 0.6, 0.3], dtype=torch.float64)
CORR = torch.full((4, 4), 0.85, dtype=torch.float64).fill_diagonal_(1.0)
SIGMA = SIGMA_S[:, None] * CORR * SIGMA_S[None, :]
MU = torch.tensor([0.1, -0.2, 0.0, 0.3], dtype=torch.float64)
KNOWN, UNKNOWN = [0, 1], [2, 3]
X_KNOWN = torch.tensor([0.8, 0.5], dtype=torch.float64)


def gaussian_denoiser(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] of N(MU, SIGMA) data (x0 prediction); one step for the whole batch."""
    a = float(BASE.alphas_cumprod[int(t[0])])
    gain = a**0.5 * SIGMA @ torch.linalg.inv(a * SIGMA + (1 - a) * torch.eye(4, dtype=torch.float64))
    return MU + (x - a**0.5 * MU) @ gain.T


def conditional_moments() -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of the unknown coordinates given the known ones."""
    s_kk, s_uk = SIGMA[KNOWN][:, KNOWN], SIGMA[UNKNOWN][:, KNOWN]
    mean = MU[UNKNOWN] + s_uk @ torch.linalg.solve(s_kk, X_KNOWN - MU[KNOWN])
    cov = SIGMA[UNKNOWN][:, UNKNOWN] - s_uk @ torch.linalg.solve(s_kk, s_uk.T)
    return mean, cov.diag().sqrt()


def test_jump_back_samples_the_gaussian_conditional() -> None:
    predictor = Predictor(gaussian_denoiser, Parameterization("x0"))
    n = 4000
    known = torch.zeros(n, 4, dtype=torch.float64)
    known[:, KNOWN] = X_KNOWN
    keep = torch.zeros(1, 4, dtype=torch.float64)
    keep[0, KNOWN] = 1
    mean, std = conditional_moments()

    def mean_error(steps: int, options: RePaintOptions) -> float:
        x = repaint_sample(predictor, BASE.respace(str(steps)), known, keep, options=options, generator=gen(0))
        assert torch.equal(x[:, KNOWN], known[:, KNOWN])
        return ((x[:, UNKNOWN].mean(0) - mean) / std).abs().max().item()

    replaced = mean_error(100, RePaintOptions())
    resampled = mean_error(100, RePaintOptions(jump_length=1, jump_n_sample=20))
    assert replaced > 0.8, replaced  # plain replacement misses the conditional by ~1.1 stds
    assert resampled < 0.15, resampled  # measured 0.04 (sampling error of the mean ~0.015)
