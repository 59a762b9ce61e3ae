"""Step-for-step agreement with diffusers' schedulers on identical inputs, model outputs and noise.

A deterministic pseudo-model (a fixed nonlinear function of x_t and t) drives both our sampler and the
diffusers scheduler loop from the same x_T, with generators seeded alike (both draw noise on the CPU in the
sample's dtype, one draw per noise-adding step); every intermediate x_t must agree.

The DDPM/DDIM/UnCLIP schedulers are given our float64 cosine tables, so that both sides compute the same
math in float64 and only the algorithms are compared (with diffusers' float32 tables, ``1 - beta`` at
t=999 loses ~3% to cancellation, and betas[0] != 1 - alphas_cumprod[0] by ~1e-3 relative).
DPMSolverMultistep always computes in float32, so it is compared in float32, on its own ᾱ table, on
well-conditioned steps. Our cosine table itself is checked against the closed form and diffusers' table in
tests/diffusion/test_noise_schedule.py.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UnCLIPScheduler

from unclip.diffusion import NoiseSchedule, Parameterization, make_schedule
from unclip.samplers import (
    Predictor,
    ddim_sample,
    ddpm_sample,
    dpm_solver_sample,
    dpm_solver_timesteps,
    run_sampler,
    unclip_predictor,
    unclip_sample,
)

BASE = make_schedule("cosine")
IMAGE = (2, 3, 5, 5)
F64 = 1e-12  # relative agreement when both sides compute in float64
F32 = 1e-5  # DPMSolverMultistep (float32 inside)
EMBED = (3, 16)
DIFFUSERS_PREDICTION = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}


def pseudo_model(learned_variance: bool):
    """A smooth, nonlinear, deterministic stand-in for a network: (x [B, C, ...], t [B]) -> raw output."""

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) / 1000.0
        mean = 0.8 * torch.sin(3.0 * x + 2.0 * tt) + 0.3 * x * tt + 0.1
        if not learned_variance:
            return mean
        v = 0.9 * torch.tanh(x - tt)
        return torch.cat([mean, v], dim=1)

    return model


def with_tables(scheduler, schedule: NoiseSchedule = BASE):
    """Give a DDPM/DDIM/UnCLIP scheduler our float64 tables, so both sides run the same float64 math."""
    scheduler.betas = schedule.betas.clone()
    scheduler.alphas = schedule.alphas.clone()
    scheduler.alphas_cumprod = schedule.alphas_cumprod.clone()
    scheduler.one = torch.tensor(1.0, dtype=torch.float64)
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def schedule_of(scheduler) -> NoiseSchedule:
    """Our training schedule with exactly the scheduler's ᾱ values (its float32 table, in float64)."""
    return NoiseSchedule.from_alphas_cumprod(scheduler.alphas_cumprod.double())


def collect(store: list[torch.Tensor]):
    return lambda step, x, x0: store.append(x.clone())


def diffusers_loop(scheduler, model, x: torch.Tensor, generator, step_kwargs=None, unclip=False):
    xs = []
    timesteps = scheduler.timesteps.tolist()
    for i, t in enumerate(timesteps):
        out = model(x, torch.full((x.shape[0],), t, dtype=torch.long))
        kwargs = dict(step_kwargs or {})
        if unclip:
            kwargs["prev_timestep"] = None if i == len(timesteps) - 1 else timesteps[i + 1]
        x = scheduler.step(out, t, x, generator=generator, **kwargs).prev_sample
        xs.append(x.clone())
    return xs


def assert_paths_close(ours: list[torch.Tensor], theirs: list[torch.Tensor], rtol: float) -> None:
    """Every intermediate agrees: max |ours - theirs| <= rtol * max(1, max |theirs|)."""
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape and a.dtype == b.dtype
        err = (a.double() - b.double()).abs().max().item()
        scale = max(1.0, b.abs().max().item())
        assert err <= rtol * scale, f"step {i}: max |ours - diffusers| = {err:.3e} (scale {scale:.2f})"


