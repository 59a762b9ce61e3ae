"""PCA of CLIP image embeddings and per-component quantile quantisation (the AR prior's tokens).

The paper (§2.2) reduces z_i with PCA to the leading components that reconstruct it with < 1% mean squared
error (319 of 1024 for its CLIP) and quantises each component into 1024 buckets; a causal transformer then
predicts the bucket indices. This module holds that state:

- :func:`fit_pca` — float64 SVD of the centred data: mean, principal directions, per-component variances.
- :func:`num_components_for` — the smallest ``k`` whose relative reconstruction MSE on the data is below a
  threshold. Relative MSE = mean ||x − x̂||² / mean ||x − mean||² (the fraction of the variance the
  discarded components carry, so it does not depend on the embedding scale or mean).
- :class:`QuantileQuantizer` — ``F`` independent scalar quantisers, each with equal-mass buckets whose
  edges are training-data quantiles and whose decode value is the mean of the training values in the bucket.
- :class:`PCAQuantizer` — PCA (optionally whitened) followed by a :class:`QuantileQuantizer` per component.

All fitted state is kept in float64 buffers (saved in the state dict). ``module.to(dtype)`` moves them
between devices but never changes their dtype: quantile edges cast to half precision would collapse.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["PCAQuantizer", "QuantileQuantizer", "fit_pca", "num_components_for", "relative_mse_curve"]


class _Float64State(nn.Module):
    """A module whose buffers keep their dtype under ``.to(dtype)`` / ``.half()`` (device moves still apply)."""

    def _apply(self, fn, recurse=True):  # noqa: D401 - torch internal hook
        if recurse:
            for module in self.children():
                module._apply(fn)
        for name, buf in self._buffers.items():
            if buf is None:
                continue
            new = fn(buf)
            if new.dtype != buf.dtype:
                new = buf.to(device=new.device)
            self._buffers[name] = new
        return self

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call .fit(data) or load a fitted state dict")


def fit_pca(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Principal components of ``x`` in float64.

    Args:
        x: [N, D] data (any float dtype), N >= 2.

    Returns:
        ``(mean [D], components [R, D], variances [R])`` in float64, R = min(N, D); rows of ``components``
        are orthonormal directions sorted by decreasing variance (population variance, divided by N), each
        signed so that its largest-magnitude entry is positive (a deterministic convention).
    """
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"fit_pca needs [N >= 2, D] data, got shape {tuple(x.shape)}")
    x64 = x.detach().to(torch.float64)
    if not torch.isfinite(x64).all():
        raise ValueError("fit_pca: data contains NaN or infinite values")
    mean = x64.mean(0)
    _, s, vh = torch.linalg.svd(x64 - mean, full_matrices=False)
    idx = vh.abs().argmax(dim=1, keepdim=True)
    signs = torch.sign(vh.gather(1, idx))
    signs[signs == 0] = 1.0
    return mean, vh * signs, s.square() / x64.shape[0]


def relative_mse_curve(variances: Tensor) -> Tensor:
    """[R] variances -> [R + 1] relative reconstruction MSE when keeping k = 0..R components."""
    v = variances.to(torch.float64)
    total = v.sum()
    if total <= 0:
        return torch.zeros(v.numel() + 1, dtype=torch.float64)
    tail = torch.cat([v.flip(0).cumsum(0).flip(0), v.new_zeros(1)])
    return tail / total


def num_components_for(x: Tensor, max_rel_mse: float = 0.01) -> int:
    """Smallest k >= 1 whose PCA reconstruction of ``x`` [N, D] has relative MSE < ``max_rel_mse``."""
    if not 0.0 < max_rel_mse < 1.0:
        raise ValueError(f"max_rel_mse must be in (0, 1), got {max_rel_mse}")
    _, _, variances = fit_pca(x)
    curve = relative_mse_curve(variances)
    below = (curve[1:] < max_rel_mse).nonzero()
    return int(below[0].item()) + 1 if below.numel() else variances.numel()


