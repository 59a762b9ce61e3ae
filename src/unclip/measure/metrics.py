"""Metrics for generated images: Fréchet distance of feature sets, normalised entropy, accuracy.

All statistics are computed in float64 on CPU.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray | Sequence[Sequence[float]]


def _as_float64(feats: ArrayLike, name: str) -> np.ndarray:
    arr = feats.detach().cpu().double().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats, np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a [N, F] feature matrix, got shape {arr.shape}")
    if arr.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 feature vectors to estimate a covariance, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values")
    return arr


def gaussian_stats(feats: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean [F] and unbiased covariance [F, F] (float64) of features [N, F]."""
    arr = _as_float64(feats, "feats")
    return arr.mean(axis=0), np.cov(arr, rowvar=False).reshape(arr.shape[1], arr.shape[1])


def _psd_sqrt(mat: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((mat + mat.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance_from_stats(mu_a: np.ndarray, cov_a: np.ndarray, mu_b: np.ndarray, cov_b: np.ndarray) -> float:
    """Fréchet distance between N(mu_a, cov_a) and N(mu_b, cov_b):
    ``|mu_a - mu_b|^2 + tr(cov_a + cov_b - 2 (cov_a^{1/2} cov_b cov_a^{1/2})^{1/2})``.

    The matrix square root is taken of the symmetric PSD form ``cov_a^{1/2} cov_b cov_a^{1/2}``
    (same trace as ``(cov_a cov_b)^{1/2}``) by eigendecomposition, so no complex parts arise.
    """
    mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
    cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != (mu_a.size, mu_a.size):
        raise ValueError(f"mismatched statistics: means {mu_a.shape}, {mu_b.shape}; covs {cov_a.shape}, {cov_b.shape}")
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_cross)


def frechet_distance(feats_a: ArrayLike, feats_b: ArrayLike) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N_a, F] and [N_b, F] (float64).

    With oracle features (:func:`unclip.measure.oracle.oracle_features`) this is the domain FID.
    """
    a, b = _as_float64(feats_a, "feats_a"), _as_float64(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def normalized_entropy(labels: Sequence[Hashable] | torch.Tensor | np.ndarray, num_classes: int) -> float:
    """Entropy of the empirical distribution of ``labels`` divided by ``log(num_classes)``: 0 when every
    label is the same, 1 when all ``num_classes`` classes are equally frequent."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    if isinstance(labels, (torch.Tensor, np.ndarray)):
        labels = labels.tolist()
    labels = list(labels)
    if not labels:
        raise ValueError("normalized_entropy needs at least one label")
    counts = Counter(labels)
    if len(counts) > num_classes:
        raise ValueError(f"{len(counts)} distinct labels but num_classes={num_classes}")
    n = len(labels)
    h = -sum((c / n) * math.log(c / n) for c in counts.values())
    return h / math.log(num_classes)


def accuracy(predictions: Sequence[Hashable] | torch.Tensor, targets: Sequence[Hashable] | torch.Tensor) -> float:
    """Fraction of positions where ``predictions`` equals ``targets`` (same length, at least one)."""
    p = predictions.tolist() if isinstance(predictions, torch.Tensor) else list(predictions)
    t = targets.tolist() if isinstance(targets, torch.Tensor) else list(targets)
    if len(p) != len(t) or not p:
        raise ValueError(f"accuracy needs two equally long non-empty sequences, got {len(p)} and {len(t)}")
    return sum(a == b for a, b in zip(p, t)) / len(p)


def binomial_stderr(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` independent samples."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.sqrt(max(p * (1 - p), 0.0) / n)
