"""PCA + quantile quantiser: round trips, the component-count rule, bucket edges, state saving."""

import numpy as np
import pytest
import torch

from unclip.models.pca_quantizer import PCAQuantizer, QuantileQuantizer, fit_pca, num_components_for


def _low_rank_data(n=600, d=24, rank=6, noise=0.03, seed=0):
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(rank, d, generator=g, dtype=torch.float64)
    scales = torch.linspace(3.0, 0.5, rank, dtype=torch.float64)
    coeff = torch.randn(n, rank, generator=g, dtype=torch.float64) * scales
    return coeff @ basis + noise * torch.randn(n, d, generator=g, dtype=torch.float64) + 2.0


def test_fit_pca_matches_numpy_eigendecomposition():
    x = _low_rank_data()
    mean, comps, var = fit_pca(x)
    xn = x.numpy()
    cov = np.cov(xn, rowvar=False, bias=True)
    evals, evecs = np.linalg.eigh(cov)
    order = np.argsort(evals)[::-1]
    np.testing.assert_allclose(var.numpy(), evals[order], rtol=1e-8, atol=1e-12)
    # directions agree up to sign
    dots = np.abs(np.sum(comps.numpy()[:6] * evecs[:, order[:6]].T, axis=1))
    np.testing.assert_allclose(dots, 1.0, atol=1e-8)
    np.testing.assert_allclose(mean.numpy(), xn.mean(0), atol=1e-12)


@pytest.mark.parametrize("whiten", [False, True])
def test_pca_round_trip_all_components_is_exact(whiten):
    x = _low_rank_data(n=200, d=12, rank=12)
    pq = PCAQuantizer(12, 12, num_buckets=16, whiten=whiten)
    pq.fit(x)
    back = pq.unproject(pq.project(x))
    assert back.dtype == torch.float64
    torch.testing.assert_close(back, x, rtol=0, atol=1e-11)


def test_pca_k_components_equals_float64_svd_projection():
    x = _low_rank_data()
    k = 4
    pq = PCAQuantizer(x.shape[1], k, num_buckets=8)
    pq.fit(x)
    # independent reference: numpy SVD of the centred data
    xn = x.numpy()
    mu = xn.mean(0)
    _, _, vt = np.linalg.svd(xn - mu, full_matrices=False)
    ref = (xn - mu) @ vt[:k].T @ vt[:k] + mu
    np.testing.assert_allclose(pq.unproject(pq.project(x)).numpy(), ref, atol=1e-10)


def test_component_count_rule_is_smallest_k_below_one_percent():
    x = _low_rank_data(noise=0.05)
    k = num_components_for(x, max_rel_mse=0.01)
    xn = x.numpy()
    mu = xn.mean(0)
    _, _, vt = np.linalg.svd(xn - mu, full_matrices=False)

    def rel_mse(j):
        rec = (xn - mu) @ vt[:j].T @ vt[:j] + mu
        return np.mean(np.sum((rec - xn) ** 2, 1)) / np.mean(np.sum((xn - mu) ** 2, 1))

    assert rel_mse(k) < 0.01 <= rel_mse(k - 1)
    assert 1 < k < x.shape[1]
    pq = PCAQuantizer(x.shape[1], k, num_buckets=64)
    stats = pq.fit(x)
    assert stats["rel_mse_pca"] == pytest.approx(rel_mse(k), rel=1e-9)


def test_quantile_edges_are_training_quantiles_and_buckets_equal_mass():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4096, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 5.0, 0.1], dtype=torch.float64)
    q = QuantileQuantizer(3, num_buckets=16).fit(x)
    levels = np.arange(1, 16) / 16
    ref = np.quantile(x.numpy(), levels, axis=0).T  # numpy's default (linear) interpolation
    np.testing.assert_allclose(q.edges.numpy(), ref, rtol=0, atol=1e-12)
    counts = torch.stack([torch.bincount(q.encode(x)[:, f], minlength=16) for f in range(3)])
    assert counts.min() >= 4096 // 16 - 1 and counts.max() <= 4096 // 16 + 1


def test_quantization_round_trip_within_bucket_width():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2000, 5, generator=g, dtype=torch.float64).exp()  # skewed
    q = QuantileQuantizer(5, num_buckets=1024).fit(x)
    idx = q.encode(x)
    assert idx.dtype == torch.long and int(idx.min()) >= 0 and int(idx.max()) < 1024
    lower, upper = q.bucket_bounds()
    lo = lower.T.gather(0, idx)  # [N, F]
    hi = upper.T.gather(0, idx)
    assert bool(((x >= lo) & (x <= hi)).all())
    err = (q.decode(idx) - x).abs()
    assert bool((err <= hi - lo + 1e-12).all())
    # centres are the means of the training values in the bucket
    f, b = 2, int(idx[0, 2])
    members = x[idx[:, f] == b, f]
    assert q.centres[f, b].item() == pytest.approx(members.mean().item(), rel=1e-12)


def test_pca_quantizer_encode_decode_small_error_and_state_dict_roundtrip():
    x = _low_rank_data(n=3000, d=16, rank=4, noise=0.01)
    pq = PCAQuantizer(16, 4, num_buckets=256, whiten=True)
    stats = pq.fit(x)
    assert stats["rel_mse_quantized"] < 0.01
    tokens = pq.encode(x[:10])
    assert tokens.shape == (10, 4)
    out = pq.decode(tokens)
    assert out.dtype == torch.float32 and out.shape == (10, 16)
    # state lives in buffers; it saves, loads and survives dtype casts
    pq2 = PCAQuantizer(16, 4, num_buckets=256, whiten=True)
    pq2.load_state_dict(pq.state_dict())
    pq2 = pq2.to(torch.bfloat16)
    assert pq2.quantizer.edges.dtype == torch.float64
    assert torch.equal(pq2.encode(x[:10]), tokens)


def test_unfitted_and_bad_inputs_raise():
    pq = PCAQuantizer(8, 3)
    with pytest.raises(RuntimeError, match="not fitted"):
        pq.encode(torch.zeros(2, 8))
    with pytest.raises(ValueError, match="num_components"):
        PCAQuantizer(8, 9)
    q = QuantileQuantizer(2, 4).fit(torch.randn(50, 2))
    with pytest.raises(ValueError, match="bucket indices"):
        q.decode(torch.tensor([[0, 4]]))
