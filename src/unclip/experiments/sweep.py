"""Shared generation for the decoder comparisons (experiments 1, 2, 4, 7): one unit = one setting at one
decoder guidance scale on a fixed set of captions, read by the oracle. Units are stored under
``run_root/_sweep/FINGERPRINT/BUDGET/`` so experiments that need the same unit compute it once.

Settings (see :mod:`unclip.experiments.models`):

- ``unclip``: z_i sampled from the diffusion prior, decoded by the ``image`` decoder (with the caption);
- ``caption``: the caption-only (GLIDE-like) decoder;
- ``text_embedding``: the decoder trained on z_t;
- ``zero_shot``: the ``image`` decoder fed z_t in place of z_i (no prior).
"""

from __future__ import annotations

from typing import Any

import torch

from unclip.encoders.base import TextEmbedding
from unclip.experiments.common import ExperimentContext, ResultStore
from unclip.experiments.models import (
    DecoderBudget,
    comparison_decoder,
    decode_with,
    sample_image_embeddings,
)
from unclip.io import atomic_torch_save, safe_torch_load

SETTINGS = ("unclip", "caption", "text_embedding", "zero_shot")
SETTING_LABELS = {
    "unclip": "unCLIP (prior + decoder)",
    "caption": "caption-only decoder (GLIDE-like)",
    "text_embedding": "decoder trained on z_t",
    "zero_shot": "unCLIP decoder fed z_t (no prior)",
    "real": "real renders",
}
_DECODER_OF = {"unclip": "image", "caption": "caption", "text_embedding": "text_embedding", "zero_shot": "image"}


def decoder_for(ctx: ExperimentContext, budget: DecoderBudget, setting: str):
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    return comparison_decoder(ctx, _DECODER_OF[setting], budget)


@torch.no_grad()
def generate(
    ctx: ExperimentContext,
    budget: DecoderBudget,
    setting: str,
    text: TextEmbedding,
    guidance: float,
    steps: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Base-resolution images [B, 3, S, S] in [-1, 1] for B encoded captions under ``setting``."""
    stage = decoder_for(ctx, budget, setting)
    z = None
    if setting == "unclip":
        z = sample_image_embeddings(ctx, budget, text, generator)
    elif setting == "zero_shot":
        z = text.pooled
    return decode_with(stage, text, guidance, generator, image_embedding=z, steps=steps)


def cache_text(ctx: ExperimentContext, rows: list[int]) -> TextEmbedding:
    """The cached CLIP text encodings of cache ``rows`` (float32)."""
    cache = ctx.get_cache()
    idx = torch.tensor(rows, dtype=torch.long)
    return TextEmbedding(cache.text.pooled[idx].float(), cache.text.tokens[idx].float(), cache.text.mask[idx].bool())


def unit_key(setting: str, guidance: float, n: int, steps: int, tag: str = "rows") -> str:
    return f"{tag}_{setting}_g{guidance:g}_n{n}_s{steps}"


def row_sweep_unit(
    ctx: ExperimentContext, budget: DecoderBudget, setting: str, guidance: float, rows: list[int], steps: int
) -> dict[str, Any]:
    """One image per held-out cache row under ``setting`` at ``guidance``: specified-attribute correctness per
    row (:func:`~unclip.measure.oracle.score_specified`) and oracle features (for the Fréchet distance), stored
    under ``run_root/_sweep/FINGERPRINT/BUDGET``. Returns ``{"scores": [...], "features": Tensor [N, F]}``."""
    from unclip.measure.oracle import oracle_features, predict, score_specified

    store = ResultStore(ctx.run_dir("_sweep") / budget.name)
    key = unit_key(setting, guidance, len(rows), steps)
    feats_path = store.directory / f"{key}.features.pt"
    found = store.get(key)
    if found is None or not feats_path.is_file():
        text = cache_text(ctx, rows)
        gen = ctx.generator(len(rows), steps, int(guidance * 1000), 1 + SETTINGS.index(setting))
        images = generate(ctx, budget, setting, text, guidance, steps, gen).clamp(-1, 1)
        oracle = ctx.get_oracle()
        preds = predict(oracle, images)
        specified = ctx.get_cache().specified
        scores = [score_specified(p, specified[r]) for p, r in zip(preds, rows)]
        atomic_torch_save(oracle_features(oracle, images).float(), feats_path)
        found = store.put(key, {"setting": setting, "guidance": guidance, "rows": len(rows), "steps": steps,
                                "scores": scores})  # fmt: skip
    found["features"] = safe_torch_load(feats_path, pickle_hint=None)
    return found


def best_accuracy(
    ctx: ExperimentContext,
    budget: DecoderBudget,
    settings: tuple[str, ...],
    guidances: tuple[float, ...],
    rows: int,
    steps: int,
) -> dict[str, float]:
    """Each setting's best mean specified-attribute accuracy over ``guidances`` on the first ``rows`` held-out
    cache rows (the competence gate of an experiment whose own measures are not that accuracy; the units are
    :func:`row_sweep_unit`'s, shared with experiments 2 and 4)."""
    held = ctx.heldout_rows()[:rows]
    return {
        m: max(summarise_scores(row_sweep_unit(ctx, budget, m, g, held, steps)["scores"])["mean"] for g in guidances)
        for m in settings
    }


def real_features(ctx: ExperimentContext, rows: list[int], size: int) -> torch.Tensor:
    """Oracle features [N, F] of the real images of cache ``rows`` at ``size`` px (the decoders' resolution)."""
    from unclip.measure.oracle import oracle_features

    return oracle_features(ctx.get_oracle(), ctx.get_cache().pixels(rows, size)).float()


def real_scores(ctx: ExperimentContext, rows: list[int], size: int) -> list[dict[str, bool]]:
    """Specified-attribute correctness of the real images of ``rows`` at ``size`` px (the oracle's ceiling)."""
    from unclip.measure.oracle import predict, score_specified

    cache = ctx.get_cache()
    preds = predict(ctx.get_oracle(), cache.pixels(rows, size))
    return [score_specified(p, cache.specified[r]) for p, r in zip(preds, rows)]


def summarise_scores(scores: list[dict[str, bool]]) -> dict[str, float]:
    """Pooled accuracy per attribute, plus ``mean`` (mean over the specified attributes other than the
    always-present count) and ``all`` (every specified attribute right)."""
    from unclip.measure.oracle import pooled_accuracy

    acc = pooled_accuracy(scores)
    keys = [k for k in acc if k not in ("all", "count")]
    acc["mean"] = sum(acc[k] for k in keys) / len(keys) if keys else float("nan")
    return acc


def unit_intervals(
    features: torch.Tensor, scores: list[dict[str, bool]], reference: torch.Tensor, seed: int = 0, fd_draws: int = 200
) -> dict[str, tuple[float, float]]:
    """95% bootstrap intervals of one unit: ``fd`` (its rows [N, F] and the reference [M, F] resampled
    independently, bias-corrected: resampling inflates an FD) and ``accuracy`` (the mean specified-attribute
    accuracy, rows resampled)."""
    from unclip.experiments.verdicts import bootstrap_intervals
    from unclip.measure.metrics import frechet_distance

    a, b = features.double().numpy(), reference.double().numpy()
    (fd,) = bootstrap_intervals([len(a), len(b)], lambda i, j: [frechet_distance(a[i], b[j])], draws=fd_draws,
                                seed=seed, bias_corrected=True)  # fmt: skip
    (acc,) = bootstrap_intervals([len(scores)], lambda i: [summarise_scores([scores[k] for k in i])["mean"]],
                                 seed=seed)  # fmt: skip
    return {"fd": fd, "accuracy": acc}
