"""The sampler registry: one :class:`SamplerSpec` per algorithm, read by ``run_sampler``, the stages, the pipeline,
the CLI, the HTTP API and the page.

Adding a sampler is one file (the algorithm, on the :class:`~unclip.samplers.base.Predictor` contract) and one
entry in :data:`SAMPLERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from unclip.diffusion import PREDICTIONS, VARIANCES, NoiseSchedule
from unclip.samplers.ddim import ddim_sample
from unclip.samplers.ddpm import ddpm_sample
from unclip.samplers.dpm_solver import dpm_solver_sample, dpm_solver_timesteps
from unclip.samplers.unclip import PREDICTIONS as UNCLIP_PREDICTIONS
from unclip.samplers.unclip import VARIANCES as UNCLIP_VARIANCES
from unclip.samplers.unclip import unclip_sample, unclip_timesteps


def _even_spacing(num_train_timesteps: int, num_steps: int) -> str:
    """Karlo's and diffusers' UnCLIP spacing: ``num_steps`` evenly spaced steps ("25")."""
    return str(num_steps)


@dataclass(frozen=True)
class SamplerSpec:
    """One sampler and what it supports.

    Attributes:
        name: the name every front end uses ("ddpm").
        sample: the function; called as ``sample(predictor, schedule, x_T, **common)`` on the respaced schedule, or
            ``sample(predictor, schedule, num_steps, x_T, **common)`` on the training schedule when
            ``own_spacing``.
        description: one line for help texts.
        spacing: default step spacing ``(T, num_steps) -> spacing`` (a ``NoiseSchedule.respace`` argument); None with
            ``own_spacing``.
        own_spacing: the sampler walks the training schedule with its own timesteps (``timesteps(T, n)``).
        timesteps: ``(T, num_steps) -> descending training timesteps`` for ``own_spacing`` samplers.
        min_steps: fewest steps it can take.
        predictions, variances: the parameterisations it can read.
        takes_eta: whether DDIM's eta applies.
    """

    name: str
    sample: Callable[..., Any]
    description: str
    spacing: Callable[[int, int], str | Sequence[int]] | None = _even_spacing
    own_spacing: bool = False
    timesteps: Callable[[int, int], list[int]] | None = None
    min_steps: int = 1
    predictions: tuple[str, ...] = PREDICTIONS
    variances: tuple[str, ...] = VARIANCES
    takes_eta: bool = False

    def check(self, num_steps: int, prediction: str, variance: str) -> None:
        """One-line errors for a step count or parameterisation this sampler cannot take."""
        if num_steps < self.min_steps:
            raise ValueError(f"sampler {self.name!r} needs at least {self.min_steps} steps, got {num_steps}")
        if prediction not in self.predictions or variance not in self.variances:
            raise ValueError(
                f"sampler {self.name!r} supports predictions {self.predictions} with variances {self.variances}, "
                f"got {prediction!r} / {variance!r}"
            )

    def sampling_timesteps(self, schedule: NoiseSchedule, num_steps: int) -> list[int]:
        """The training-schedule timesteps this sampler visits, descending."""
        if self.own_spacing:
            assert self.timesteps is not None
            return list(self.timesteps(len(schedule), num_steps))
        assert self.spacing is not None
        respaced = schedule.respace(self.spacing(len(schedule), num_steps))
        return sorted((int(t) for t in respaced.timesteps), reverse=True)


SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec("ddpm", ddpm_sample, "ancestral DDPM (Karlo's and diffusers' default)"),
        SamplerSpec("ddim", ddim_sample, "DDIM with eta (0: deterministic)", takes_eta=True),
        SamplerSpec("dpm++", dpm_solver_sample, "DPM-Solver++(2M), few steps", spacing=dpm_solver_timesteps),
        SamplerSpec(
            "unclip",
            unclip_sample,
            "diffusers' UnCLIPScheduler, step for step",
            spacing=None,
            own_spacing=True,
            timesteps=unclip_timesteps,
            min_steps=2,
            predictions=UNCLIP_PREDICTIONS,
            variances=UNCLIP_VARIANCES,
        ),
    )
}
SAMPLER_NAMES: tuple[str, ...] = tuple(SAMPLERS)


def sampler_spec(name: object) -> SamplerSpec:
    """The spec of sampler ``name``; an error naming the unknown name and the known ones."""
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLER_NAMES}")
    return SAMPLERS[name]
