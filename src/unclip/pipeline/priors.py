"""The pipeline's prior: an interface (caption -> z_i) with a diffusion and an autoregressive implementation.

:class:`UnCLIPPipeline` talks to its prior through :class:`Prior` only: ``sample`` for z_i, ``module`` for
moving, casting and sizing the network, ``kind`` and ``save`` for writing it (``kind`` is ``model_index.json``'s
``"prior_kind"``; :data:`PRIOR_KINDS` maps it back to the class that loads it). A new kind of prior is one class
here (or anywhere: the pipeline takes any object with these members) and, to load it, one entry in
:data:`PRIOR_KINDS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from unclip.config import load_config, save_config
from unclip.diffusion.stage_config import DIFFUSION_FILE, DiffusionConfig
from unclip.encoders.base import TextEmbedding
from unclip.models.ar_prior import ARPrior
from unclip.models.serialization import load_model, save_model
from unclip.pipeline.options import GenerationDefaults, Stage
from unclip.samplers import ProgressFn
from unclip.stages.prior import sample_ar_prior, sample_prior

__all__ = ["PRIOR_KINDS", "ARPriorStage", "DiffusionPriorStage", "Prior", "as_prior"]


@runtime_checkable
class Prior(Protocol):
    """What the pipeline needs of a prior.

    ``kind``: the name saved as ``"prior_kind"``; ``module``: the network (moved, cast and put in eval mode with
    the pipeline; its size bounds a batch); ``sample``: z_i [B, D] for B encoded captions, ``null_text`` being
    CLIP's "" (batch 1 or B) for guidance; ``save``: write the prior into ``directory``.
    """

    kind: ClassVar[str]

    @property
    def module(self) -> nn.Module: ...

    def sample(
        self,
        text: TextEmbedding,
        null_text: TextEmbedding,
        settings: GenerationDefaults,
        generator: torch.Generator | None,
        progress: ProgressFn | None,
    ) -> Tensor: ...

    def save(self, directory: Path, dtype: torch.dtype | None = None) -> None: ...


@dataclass
class DiffusionPriorStage:
    """The diffusion prior (paper §2.1): a ``DiffusionPrior`` network with the process it was trained on,
    sampled by :func:`unclip.stages.prior.sample_prior` with the pipeline's sampler."""

    model: nn.Module
    diffusion: DiffusionConfig
    kind: ClassVar[str] = "prior"

    @property
    def module(self) -> nn.Module:
        return self.model

    def sample(self, text, null_text, settings, generator, progress):
        return sample_prior(
            self.model,
            text,
            null_text,
            steps=settings.prior_steps,
            sampler=settings.sampler,
            guidance_scale=settings.prior_guidance_scale,
            best_of=settings.best_of,
            clamp=settings.prior_clamp,
            generator=generator,
            eta=settings.eta,
            diffusion=self.diffusion,
            progress=progress,
        )

    def save(self, directory: Path, dtype: torch.dtype | None = None) -> None:
        save_model(self.model, directory, dtype=dtype)
        save_config(self.diffusion, directory / DIFFUSION_FILE)

    @classmethod
    def load(cls, directory: Path, device=None, dtype=None) -> DiffusionPriorStage:
        diffusion = load_config(DiffusionConfig, directory / DIFFUSION_FILE)
        return cls(load_model("prior", directory, device, dtype), diffusion)


@dataclass
class ARPriorStage:
    """The autoregressive prior (paper §2.1): an ``ARPrior`` network, sampled by
    :func:`unclip.stages.prior.sample_ar_prior` (guidance scale and best-of from the settings; no steps)."""

    model: nn.Module
    kind: ClassVar[str] = "ar_prior"

    @property
    def module(self) -> nn.Module:
        return self.model

    def sample(self, text, null_text, settings, generator, progress):
        return sample_ar_prior(
            self.model,
            text,
            null_text,
            guidance_scale=settings.prior_guidance_scale,
            best_of=settings.best_of,
            generator=generator,
        )

    def save(self, directory: Path, dtype: torch.dtype | None = None) -> None:
        save_model(self.model, directory, dtype=dtype)

    @classmethod
    def load(cls, directory: Path, device=None, dtype=None) -> ARPriorStage:
        return cls(load_model("ar_prior", directory, device, dtype))


PRIOR_KINDS: dict[str, Any] = {DiffusionPriorStage.kind: DiffusionPriorStage, ARPriorStage.kind: ARPriorStage}
"""``"prior_kind"`` of ``model_index.json`` -> the class whose ``load(directory, device, dtype)`` reads it."""


def as_prior(prior: Prior | Stage | nn.Module | None) -> Prior | None:
    """The pipeline's view of what it was given: a :class:`Prior` as is, a :class:`Stage` (network +
    DiffusionConfig) as the diffusion prior, an ``ARPrior`` network as the AR prior, None as no prior."""
    if prior is None or isinstance(prior, Prior):
        return prior
    if isinstance(prior, Stage):
        return DiffusionPriorStage(prior.model, prior.diffusion)
    if isinstance(prior, ARPrior):
        return ARPriorStage(prior)
    raise TypeError(
        "prior must be a Stage (a diffusion prior with its DiffusionConfig), an ARPrior, a Prior or None, "
        f"got {type(prior).__name__}"
    )
