"""``DiffusionConfig``: the diffusion settings a trained stage was trained with, saved beside its weights.

A stage (prior, decoder, upsampler) is a network *and* the process it was trained on: the noise schedule
and how to read the network's output. Training writes this as ``diffusion.json`` next to the model's
``config.json``; pipelines read it to build the matching schedule and :class:`Parameterization`.
"""

from __future__ import annotations

from dataclasses import dataclass

from unclip.diffusion.process import PREDICTIONS, VARIANCES, Parameterization
from unclip.diffusion.schedule import NoiseSchedule, make_schedule

SCHEDULES = ("cosine", "squaredcos_cap_v2", "linear")


@dataclass
class DiffusionConfig:
    """Schedule and parameterisation of one stage.

    Attributes:
        schedule: "cosine" (= squaredcos_cap_v2) or "linear".
        num_timesteps: training steps T (1000 everywhere in unCLIP).
        prediction: "eps", "x0" or "v".
        variance: "fixed_small", "fixed_large", "learned_range" or "learned".
    """

    schedule: str = "cosine"
    num_timesteps: int = 1000
    prediction: str = "eps"
    variance: str = "fixed_small"

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not isinstance(self.num_timesteps, int) or self.num_timesteps < 2:
            raise ValueError(f"num_timesteps must be an integer >= 2, got {self.num_timesteps!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        if self.variance not in VARIANCES:
            raise ValueError(f"variance must be one of {VARIANCES}, got {self.variance!r}")

    def make_schedule(self) -> NoiseSchedule:
        """The training schedule (respace it for sampling)."""
        return make_schedule(self.schedule, self.num_timesteps)

    def parameterization(self) -> Parameterization:
        return Parameterization(prediction=self.prediction, variance=self.variance)


DIFFUSION_FILE = "diffusion.json"
"""A stage's :class:`DiffusionConfig`, beside its ``config.json`` and ``model.safetensors``."""

# Each stage's default process: what training uses unless told otherwise, and what untrained pipelines get.
PRIOR_DIFFUSION = DiffusionConfig(schedule="cosine", num_timesteps=1000, prediction="x0", variance="fixed_small")
"""The prior: cosine, 1000 steps, x0 prediction, fixed-small variance (Karlo's)."""
DECODER_DIFFUSION = DiffusionConfig(schedule="cosine", num_timesteps=1000, prediction="v", variance="learned_range")
"""The decoder: v prediction with a learned-range variance (the hybrid loss)."""
UPSAMPLER_DIFFUSION = DiffusionConfig(schedule="cosine", num_timesteps=1000, prediction="v", variance="fixed_small")
"""The upsamplers: v prediction, fixed-small variance."""