def x_T(shape, seed=0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize(
    "prediction,variance,diffusers_variance,clip",
    [
        ("eps", "fixed_small", "fixed_small", True),
        ("eps", "fixed_small", "fixed_small_log", False),
        ("x0", "fixed_large", "fixed_large", False),
        ("v", "learned_range", "learned_range", True),
        ("eps", "learned_range", "learned_range", False),
    ],
)
def test_ddpm_matches_ddpmscheduler(prediction, variance, diffusers_variance, clip) -> None:
    param = Parameterization(prediction, variance)
    model = pseudo_model(param.learned_variance)
    sched = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2",
        variance_type=diffusers_variance,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
        clip_sample=clip,
    )
    sched.set_timesteps(20)
    with_tables(sched)
    theirs = diffusers_loop(sched, model, x_T(IMAGE), torch.Generator().manual_seed(1))
    ours: list[torch.Tensor] = []
    sampling = BASE.respace(sorted(sched.timesteps.tolist()))
    predictor = Predictor(model, param, clip_x0=1.0 if clip else None)
    out = ddpm_sample(
        predictor, sampling, x_T(IMAGE), generator=torch.Generator().manual_seed(1), callback=collect(ours)
    )
    assert torch.equal(out, ours[-1])
    assert_paths_close(ours, theirs, rtol=F64)


def test_ddpm_dynamic_thresholding_matches() -> None:
    param = Parameterization("eps", "fixed_small")
    model = pseudo_model(False)
    sched = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2",
        thresholding=True,
        dynamic_thresholding_ratio=0.9,
        sample_max_value=1.5,
        clip_sample=False,
    )
    sched.set_timesteps(10)
    with_tables(sched)
    theirs = diffusers_loop(sched, model, x_T(IMAGE, 2), torch.Generator().manual_seed(3))
    ours: list[torch.Tensor] = []
    predictor = Predictor(model, param, threshold=(0.9, 1.5))
    sampling = BASE.respace(sorted(sched.timesteps.tolist()))
    ddpm_sample(predictor, sampling, x_T(IMAGE, 2), generator=torch.Generator().manual_seed(3), callback=collect(ours))
    assert_paths_close(ours, theirs, rtol=F64)


@pytest.mark.parametrize("prediction,eta,clip", [("eps", 0.0, False), ("eps", 1.0, True), ("v", 0.5, False)])
def test_ddim_matches_ddimscheduler(prediction, eta, clip) -> None:
    param = Parameterization(prediction)
    model = pseudo_model(False)
    sched = DDIMScheduler(
        beta_schedule="squaredcos_cap_v2", prediction_type=DIFFUSERS_PREDICTION[prediction], clip_sample=clip
    )
    sched.set_timesteps(25)
    with_tables(sched)
    step_kwargs = {"eta": eta, "use_clipped_model_output": True}
    theirs = diffusers_loop(sched, model, x_T(IMAGE, 4), torch.Generator().manual_seed(5), step_kwargs)
    ours: list[torch.Tensor] = []
    sampling = BASE.respace("ddim25")
    assert sampling.timesteps.tolist() == sorted(sched.timesteps.tolist())
    predictor = Predictor(model, param, clip_x0=1.0 if clip else None)
    ddim_sample(
        predictor, sampling, x_T(IMAGE, 4), eta=eta, generator=torch.Generator().manual_seed(5), callback=collect(ours)
    )
    assert_paths_close(ours, theirs, rtol=F64)


