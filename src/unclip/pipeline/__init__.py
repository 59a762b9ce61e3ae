"""End-to-end generation: :class:`UnCLIPPipeline` (text -> image, variations, interpolations, edits)."""

from unclip.pipeline.unclip_pipeline import GenerationDefaults, Stage, UnCLIPOutput, UnCLIPPipeline

__all__ = ["GenerationDefaults", "Stage", "UnCLIPOutput", "UnCLIPPipeline"]
