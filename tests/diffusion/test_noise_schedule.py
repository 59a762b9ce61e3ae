"""Schedules and respacing against closed forms, guided-diffusion semantics and diffusers' tables."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from unclip.diffusion import NoiseSchedule, cosine_betas, extract, linear_betas, make_schedule, space_timesteps


def test_cosine_alphas_cumprod_closed_form() -> None:
    T, s = 1000, 0.008
    sched = make_schedule("cosine", T)

    def f(u: float) -> float:
        return math.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    expected = torch.tensor([f((t + 1) / T) / f(0.0) for t in range(T)], dtype=torch.float64)
    assert sched.alphas_cumprod.dtype == torch.float64 and len(sched) == T
    # Exact wherever the 0.999 cap did not bite (everything but the very last step).
    assert (sched.betas[:-1] < 0.999).all() and sched.betas[-1] == 0.999
    torch.testing.assert_close(sched.alphas_cumprod[:-1], expected[:-1], rtol=1e-12, atol=0)
    assert sched.alphas_cumprod[-1] == pytest.approx(expected[-2].item() * 0.001, rel=1e-12)
    # Same table as diffusers' squaredcos_cap_v2 (stored in float32 there).
    ref = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod.double()
    assert (sched.alphas_cumprod - ref).abs().max() < 1e-6


def test_linear_schedule() -> None:
    sched = make_schedule("linear")
    torch.testing.assert_close(sched.betas, torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64))
    expected = torch.tensor(
        [math.prod(1 - b for b in sched.betas[: t + 1].tolist()) for t in (0, 10, 500, 999)], dtype=torch.float64
    )
    torch.testing.assert_close(sched.alphas_cumprod[[0, 10, 500, 999]], expected, rtol=1e-12, atol=1e-15)
    ref = DDPMScheduler(beta_schedule="linear").alphas_cumprod.double()
    assert (sched.alphas_cumprod - ref).abs().max() < 1e-6
    torch.testing.assert_close(linear_betas(100)[[0, -1]], torch.tensor([1e-3, 0.2], dtype=torch.float64))


def test_derived_tables() -> None:
    sched = make_schedule("cosine")
    a, ap, b = sched.alphas_cumprod, sched.alphas_cumprod_prev, sched.betas
    assert ap[0] == 1.0 and torch.equal(ap[1:], a[:-1])
    torch.testing.assert_close(sched.posterior_variance, b * (1 - ap) / (1 - a))
    assert sched.posterior_variance[0] == 0
    assert sched.posterior_log_variance_clipped[0] == sched.posterior_log_variance_clipped[1]
    torch.testing.assert_close(sched.sqrt_recip_alphas_cumprod * sched.sqrt_alphas_cumprod, torch.ones_like(a))


def test_respacing_even_matches_karlo_and_diffusers_unclip() -> None:
    assert space_timesteps(1000, "7") == [0, 166, 333, 500, 666, 832, 999]
    steps25 = space_timesteps(1000, 25)
    assert steps25[-3:] == [916, 957, 999] and steps25[:3] == [0, 42, 83]
    assert steps25 == [round(i * 999 / 24) for i in range(25)]
    assert space_timesteps(1000, "1") == [0]


def test_respacing_ddim_sections_and_lists() -> None:
    assert space_timesteps(1000, "ddim25") == list(range(0, 1000, 40))
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    # guided-diffusion semantics: 300 steps, sections of 100 strided to 10, 15 and 20 steps.
    kept = space_timesteps(300, "10,15,20")
    assert len(kept) == 45
    assert kept[:10] == [round(j * 11) for j in range(10)]
    assert sum(100 <= k < 200 for k in kept) == 15 and sum(k >= 200 for k in kept) == 20
    assert space_timesteps(1000, [999, 0, 500, 500]) == [0, 500, 999]
    for bad in ("ddim7", "0", "x", [1000], [], "30,0"):
        with pytest.raises((ValueError, TypeError)):
            space_timesteps(1000 if bad != "ddim7" else 10, bad)


def test_respaced_schedule_tables_and_map() -> None:
    base = make_schedule("cosine")
    sub = base.respace("25")
    kept = torch.tensor(space_timesteps(1000, "25"))
    assert torch.equal(sub.timesteps, kept) and sub.num_train_timesteps == 1000 and sub.is_respaced
    torch.testing.assert_close(sub.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-13, atol=0)
    # β of each kept stride: 1 - ᾱ_k/ᾱ_prev (ᾱ_prev = 1 before the first kept step).
    prev = torch.cat([torch.ones(1, dtype=torch.float64), base.alphas_cumprod[kept[:-1]]])
    torch.testing.assert_close(sub.betas, 1 - base.alphas_cumprod[kept] / prev, rtol=1e-12, atol=0)
    # Respacing composes: the map points into the original schedule.
    subsub = sub.respace([0, 12, 24])
    assert subsub.timesteps.tolist() == [0, kept[12].item(), 999]
    torch.testing.assert_close(subsub.alphas_cumprod, base.alphas_cumprod[subsub.timesteps], rtol=1e-13, atol=0)


def test_extract_and_validation() -> None:
    sched = make_schedule("cosine")
    like = torch.zeros(3, 2, 4, 4, dtype=torch.float32)
    out = extract(sched, "betas", torch.tensor([0, 5, 999]), like)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert out[1].item() == pytest.approx(sched.betas[5].item(), rel=1e-6)
    assert extract(sched, "betas", 7, like) == sched.betas[7].item()
    with pytest.raises(IndexError):
        extract(sched, "betas", 1000, like)
    with pytest.raises(ValueError, match="betas"):
        NoiseSchedule([0.1, 1.5])
    with pytest.raises(ValueError, match="increasing"):
        NoiseSchedule([0.1, 0.2], timesteps=[5, 3], num_train_timesteps=10)
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("quadratic")
    assert cosine_betas(10).shape == (10,)
