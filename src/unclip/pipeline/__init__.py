"""End-to-end generation: :class:`UnCLIPPipeline` (text -> image, variations, interpolations, edits);
its prior (:mod:`unclip.pipeline.priors`), loading and saving (:mod:`unclip.pipeline.serialization`).

The names below are imported on first use, so that light modules of this package (``bounds``, the option
ranges the CLI reads at start-up) do not pull in torch and the networks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "ARPriorStage",
    "DiffusionPriorStage",
    "GenerationDefaults",
    "Prior",
    "Stage",
    "UnCLIPOutput",
    "UnCLIPPipeline",
]

if TYPE_CHECKING:
    from unclip.pipeline.priors import ARPriorStage, DiffusionPriorStage, Prior
    from unclip.pipeline.unclip_pipeline import GenerationDefaults, Stage, UnCLIPOutput, UnCLIPPipeline


def __getattr__(name: str) -> Any:
    if name in __all__:
        from unclip.pipeline import unclip_pipeline

        return getattr(unclip_pipeline, name)
    raise AttributeError(f"module 'unclip.pipeline' has no attribute {name!r}")