class QuantileQuantizer(_Float64State):
    """``num_features`` scalar quantisers with ``num_buckets`` equal-mass buckets each.

    Bucket ``b`` of feature ``f`` is ``[edges[f, b-1], edges[f, b])`` (the first and last are open-ended);
    ``edges[f]`` are the training quantiles at levels ``1/nb, ..., (nb-1)/nb``. ``centres[f, b]`` is the
    mean of the training values that fell in the bucket (the quantile at ``(b + 0.5)/nb`` for an empty one).
    """

    def __init__(self, num_features: int, num_buckets: int = 1024):
        super().__init__()
        if num_features < 1 or num_buckets < 2:
            raise ValueError(f"need num_features >= 1 and num_buckets >= 2, got {num_features}, {num_buckets}")
        self.num_features = num_features
        self.num_buckets = num_buckets
        f64 = torch.float64
        self.register_buffer("edges", torch.zeros(num_features, num_buckets - 1, dtype=f64))
        self.register_buffer("centres", torch.zeros(num_features, num_buckets, dtype=f64))
        self.register_buffer("lo", torch.zeros(num_features, dtype=f64))
        self.register_buffer("hi", torch.zeros(num_features, dtype=f64))
        self.register_buffer("fitted", torch.tensor(False))

    @staticmethod
    def _quantiles(sorted_x: Tensor, levels: Tensor) -> Tensor:
        """sorted_x [N, F], levels [Q] in [0, 1] -> [F, Q] linearly interpolated quantiles."""
        n = sorted_x.shape[0]
        pos = levels * (n - 1)
        i0 = pos.floor().long().clamp(0, n - 1)
        i1 = (i0 + 1).clamp(max=n - 1)
        w = (pos - i0.to(pos.dtype)).unsqueeze(1)
        return (sorted_x[i0] * (1 - w) + sorted_x[i1] * w).T

    @torch.no_grad()
    def fit(self, x: Tensor) -> QuantileQuantizer:
        """Fit edges and centres on ``x`` [N, num_features] (N >= 2)."""
        if x.ndim != 2 or x.shape[1] != self.num_features or x.shape[0] < 2:
            raise ValueError(f"expected [N >= 2, {self.num_features}] data, got shape {tuple(x.shape)}")
        x64 = x.detach().to(device=self.edges.device, dtype=torch.float64)
        if not torch.isfinite(x64).all():
            raise ValueError("QuantileQuantizer.fit: data contains NaN or infinite values")
        nb = self.num_buckets
        sorted_x = x64.sort(0).values
        levels = torch.arange(1, nb, dtype=torch.float64, device=x64.device) / nb
        self.edges.copy_(self._quantiles(sorted_x, levels))
        self.lo.copy_(sorted_x[0])
        self.hi.copy_(sorted_x[-1])
        self.fitted.fill_(True)
        idx = self.encode(x64)  # [N, F]
        sums = torch.zeros_like(self.centres).scatter_add_(1, idx.T, x64.T)
        counts = torch.zeros_like(self.centres).scatter_add_(1, idx.T, torch.ones_like(x64.T))
        mid_levels = (torch.arange(nb, dtype=torch.float64, device=x64.device) + 0.5) / nb
        fallback = self._quantiles(sorted_x, mid_levels)
        self.centres.copy_(torch.where(counts > 0, sums / counts.clamp(min=1), fallback))
        return self

    def encode(self, x: Tensor) -> Tensor:
        """[..., F] values -> [..., F] long bucket indices in [0, num_buckets)."""
        self._check_fitted()
        if x.shape[-1] != self.num_features:
            raise ValueError(f"expected last dim {self.num_features}, got shape {tuple(x.shape)}")
        flat = x.detach().to(dtype=torch.float64).reshape(-1, self.num_features).T.contiguous()  # [F, M]
        idx = torch.searchsorted(self.edges, flat, right=True)  # number of edges <= x
        return idx.T.reshape(x.shape)

    def decode(self, idx: Tensor) -> Tensor:
        """[..., F] long bucket indices -> [..., F] float64 bucket centres."""
        self._check_fitted()
        if idx.shape[-1] != self.num_features:
            raise ValueError(f"expected last dim {self.num_features}, got shape {tuple(idx.shape)}")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_buckets):
            raise ValueError(
                f"bucket indices must be in [0, {self.num_buckets}), got [{int(idx.min())}, {int(idx.max())}]"
            )
        flat = idx.reshape(-1, self.num_features).T  # [F, M]
        return self.centres.gather(1, flat).T.reshape(idx.shape)

    def bucket_bounds(self) -> tuple[Tensor, Tensor]:
        """``(lower [F, nb], upper [F, nb])`` bounds of each bucket, the outer ones closed by the training min/max."""
        lower = torch.cat([self.lo[:, None], self.edges], dim=1)
        upper = torch.cat([self.edges, self.hi[:, None]], dim=1)
        return lower, upper


