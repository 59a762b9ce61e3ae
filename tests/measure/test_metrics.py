"""Metrics against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unclip.measure.metrics import (
    accuracy,
    binomial_stderr,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    normalized_entropy,
)


def _samples_with_exact_stats(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n samples whose empirical mean and unbiased covariance are exactly ``mean`` and ``cov``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, mean.size))
    x -= x.mean(0)
    # whiten to identity empirical covariance, then colour with chol(cov)
    emp = np.cov(x, rowvar=False)
    x = x @ np.linalg.inv(np.linalg.cholesky(emp)).T
    return x @ np.linalg.cholesky(cov).T + mean


def test_frechet_distance_diagonal_closed_form():
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    a = _samples_with_exact_stats(mu_a, np.diag(sd_a**2), 500, 0)
    b = _samples_with_exact_stats(mu_b, np.diag(sd_b**2), 700, 1)
    # for diagonal covariances: |mu_a - mu_b|^2 + sum (sd_a - sd_b)^2
    want = ((mu_a - mu_b) ** 2).sum() + ((sd_a - sd_b) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(want, rel=1e-9, abs=1e-9)
    assert frechet_distance(torch.from_numpy(a).float(), torch.from_numpy(b).float()) == pytest.approx(want, rel=1e-5)


def test_frechet_distance_rotation_invariant_and_commuting_case():
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    # commuting covariances Q diag(l) Q^T: tr sqrt(A B) = sum sqrt(l_a l_b)
    la, lb = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 1.0, 0.5])
    cov_a, cov_b = q @ np.diag(la) @ q.T, q @ np.diag(lb) @ q.T
    mu_a, mu_b = rng.standard_normal(4), rng.standard_normal(4)
    want = ((mu_a - mu_b) ** 2).sum() + la.sum() + lb.sum() - 2 * np.sqrt(la * lb).sum()
    assert frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) == pytest.approx(want, rel=1e-10)
    a = _samples_with_exact_stats(mu_a, cov_a, 300, 4)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    mu, cov = gaussian_stats(a)
    assert np.allclose(mu, mu_a) and np.allclose(cov, cov_a)


def test_frechet_distance_validates_input():
    with pytest.raises(ValueError, match="widths differ"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(np.full((3, 2), np.nan), np.zeros((5, 2)))


def test_normalized_entropy():
    assert normalized_entropy(["a"] * 10, 4) == 0.0
    assert normalized_entropy([0, 1, 2, 3] * 5, 4) == pytest.approx(1.0)
    p = np.array([0.5, 0.25, 0.25])
    want = -(p * np.log(p)).sum() / math.log(8)
    assert normalized_entropy(torch.tensor([0, 0, 1, 2]), 8) == pytest.approx(want)
    with pytest.raises(ValueError, match="num_classes"):
        normalized_entropy([0, 1, 2], 2)


def test_accuracy_helpers():
    assert accuracy(["a", "b", "c", "d"], ["a", "x", "c", "d"]) == 0.75
    assert accuracy(torch.tensor([1, 2]), torch.tensor([1, 2])) == 1.0
    assert binomial_stderr(0.5, 100) == pytest.approx(0.05)
    with pytest.raises(ValueError):
        accuracy([1], [1, 2])