@pytest.mark.parametrize(
    "prediction,steps,shape",
    [
        ("eps", list(range(900, 0, -45)), IMAGE),  # eps -> x0 at t = 999 is too ill-conditioned for float32
        ("v", 8, IMAGE),
        ("x0", 12, EMBED),
    ],
)
def test_dpm_solver_pp_matches_multistep_scheduler(prediction, steps, shape) -> None:
    param = Parameterization(prediction)
    model = pseudo_model(False)
    sched = DPMSolverMultistepScheduler(
        beta_schedule="squaredcos_cap_v2",
        algorithm_type="dpmsolver++",
        solver_order=2,
        prediction_type=DIFFUSERS_PREDICTION[prediction],
    )
    if isinstance(steps, int):
        sched.set_timesteps(steps)
        assert sorted(sched.timesteps.tolist()) == dpm_solver_timesteps(1000, steps)
    else:
        sched.set_timesteps(timesteps=steps)
    start = x_T(shape, 6, torch.float32)  # diffusers computes DPM-Solver updates in float32
    theirs = diffusers_loop(sched, model, start, None)
    ours: list[torch.Tensor] = []
    sampling = schedule_of(sched).respace(sorted(sched.timesteps.tolist()))
    dpm_solver_sample(Predictor(model, param), sampling, start, callback=collect(ours))
    assert_paths_close(ours, theirs, rtol=F32)


@pytest.mark.parametrize(
    "shape,prediction_type,variance_type,clip_range",
    [
        (EMBED, "sample", "fixed_small_log", 5.0),  # Karlo's prior in diffusers
        (IMAGE, "epsilon", "learned_range", 1.0),  # Karlo's decoder
        (IMAGE, "epsilon", "fixed_small_log", 1.0),  # Karlo's super-resolution
    ],
)
def test_unclip_matches_unclipscheduler(shape, prediction_type, variance_type, clip_range) -> None:
    model = pseudo_model(variance_type == "learned_range")
    sched = UnCLIPScheduler(
        variance_type=variance_type,
        prediction_type=prediction_type,
        clip_sample=True,
        clip_sample_range=clip_range,
    )
    sched.set_timesteps(25)
    with_tables(sched)
    theirs = diffusers_loop(sched, model, x_T(shape, 7), torch.Generator().manual_seed(8), unclip=True)
    ours: list[torch.Tensor] = []
    predictor = unclip_predictor(
        model, prediction_type=prediction_type, variance_type=variance_type, clip_sample_range=clip_range
    )
    unclip_sample(
        predictor, BASE, 25, x_T(shape, 7), generator=torch.Generator().manual_seed(8), callback=collect(ours)
    )
    assert_paths_close(ours, theirs, rtol=F64)

    # The same walk as ancestral DDPM on the "25" respacing (different code path, same math).
    again = run_sampler("ddpm", predictor, BASE, 25, x_T(shape, 7), generator=torch.Generator().manual_seed(8))
    assert (again - ours[-1]).abs().max() < 1e-9


@pytest.mark.parametrize(
    "shape,prediction_type,variance_type,clip_range,steps",
    [
        (EMBED, "sample", "fixed_small_log", 5.0, 25),  # Karlo's prior in diffusers
        (IMAGE, "epsilon", "learned_range", 1.0, 25),  # Karlo's decoder
        (IMAGE, "epsilon", "fixed_small_log", 1.0, 7),  # Karlo's super-resolution
    ],
)
def test_unclip_float32_matches_unclipscheduler_as_shipped(shape, prediction_type, variance_type, clip_range, steps):
    """The path that ships: a float32 sample against diffusers' UnCLIPScheduler with its own float32 tables."""
    model = pseudo_model(variance_type == "learned_range")
    sched = UnCLIPScheduler(
        variance_type=variance_type, prediction_type=prediction_type, clip_sample=True, clip_sample_range=clip_range
    )
    sched.set_timesteps(steps)
    start = x_T(shape, 9, dtype=torch.float32)
    theirs = diffusers_loop(sched, model, start.clone(), torch.Generator().manual_seed(10), unclip=True)
    ours: list[torch.Tensor] = []
    predictor = unclip_predictor(
        model, prediction_type=prediction_type, variance_type=variance_type, clip_sample_range=clip_range
    )
    run_sampler("unclip", predictor, BASE, steps, start.clone(), generator=torch.Generator().manual_seed(10),
                callback=collect(ours))  # fmt: skip
    assert_paths_close(ours, theirs, rtol=F32)  # measured on CPU: bit-identical at every step
