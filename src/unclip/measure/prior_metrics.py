"""How good is a prior? Cosine similarity of sampled image embeddings on held-out captions (issue 4).

For every held-out cache row (a caption y with its image's CLIP embedding z_i and its text embedding z_t) a
method proposes an image embedding ẑ; we report the mean over rows of

- ``cos_image`` = cos(ẑ, z_i): how close the proposal is to the embedding of the caption's actual image,
- ``cos_text``  = cos(ẑ, z_t): how well it still matches the caption,

for the **diffusion prior**, the **AR prior**, the **baseline** ẑ = z_t (feed the text embedding to the
decoder directly, the paper's "no prior" ablation) and, as a reference, the **unconditional** ẑ = the mean
training image embedding. Partial captions ("a star") fit many images, so even a perfect prior cannot reach
``cos_image`` = 1; what matters is the comparison between methods on the same rows.

:func:`measure_priors` works on tensors; :func:`measure_prior_dirs` loads a cache and exported priors
(``benchmarks/prior_quality.py`` and ``unclip train prior`` use it); :func:`format_table` prints markdown.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unclip.diffusion.stage_config import DiffusionConfig
from unclip.encoders.base import TextEmbedding

__all__ = [
    "PriorQuality",
    "cosine_scores",
    "format_table",
    "measure_prior_dirs",
    "measure_priors",
    "results_to_json",
    "same_caption_references",
]

BASELINE = "text embedding z_t (baseline)"
UNCONDITIONAL = "mean training z_i (unconditional)"
DIFFUSION = "diffusion prior"
AR = "AR prior"
PROJECTION = "projection prior (ECLIPSE)"


@dataclass
class PriorQuality:
    """One method's scores on ``rows`` held-out captions.

    Attributes:
        method: name of the method.
        cos_image: mean cos(ẑ, z_i); cos_image_sem: its standard error (std / sqrt(rows)).
        cos_text: mean cos(ẑ, z_t); cos_text_sem: its standard error.
        rows: number of captions.
        seconds: wall time to produce the proposals.
    """

    method: str
    cos_image: float
    cos_image_sem: float
    cos_text: float
    cos_text_sem: float
    rows: int
    seconds: float = 0.0


def cosine_scores(samples: Tensor, image_embedding: Tensor, text_pooled: Tensor) -> dict[str, float]:
    """Mean cosine of ``samples`` [B, D] to ``image_embedding`` [B, D] and to ``text_pooled`` [B, D]
    (row-wise, computed in float64), with standard errors: keys ``cos_image``, ``cos_image_sem``,
    ``cos_text``, ``cos_text_sem``."""
    if samples.ndim != 2 or samples.shape != image_embedding.shape or samples.shape != text_pooled.shape:
        raise ValueError(
            f"need three [B, D] tensors of one shape, got {tuple(samples.shape)}, {tuple(image_embedding.shape)}, "
            f"{tuple(text_pooled.shape)}"
        )
    if samples.shape[0] == 0:
        raise ValueError("no rows to score")
    z = samples.detach().to("cpu", torch.float64)
    out: dict[str, float] = {}
    for name, ref in (("cos_image", image_embedding), ("cos_text", text_pooled)):
        cos = F.cosine_similarity(z, ref.detach().to("cpu", torch.float64), dim=-1)
        sem = float(cos.std() / math.sqrt(cos.numel())) if cos.numel() > 1 else 0.0
        out[name], out[f"{name}_sem"] = float(cos.mean()), sem
    return out


def _quality(method: str, samples: Tensor, z_i: Tensor, z_t: Tensor, seconds: float) -> PriorQuality:
    return PriorQuality(method=method, rows=z_i.shape[0], seconds=seconds, **cosine_scores(samples, z_i, z_t))


def _batched(
    fn: Callable[[TextEmbedding, torch.Generator], Tensor], text: TextEmbedding, batch_size: int, seed: int, device
) -> tuple[Tensor, float]:
    generator = torch.Generator(device=device).manual_seed(seed)
    t0 = time.perf_counter()
    parts = [fn(text[s : s + batch_size], generator).float().cpu() for s in range(0, text.pooled.shape[0], batch_size)]
    return torch.cat(parts), time.perf_counter() - t0


@torch.no_grad()
def measure_priors(
    image_embedding: Tensor,
    text: TextEmbedding,
    null_text: TextEmbedding | None = None,
    *,
    diffusion_prior: nn.Module | None = None,
    diffusion: DiffusionConfig | None = None,
    ar_prior: nn.Module | None = None,
    projection_prior: nn.Module | None = None,
    train_mean: Tensor | None = None,
    diffusion_kwargs: dict[str, Any] | None = None,
    ar_kwargs: dict[str, Any] | None = None,
    batch_size: int = 250,
    seed: int = 0,
    samples_out: dict[str, Tensor] | None = None,
) -> list[PriorQuality]:
    """Score the baseline, the unconditional mean (when ``train_mean`` [D] is given) and the given priors.

    Args:
        image_embedding: [N, D] true z_i of the held-out captions' images.
        text: the N held-out captions' encodings (pooled z_t [N, D], tokens, mask).
        null_text: CLIP encoding of ``""`` (batch 1), for guidance.
        diffusion_prior: a :class:`~unclip.models.prior.DiffusionPrior` (eval mode), sampled with
            :func:`~unclip.stages.prior.sample_prior` and ``diffusion_kwargs`` (default: its
            defaults — 25 DDPM steps, guidance 4, best-of-2, clamp 10) under process ``diffusion``.
        ar_prior: an :class:`~unclip.models.ar_prior.ARPrior`, sampled with
            :func:`~unclip.stages.prior.sample_ar_prior` and ``ar_kwargs`` (default: top-half
            dot token, temperature 1, no guidance). ``null_text`` is passed when ``guidance_scale != 1``.
        projection_prior: a :class:`~unclip.models.projection_prior.ProjectionPrior` (one deterministic pass).
        batch_size: captions per sampling call; seed: seeds one generator per method (on the model's device).
        samples_out: when given, receives each method's proposals ``{method: [N, D] float32}``.

    Returns:
        one :class:`PriorQuality` per method: baseline, [unconditional], [diffusion prior], [AR prior],
        [projection prior].
    """
    from unclip.stages.prior import sample_ar_prior, sample_prior

    n = image_embedding.shape[0]
    if text.pooled.shape[0] != n:
        raise ValueError(f"{n} image embeddings but {text.pooled.shape[0]} captions")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    z_i, z_t = image_embedding.float().cpu(), text.pooled.float().cpu()
    text = TextEmbedding(text.pooled.float(), text.tokens.float(), text.mask.bool())
    samples_out = {} if samples_out is None else samples_out
    samples_out[BASELINE] = z_t
    results = [_quality(BASELINE, z_t, z_i, z_t, 0.0)]
    if train_mean is not None:
        samples_out[UNCONDITIONAL] = train_mean.float().expand_as(z_i)
        results.append(_quality(UNCONDITIONAL, samples_out[UNCONDITIONAL], z_i, z_t, 0.0))
    if diffusion_prior is not None:
        kwargs = dict(diffusion_kwargs or {})
        device = next(diffusion_prior.parameters()).device

        def diffusion_fn(chunk: TextEmbedding, generator: torch.Generator) -> Tensor:
            return sample_prior(diffusion_prior, chunk, null_text, generator=generator, diffusion=diffusion, **kwargs)

        samples, seconds = _batched(diffusion_fn, text, batch_size, seed, device)
        samples_out[DIFFUSION] = samples
        results.append(_quality(DIFFUSION, samples, z_i, z_t, seconds))
    if ar_prior is not None:
        kwargs = dict(ar_kwargs or {})
        device = next(ar_prior.parameters()).device
        null = null_text if kwargs.get("guidance_scale", 1.0) != 1.0 else None

        def ar_fn(chunk: TextEmbedding, generator: torch.Generator) -> Tensor:
            return sample_ar_prior(ar_prior, chunk, null, generator=generator, **kwargs)

        samples, seconds = _batched(ar_fn, text, batch_size, seed, device)
        samples_out[AR] = samples
        results.append(_quality(AR, samples, z_i, z_t, seconds))
    if projection_prior is not None:
        device = next(projection_prior.parameters()).device
        samples, seconds = _batched(lambda chunk, _: projection_prior.sample(chunk), text, batch_size, seed, device)
        samples_out[PROJECTION] = samples
        results.append(_quality(PROJECTION, samples, z_i, z_t, seconds))
    return results


def same_caption_references(
    captions: list[str],
    image_embedding: Tensor,
    text_pooled: Tensor,
    num_train: int,
    rows: list[int],
    samples: dict[str, Tensor] | None = None,
    min_count: int = 2,
    seed: int = 0,
) -> list[PriorQuality]:
    """What an ideal prior would score, on the held-out rows whose exact caption occurs >= ``min_count``
    times among the training rows ``0..num_train-1`` (short partial captions such as "a red circle").

    Rows (method names prefixed ``"same-caption rows: "``):

    - each method of ``samples`` (``{method: [len(rows), D]}`` proposals for ``rows``, e.g. from
      :func:`measure_priors`' ``samples_out``) restricted to those rows;
    - **a training image with the same caption** (drawn uniformly with ``seed``): an exact sample of the
      empirical p(z_i | y), i.e. what a perfect prior sampled at temperature 1 scores;
    - **the mean training image embedding with the same caption**: the empirical E[z_i | y], a point
      estimate no sampler of p(z_i | y) matches on average.

    Args:
        captions: all cache captions (training rows first); image_embedding, text_pooled: [N, D] for all rows.
        rows: the evaluated held-out rows (indices into the cache).
    """
    groups: dict[str, list[int]] = {}
    for i in range(num_train):
        groups.setdefault(captions[i], []).append(i)
    keep = [j for j, r in enumerate(rows) if len(groups.get(captions[r], ())) >= min_count]
    if not keep:
        return []
    sel = torch.tensor([rows[j] for j in keep])
    z_i, z_t = image_embedding[sel].float(), text_pooled[sel].float()
    g = torch.Generator().manual_seed(seed)
    draws, means = [], []
    for j in keep:
        members = groups[captions[rows[j]]]
        draws.append(members[int(torch.randint(len(members), (1,), generator=g))])
        means.append(image_embedding[members].double().mean(0))
    prefix = "same-caption rows: "
    out = [_quality(prefix + name, s[keep], z_i, z_t, 0.0) for name, s in (samples or {}).items()]
    out.append(
        _quality(prefix + "training z_i with the same caption (ideal sample)", image_embedding[draws], z_i, z_t, 0.0)
    )
    out.append(
        _quality(prefix + "mean training z_i with the same caption (ideal mean)", torch.stack(means), z_i, z_t, 0.0)
    )
    return out


def measure_prior_dirs(
    cache: Any,
    holdout: int,
    *,
    diffusion_dir: str | Path | None = None,
    ar_dir: str | Path | None = None,
    projection_dir: str | Path | None = None,
    clip: Any = None,
    rows: int | None = None,
    diffusion_kwargs: dict[str, Any] | None = None,
    ar_kwargs: dict[str, Any] | None = None,
    batch_size: int = 250,
    seed: int = 0,
    references: bool = False,
    row_offset: int = 0,
) -> list[PriorQuality]:
    """:func:`measure_priors` on ``rows`` (default all) of the last ``holdout`` rows of a cache, from the
    ``row_offset``-th held-out row on (so that settings tuned on one part can be reported on another).

    Args:
        cache: an :class:`~unclip.data.embed_cache.EmbeddingCache` or its directory.
        holdout: how many trailing rows were held out of training (the unconditional mean uses the others).
        diffusion_dir: an exported diffusion prior (``config.json``, ``model.safetensors``, ``diffusion.json``).
        ar_dir: an exported AR prior.
        projection_dir: an exported projection prior.
        clip: the cache's CLIP (a :class:`ClipEncoder`, name or directory) for the null text; default the
            name recorded in the cache.
        references: append :func:`same_caption_references` (all methods and the ideal-prior rows on the
            held-out rows whose caption occurs at least twice in training).
    """
    from unclip.config import load_config
    from unclip.data.embed_cache import EmbeddingCache, null_text_for_cache
    from unclip.diffusion.stage_config import DIFFUSION_FILE
    from unclip.encoders.loading import load_clip
    from unclip.models.serialization import load_model

    if not isinstance(cache, EmbeddingCache):
        cache = EmbeddingCache.load(cache)
    if not 0 < holdout < len(cache):
        raise ValueError(f"holdout must be in [1, {len(cache) - 1}] for a cache of {len(cache)} rows, got {holdout}")
    if not 0 <= row_offset < holdout:
        raise ValueError(f"row_offset must be in [0, {holdout}), got {row_offset}")
    first_heldout = len(cache) - holdout
    start = first_heldout + row_offset
    stop = len(cache) if rows is None else min(len(cache), start + rows)
    if clip is None or isinstance(clip, (str, Path)):
        clip = load_clip(clip if clip is not None else cache.meta.get("clip", "shapes"))
    null_text = null_text_for_cache(cache, clip)
    diffusion_prior = diffusion = ar_prior = None
    if diffusion_dir is not None:
        diffusion_prior = load_model("prior", diffusion_dir)
        diffusion = load_config(DiffusionConfig, Path(diffusion_dir) / DIFFUSION_FILE)
    if ar_dir is not None:
        ar_prior = load_model("ar_prior", ar_dir)
    projection_prior = load_model("projection_prior", projection_dir) if projection_dir is not None else None
    samples: dict[str, Tensor] = {}
    results = measure_priors(
        cache.image_embedding[start:stop],
        cache.text[start:stop],
        null_text,
        diffusion_prior=diffusion_prior,
        diffusion=diffusion,
        ar_prior=ar_prior,
        projection_prior=projection_prior,
        train_mean=cache.image_embedding[:first_heldout].double().mean(0),
        diffusion_kwargs=diffusion_kwargs,
        ar_kwargs=ar_kwargs,
        batch_size=batch_size,
        seed=seed,
        samples_out=samples,
    )
    if references:
        results += same_caption_references(
            cache.captions,
            cache.image_embedding,
            cache.text.pooled,
            first_heldout,
            list(range(start, stop)),
            samples,
            seed=seed,
        )
    return results


def format_table(results: list[PriorQuality]) -> str:
    """A markdown table: method, cos to true z_i, cos to z_t (± standard error), rows, sampling seconds."""
    lines = [
        "| method | cos(ẑ, true z_i) | cos(ẑ, z_t) | rows | sampling s |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.method} | {r.cos_image:.4f} ± {r.cos_image_sem:.4f} | {r.cos_text:.4f} ± {r.cos_text_sem:.4f} "
            f"| {r.rows} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)


def results_to_json(results: list[PriorQuality]) -> list[dict[str, Any]]:
    """Plain dicts (for ``json.dumps``)."""
    return [asdict(r) for r in results]
