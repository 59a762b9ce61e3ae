"""The sampler registry: every spec samples a 1-D Gaussian correctly through ``run_sampler``, the dispatcher calls
the spec's function on the spec's spacing, and names, step counts and parameterisations are checked by the spec.

For x0 ~ N(mu, s²) the probability-flow ODE maps x_T to ``mu + s (x_T - sqrt(ᾱ_T) mu) / sqrt(ᾱ_T s² + 1 - ᾱ_T)``
(each sample keeps its standardised value), and every sampler, deterministic or not, must give N(mu, s²).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from unclip.diffusion import Parameterization, make_schedule
from unclip.samplers import SAMPLER_NAMES, SAMPLERS, Predictor, SamplerSpec, run_sampler, sampler_spec

BASE = make_schedule("cosine")
MU, S = 0.4, 0.6
B = 20000


def ideal(prediction: str):
    """The exact denoiser of N(MU, S²) data on the training schedule, for ``prediction``."""

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = BASE.alphas_cumprod[t].to(x).unsqueeze(1)
        x0 = MU + a.sqrt() * S**2 / (a * S**2 + 1 - a) * (x - a.sqrt() * MU)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        return {"x0": x0, "eps": eps, "v": a.sqrt() * eps - (1 - a).sqrt() * x0}[prediction]

    return denoise


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_names_are_the_registry() -> None:
    assert SAMPLER_NAMES == tuple(SAMPLERS) == ("ddpm", "ddim", "dpm++", "unclip")
    for name, spec in SAMPLERS.items():
        assert spec.name == name and sampler_spec(name) is spec and callable(spec.sample)
        assert spec.min_steps >= 1 and spec.predictions and spec.variances and spec.description
        assert spec.own_spacing == (spec.spacing is None) == (spec.timesteps is not None)


@pytest.mark.parametrize("name", SAMPLER_NAMES)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_every_spec_samples_the_gaussian(name: str, prediction: str) -> None:
    spec = sampler_spec(name)
    assert prediction in spec.predictions
    predictor = Predictor(ideal(prediction), Parameterization(prediction, "fixed_small"))
    x_T = torch.randn(B, 1, generator=gen(0), dtype=torch.float64)
    x = run_sampler(name, predictor, BASE, 25 if name == "dpm++" else 250, x_T.clone(), generator=gen(1))
    assert x.shape == (B, 1) and x.dtype == torch.float64 and torch.isfinite(x).all()
    assert abs(x.mean().item() - MU) < 0.03 * S  # measured: <= 0.018 (the x_T draw's own mean is ~0.018 off)
    assert abs(x.std().item() / S - 1) < 0.02  # measured: ddpm/unclip -0.010, ddim 0.005, dpm++ 0.011
    if name in ("ddim", "dpm++"):  # deterministic (eta = 0): the ODE's closed-form answer, sample by sample
        a_T = float(BASE.alphas_cumprod[-1])
        exact = MU + S * (x_T - a_T**0.5 * MU) / (a_T * S**2 + 1 - a_T) ** 0.5
        tol = 0.005 if name == "dpm++" else 0.04  # measured: 0.0024 in 25 steps, 0.024 in 250 (first order)
        assert (x - exact).abs().max().item() < tol * S


@pytest.mark.parametrize("name", SAMPLER_NAMES)
def test_run_sampler_calls_the_spec_function_on_the_spec_spacing(name: str) -> None:
    """Dispatch adds nothing: the spec's function on the spec's steps gives the same sample bit for bit, and the
    network sees exactly ``spec.sampling_timesteps``."""
    spec = sampler_spec(name)
    seen: list[int] = []

    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(int(t[0]))
        return torch.tanh(x) * 0.3

    predictor = Predictor(denoise, Parameterization("eps", "fixed_small"), clip_x0=1.0)
    x_T = torch.randn(3, 4, generator=gen(2))
    ours = run_sampler(name, predictor, BASE, 6, x_T.clone(), generator=gen(3))
    assert seen == spec.sampling_timesteps(BASE, 6)
    kwargs = {"eta": 0.0} if spec.takes_eta else {}
    if spec.own_spacing:
        direct = spec.sample(predictor, BASE, 6, x_T.clone(), generator=gen(3), **kwargs)
    else:
        direct = spec.sample(
            predictor, BASE.respace(spec.spacing(len(BASE), 6)), x_T.clone(), generator=gen(3), **kwargs
        )
    assert torch.equal(ours, direct)


def test_unknown_names_are_one_line_errors_listing_the_known_ones() -> None:
    predictor = Predictor(ideal("eps"), Parameterization("eps"))
    for bad in ("euler", "DDPM", None):
        with pytest.raises(
            ValueError, match=r"unknown sampler .*expected one of \('ddpm', 'ddim', 'dpm\+\+', 'unclip'\)"
        ):
            sampler_spec(bad)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        run_sampler("euler", predictor, BASE, 5, shape=(1, 1))


def test_min_steps_are_enforced_by_the_spec() -> None:
    predictor = Predictor(ideal("eps"), Parameterization("eps"))
    limited = [spec for spec in SAMPLERS.values() if spec.min_steps > 1]
    assert [spec.name for spec in limited] == ["unclip"]
    for spec in limited:
        with pytest.raises(ValueError, match=f"sampler '{spec.name}' needs at least {spec.min_steps} steps, got 1"):
            run_sampler(spec.name, predictor, BASE, spec.min_steps - 1, shape=(1, 1))
        run_sampler(spec.name, predictor, BASE, spec.min_steps, shape=(1, 1))  # the minimum itself runs


def test_unsupported_parameterisations_are_refused_by_the_spec() -> None:
    assert sampler_spec("unclip").variances == ("fixed_small", "learned_range")
    for variance in ("fixed_large", "learned"):
        channels = 2 if variance == "learned" else 1
        predictor = Predictor(lambda x, t, c=channels: x.repeat(1, c), Parameterization("eps", variance))
        with pytest.raises(ValueError, match=f"sampler 'unclip' supports .* got 'eps' / '{variance}'") as info:
            run_sampler("unclip", predictor, BASE, 5, shape=(1, 1))
        assert "\n" not in str(info.value)
        run_sampler("ddpm", predictor, BASE, 5, shape=(1, 1))  # ddpm reads every variance


def test_a_new_sampler_is_one_registry_entry(monkeypatch) -> None:
    """Registering a spec is all run_sampler needs: spacing, min steps and support come from it."""
    calls = []

    def toy_sample(predictor, schedule, x_T=None, *, shape=None, generator=None, **common):
        calls.append([int(t) for t in schedule.timesteps])
        return torch.zeros(shape) if x_T is None else x_T * 0

    spec = SamplerSpec("toy", toy_sample, "test", spacing=lambda T, n: f"ddim{n}", min_steps=3, predictions=("x0",))
    monkeypatch.setitem(SAMPLERS, "toy", spec)
    x0_predictor = Predictor(ideal("x0"), Parameterization("x0"))
    assert run_sampler("toy", x0_predictor, BASE, 4, shape=(2, 1)).shape == (2, 1)
    assert calls == [[0, 250, 500, 750]]
    with pytest.raises(ValueError, match="needs at least 3 steps"):
        run_sampler("toy", x0_predictor, BASE, 2, shape=(2, 1))
    with pytest.raises(ValueError, match="supports predictions"):
        run_sampler("toy", Predictor(ideal("eps"), Parameterization("eps")), BASE, 4, shape=(2, 1))


def test_front_ends_read_the_registry() -> None:
    """The CLI's literal tuple, the API's request schema and /api/v1/config (with per-sampler min steps)."""
    from fastapi.testclient import TestClient

    from unclip.cli.generate_cmds import SAMPLERS as CLI_SAMPLERS
    from unclip.pipeline.options import GenerationDefaults
    from unclip.web.app import create_app
    from unclip.web.config import ServeConfig
    from unclip.web.schemas import request_models

    assert CLI_SAMPLERS == SAMPLER_NAMES
    schema = request_models(ServeConfig().limits).generate.model_json_schema()
    sampler = schema["properties"]["sampler"]["anyOf"][0]
    assert tuple(sampler["enum"]) == SAMPLER_NAMES
    pipe = SimpleNamespace(image_size=32, defaults=GenerationDefaults())
    with TestClient(create_app(pipe, ServeConfig(model="stub"))) as client:
        config = client.get("/api/v1/config").json()
    assert config["samplers"] == list(SAMPLER_NAMES)
    assert config["sampler_min_steps"] == {name: spec.min_steps for name, spec in SAMPLERS.items()}
    assert config["sampler_min_steps"]["unclip"] == 2
