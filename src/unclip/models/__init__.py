"""Networks with typed config dataclasses and named presets; build them with :func:`build_model`."""

from unclip.models.registry import MODEL_KINDS, build_model, list_presets, model_class, model_config

__all__ = ["MODEL_KINDS", "build_model", "list_presets", "model_class", "model_config"]
