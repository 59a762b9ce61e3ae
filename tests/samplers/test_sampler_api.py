"""Sampler conventions: generator draw order, progress, shapes, dtypes, validation."""

from __future__ import annotations

import pytest
import torch

from unclip.diffusion import Parameterization, make_schedule
from unclip.samplers import (
    SAMPLER_NAMES,
    Predictor,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    run_sampler,
    unclip_sample,
)

BASE = make_schedule("cosine")


def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.tanh(x) + t.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype) / 2000


def test_noise_order_x_T_then_one_per_noisy_step() -> None:
    """ddpm with a drawn x_T == ddpm from x_T drawn first, then noises drawn from the same generator."""
    sampling = BASE.respace("6")
    pred = Predictor(model, Parameterization("eps"), clip_x0=1.0)
    drawn = ddpm_sample(pred, sampling, shape=(2, 3, 4), generator=torch.Generator().manual_seed(0))

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, generator=g)
    noises = [torch.randn(2, 3, 4, generator=g) for _ in range(len(sampling) - 1)]  # none for the last step
    g_replay = torch.Generator().manual_seed(0)
    torch.randn(2, 3, 4, generator=g_replay)
    assert torch.equal(ddpm_sample(pred, sampling, x.clone(), generator=g_replay), drawn)
    assert torch.equal(torch.randn(1, generator=g_replay), torch.randn(1, generator=g))  # same number of draws
    # And noise really enters: a different seed gives a different sample from the same x_T.
    other = ddpm_sample(pred, sampling, x.clone(), generator=torch.Generator().manual_seed(1))
    assert not torch.equal(other, drawn)
    assert len(noises) == 5


def test_ddim_eta0_draws_only_x_T() -> None:
    g = torch.Generator().manual_seed(3)
    pred = Predictor(model, Parameterization("v"))
    ddim_sample(pred, BASE.respace("ddim10"), shape=(2, 5), generator=g, eta=0.0)
    g2 = torch.Generator().manual_seed(3)
    torch.randn(2, 5, generator=g2)
    assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=g2))


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 8), (2, 3, 4, 4)])
def test_every_sampler_any_shape_dtype_progress(name, dtype, shape) -> None:
    calls = []
    pred = Predictor(model, Parameterization("eps"), clip_x0=1.0)
    out = run_sampler(
        name,
        pred,
        BASE,
        4,
        shape=shape,
        dtype=dtype,
        generator=torch.Generator().manual_seed(0),
        eta=1.0,
        progress=lambda *a: calls.append(a),
        stage="decoder",
    )
    assert out.shape == shape and out.dtype == dtype and torch.isfinite(out.float()).all()
    assert calls == [("decoder", i, 4) for i in range(1, 5)]
    again = run_sampler(
        name, pred, BASE, 4, shape=shape, dtype=dtype, generator=torch.Generator().manual_seed(0), eta=1.0
    )
    assert torch.equal(out, again)


def test_inversion_progress_and_callback() -> None:
    pred = Predictor(model, Parameterization("eps"))
    calls, xs = [], []
    x0 = torch.rand(2, 3, 4, 4) * 2 - 1
    x_T = ddim_invert(
        pred, BASE.respace("5"), x0, progress=lambda *a: calls.append(a), callback=lambda s, x, p: xs.append(x)
    )
    assert calls == [("ddim_inversion", i, 4) for i in range(1, 5)]
    assert len(xs) == 4 and torch.equal(xs[-1], x_T)


def test_validation_errors() -> None:
    pred = Predictor(model, Parameterization("eps"))
    with pytest.raises(ValueError, match="unknown sampler"):
        run_sampler("euler", pred, BASE, 10, shape=(1, 2))
    with pytest.raises(ValueError, match="num_steps"):
        run_sampler("ddpm", pred, BASE, 0, shape=(1, 2))
    with pytest.raises(ValueError, match="training schedule"):
        run_sampler("ddpm", pred, BASE.respace("10"), 10, shape=(1, 2))
    with pytest.raises(ValueError, match="gives"):
        run_sampler("ddim", pred, BASE, 10, shape=(1, 2), spacing="ddim20")
    with pytest.raises(ValueError, match="x_T or shape"):
        ddpm_sample(pred, BASE.respace("5"))
    with pytest.raises(ValueError, match="disagrees"):
        ddpm_sample(pred, BASE.respace("5"), torch.zeros(1, 2), shape=(1, 3))
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(pred, BASE.respace("5"), torch.zeros(1, 2), eta=-0.1)
    with pytest.raises(ValueError, match="fixed_small/learned_range"):
        unclip_sample(Predictor(model, Parameterization("eps", "fixed_large")), BASE, 5, shape=(1, 2))
    with pytest.raises(ValueError, match="training schedule"):
        unclip_sample(pred, BASE.respace("10"), 5, shape=(1, 2))


def test_learned_range_variance_channels_are_clamped_to_the_trained_range() -> None:
    """Variance channels past ±1 (a drifted network) give σ² at the range's bound, as training's forward
    pass evaluates them; unclamped they extrapolate σ² far past β_t and the sample explodes."""
    schedule = make_schedule("cosine").respace("25")
    param = Parameterization("v", "learned_range")

    def drifted(x, t):  # v = 0 (x0 = sqrt(acp) x_t), variance channels far above +1
        return torch.cat([torch.zeros_like(x), torch.full_like(x, 40.0)], dim=1)

    def at_bound(x, t):
        return torch.cat([torch.zeros_like(x), torch.ones_like(x)], dim=1)

    def run(denoiser, **kw):
        predictor = Predictor(denoiser, param, **kw)
        return ddpm_sample(predictor, schedule, shape=(2, 3, 4, 4), generator=torch.Generator().manual_seed(0))

    clamped = run(drifted)
    torch.testing.assert_close(clamped, run(at_bound))
    raw = run(drifted, clamp_variance=False)
    assert torch.isfinite(clamped).all() and not (torch.isfinite(raw).all() and raw.abs().max() < 1e3)