class PCAQuantizer(_Float64State):
    """PCA to ``num_components`` coefficients (optionally whitened), each quantised into ``num_buckets``.

    ``encode`` maps image embeddings [..., D] to tokens [..., K]; ``decode`` maps tokens back to embeddings
    through the bucket centres and the inverse PCA. ``project`` / ``unproject`` are the exact linear maps.
    """

    def __init__(self, dim: int, num_components: int, num_buckets: int = 1024, whiten: bool = False):
        super().__init__()
        if not 1 <= num_components <= dim:
            raise ValueError(f"num_components must be in [1, dim={dim}], got {num_components}")
        self.dim = dim
        self.num_components = num_components
        self.whiten = whiten
        f64 = torch.float64
        self.register_buffer("mean", torch.zeros(dim, dtype=f64))
        self.register_buffer("components", torch.zeros(num_components, dim, dtype=f64))
        self.register_buffer("scale", torch.ones(num_components, dtype=f64))
        self.register_buffer("variances", torch.zeros(num_components, dtype=f64))
        self.register_buffer("fitted", torch.tensor(False))
        self.quantizer = QuantileQuantizer(num_components, num_buckets)

    @torch.no_grad()
    def fit(self, x: Tensor) -> dict[str, float]:
        """Fit the PCA and the bucket quantisers on ``x`` [N, D]; returns fit statistics:
        ``rel_mse_pca`` (relative MSE of the K-component projection) and ``rel_mse_quantized``
        (of the full encode -> decode round trip), both on ``x``."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected [N, {self.dim}] data, got shape {tuple(x.shape)}")
        if x.shape[0] <= self.num_components:
            raise ValueError(f"need more samples ({x.shape[0]}) than components ({self.num_components})")
        mean, comps, variances = fit_pca(x)
        k = self.num_components
        self.mean.copy_(mean)
        self.components.copy_(comps[:k])
        self.variances.copy_(variances[:k])
        self.scale.copy_(variances[:k].clamp(min=1e-24).sqrt() if self.whiten else torch.ones_like(variances[:k]))
        self.fitted.fill_(True)
        coeffs = self.project(x.to(torch.float64))
        self.quantizer.fit(coeffs)
        x64 = x.to(device=self.mean.device, dtype=torch.float64)
        total = (x64 - mean).square().sum(-1).mean()
        pca_err = (self.unproject(coeffs) - x64).square().sum(-1).mean()
        q_err = (self.decode(self.encode(x64), dtype=torch.float64) - x64).square().sum(-1).mean()
        return {"rel_mse_pca": float(pca_err / total), "rel_mse_quantized": float(q_err / total)}

    def project(self, x: Tensor) -> Tensor:
        """[..., D] -> [..., K] PCA coefficients (divided by sqrt(variance) when whitening), float64."""
        self._check_fitted()
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected last dim {self.dim}, got shape {tuple(x.shape)}")
        x64 = x.to(device=self.mean.device, dtype=torch.float64)
        return ((x64 - self.mean) @ self.components.T) / self.scale

    def unproject(self, coeffs: Tensor) -> Tensor:
        """[..., K] coefficients -> [..., D] embeddings, float64."""
        self._check_fitted()
        if coeffs.shape[-1] != self.num_components:
            raise ValueError(f"expected last dim {self.num_components}, got shape {tuple(coeffs.shape)}")
        c64 = coeffs.to(device=self.mean.device, dtype=torch.float64)
        return (c64 * self.scale) @ self.components + self.mean

    def encode(self, x: Tensor) -> Tensor:
        """[..., D] embeddings -> [..., K] long tokens in [0, num_buckets)."""
        return self.quantizer.encode(self.project(x))

    def decode(self, tokens: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """[..., K] long tokens -> [..., D] embeddings in ``dtype``."""
        return self.unproject(self.quantizer.decode(tokens)).to(dtype)
