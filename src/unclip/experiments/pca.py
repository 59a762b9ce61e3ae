"""Experiment 8, PCA of CLIP image embeddings: how many components reconstruct z_i with < 1% relative
MSE (paper: 319 of 1,024), and which attributes the leading components carry.

The PCA is fitted on the training rows of the shapes cache (:func:`unclip.models.pca_quantizer.fit_pca`,
the AR prior's own PCA). For k = 1, 2, 4, ... components, a linear probe per attribute
(:mod:`unclip.experiments.probe`) is fitted on the k PCA coefficients of one-object training rows and
scored on the held-out rows. ``k90`` of an attribute is the smallest k whose probe closes 90% of the gap
between chance (majority class) and the probe on all of z_i.

Verdict: the claim "early components predict coarse attributes" holds when the median ``k90`` of the coarse
attributes (background, colour, size, position: large areas of pixels) is below that of the fine ones
(shape, fill: the object's outline). Only attributes that z_i encodes count: those whose probe on all of
z_i closes at least 20% of the gap from chance to perfect; without an encoded attribute on either side the
verdict is inconclusive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from unclip.experiments.common import (
    ExperimentContext,
    ExperimentResult,
    ExperimentSpec,
    Progress,
    ResultStore,
    Verdict,
    markdown_table,
    new_figure,
)
from unclip.experiments.probe import (
    PROBE_ATTRIBUTES,
    majority_accuracy,
    majority_label,
    normalised_above_chance,
    one_object_labels,
    probe_correct,
)
from unclip.experiments.verdicts import PCA_COARSE as COARSE
from unclip.experiments.verdicts import PCA_ENCODED_MIN as ENCODED_MIN
from unclip.experiments.verdicts import PCA_FINE as FINE
from unclip.experiments.verdicts import (
    bootstrap_interval,
    bootstrap_intervals,
    format_interval,
    pca_encoded,
    pca_verdict,
)


@dataclass
class PCASettings:
    """train_rows: training rows used for the PCA and probes (None = all); ks: component counts probed."""

    train_rows: int | None = 10000
    ks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    max_rel_mse: float = 0.01


def run(ctx: ExperimentContext, s: PCASettings) -> ExperimentResult:
    from unclip.models.pca_quantizer import fit_pca, relative_mse_curve

    cache = ctx.get_cache()
    store = ResultStore(ctx.run_dir("pca", uses=("cache",)) / "units")
    n_train = len(cache) - ctx.holdout
    train = list(range(n_train if s.train_rows is None else min(n_train, s.train_rows)))
    test = ctx.heldout_rows()
    z = cache.image_embedding.double()
    mean, comps, var = fit_pca(z[train])
    curve = relative_mse_curve(var)
    dim = z.shape[1]
    below = (curve[1:] < s.max_rel_mse).nonzero()
    k_needed = int(below[0]) + 1 if below.numel() else int(var.numel())
    centred_test = z[test] - mean
    proj = centred_test @ comps[:k_needed].T @ comps[:k_needed]
    row_err = (centred_test - proj).square().sum(1).numpy()
    row_norm = centred_test.square().sum(1).numpy()
    heldout_rel = float(row_err.mean() / row_norm.mean())
    rel_interval = bootstrap_interval([len(test)], lambda i: row_err[i].sum() / row_norm[i].sum(), seed=ctx.seed)

    tr_rows, tr_labels = one_object_labels(cache.records, train)
    te_rows, te_labels = one_object_labels(cache.records, test)
    coeff_tr = (z[tr_rows] - mean) @ comps.T
    coeff_te = (z[te_rows] - mean) @ comps.T
    ks = sorted({k for k in s.ks if k < dim} | {dim})
    progress = Progress("pca", len(ks) * len(PROBE_ATTRIBUTES), ctx.log)
    correct: dict[str, dict[int, np.ndarray]] = {a: {} for a in PROBE_ATTRIBUTES}
    for k in ks:
        for a in PROBE_ATTRIBUTES:
            correct[a][k] = np.asarray(progress.unit(
                store, f"probe_rows_{a}_k{k}",
                lambda k=k, a=a: probe_correct(coeff_tr[:, :k], tr_labels[a], coeff_te[:, :k], te_labels[a]),
                f"probe {a} on {k} components",
            ), dtype=float)  # fmt: skip
    acc = {a: {str(k): float(correct[a][k].mean()) for k in ks} for a in PROBE_ATTRIBUTES}
    chance = {a: majority_accuracy(tr_labels[a], te_labels[a]) for a in PROBE_ATTRIBUTES}
    is_majority = {a: np.asarray([t == majority_label(tr_labels[a]) for t in te_labels[a]], dtype=float)
                   for a in PROBE_ATTRIBUTES}  # fmt: skip
    k90, above = _k90(correct, is_majority, ks, dim, slice(None))
    encoded = pca_encoded(above)
    rel_text = f"{100 * heldout_rel:.2f}% [{100 * rel_interval[0]:.2f}%, {100 * rel_interval[1]:.2f}%]"
    count = (f"{k_needed} of {dim} components ({100 * k_needed / dim:.0f}%) reconstruct z_i with < 1% relative MSE "
             f"(held-out {rel_text}; paper 319/1024 = 31%)")  # fmt: skip
    missing = [a for a in PROBE_ATTRIBUTES if a not in encoded]
    unenc = f"; not encoded by z_i (probe within {ENCODED_MIN:.0%} of chance): {', '.join(missing)}" if missing else ""
    order = ", ".join(f"{a} {k90[a]}" for a in sorted(encoded, key=lambda a: k90[a]))
    held, coarse, fine = pca_verdict(k90, above)
    n_te = len(te_rows)

    def statistics(rows: np.ndarray) -> list[float]:
        k, ab = _k90(correct, is_majority, ks, dim, rows)
        return [*_median_k90(k, ab), *[np.nan if k[a] is None else k[a] for a in encoded],
                *[correct[a][k_][rows].mean() for a in PROBE_ATTRIBUTES for k_ in ks]]  # fmt: skip

    intervals = bootstrap_intervals([n_te], statistics, seed=ctx.seed)  # one resample for every statistic
    coarse_ci, fine_ci = intervals[:2]
    k90_ci = dict(zip(encoded, intervals[2 : 2 + len(encoded)]))
    acc_ci = intervals[2 + len(encoded) :]  # attribute-major, then k
    full_acc_ci = {a: acc_ci[n * len(ks) + ks.index(dim)] for n, a in enumerate(PROBE_ATTRIBUTES)}
    if held is not None:
        medians = (f"median k90 coarse {coarse:g} [{coarse_ci[0]:g}, {coarse_ci[1]:g}] vs fine {fine:g} "
                   f"[{fine_ci[0]:g}, {fine_ci[1]:g}]")  # fmt: skip
        verdict = Verdict(held, f"{count}; {medians} (k90: {order}){unenc}.")
    else:
        verdict = Verdict(None, f"{count}; early vs late cannot be compared (k90: {order}){unenc}.")
    header = ["attribute", "chance", *[f"k={k}" for k in ks], "above chance (all of z_i)", "k90"]
    rows = [[a, chance[a], *[acc[a][str(k)] for k in ks], above[a], k90[a] if a in encoded else "not encoded"]
            for a in PROBE_ATTRIBUTES]  # fmt: skip
    ci_rows = [[a, format_interval(acc[a][str(dim)], full_acc_ci[a], 3),
                f"{k90[a]} [{k90_ci[a][0]:g}, {k90_ci[a][1]:g}]" if a in encoded else "not encoded"]
               for a in PROBE_ATTRIBUTES]  # fmt: skip
    table = (
        f"Components for < {100 * s.max_rel_mse:g}% relative MSE: **{k_needed} / {dim}** "
        f"(held-out relative MSE at that k: {rel_text}, 95% bootstrap interval over held-out rows).\n\n"
        "Held-out accuracy of a linear probe on the first k PCA coefficients (one-object scenes):\n\n"
        + markdown_table(header, rows)
        + "\n\n95% bootstrap intervals (the probes fitted once; their held-out rows resampled):\n\n"
        + markdown_table(["attribute", f"probe accuracy on all {dim} components", "k90"], ci_rows)
    )
    fig, (ax1, ax2) = new_figure(2)
    kk = torch.arange(0, var.numel() + 1)
    ax1.semilogy(kk.numpy(), curve.clamp(min=1e-12).numpy())
    ax1.axhline(s.max_rel_mse, color="grey", ls="--", lw=1)
    ax1.axvline(k_needed, color="C3", ls=":", lw=1, label=f"k = {k_needed}")
    ax1.set(xlabel="components kept", ylabel="relative reconstruction MSE", title="PCA of z_i")
    ax1.legend()
    for n, a in enumerate(PROBE_ATTRIBUTES):
        line = ax2.plot(ks, [acc[a][str(k)] for k in ks], marker="o", label=a, ls="-" if a in COARSE else "--")[0]
        band = acc_ci[n * len(ks) : (n + 1) * len(ks)]
        ax2.fill_between(ks, [b[0] for b in band], [b[1] for b in band], color=line.get_color(), alpha=0.15, lw=0)
    ax2.set_xscale("log", base=2)
    ax2.set(xlabel="leading components k", ylabel="probe accuracy (held out)", title="What early components carry")
    ax2.legend(fontsize=8)
    data = {
        "dim": dim, "components_below_threshold": k_needed, "threshold": s.max_rel_mse,
        "heldout_rel_mse_at_k": heldout_rel, "heldout_rel_mse_interval": rel_interval,
        "probe_accuracy_interval_all_components": full_acc_ci, "k90_interval": k90_ci,
        "median_k90_coarse_interval": coarse_ci, "median_k90_fine_interval": fine_ci,
        "rel_mse_curve": curve[: min(len(curve), 257)].tolist(),
        "probe_accuracy": acc, "chance": chance, "above_chance": above, "encoded": encoded, "k90": k90,
        "median_k90_coarse": coarse, "median_k90_fine": fine,
        "train_rows": len(train), "probe_train_rows": len(tr_rows), "probe_test_rows": len(te_rows),
    }  # fmt: skip
    notes = (
        f"Coarse attributes: {', '.join(COARSE)}; fine: {', '.join(FINE)}. PCA on {len(train)} training rows of the "
        f"cache; probes on {len(tr_rows)} one-object training rows, scored on {len(te_rows)} held-out rows."
    )
    return ExperimentResult(verdict, table, data, fig, notes)


def _k90(
    correct: dict[str, dict[int, np.ndarray]], is_majority: dict[str, np.ndarray], ks: list[int], dim: int, rows
) -> tuple[dict[str, int | None], dict[str, float]]:
    """(k90 per attribute, None where z_i does not encode it; above-chance accuracy on all of z_i) from the
    held-out rows ``rows`` (a slice or bootstrap indices) of the per-row probe results ``correct[a][k]``."""
    acc = {a: {k: float(correct[a][k][rows].mean()) for k in ks} for a in correct}
    chance = {a: float(is_majority[a][rows].mean()) for a in correct}
    above = {a: normalised_above_chance(acc[a][dim], chance[a]) for a in correct}
    k90: dict[str, int | None] = dict.fromkeys(correct)
    for a in pca_encoded(above):
        target = chance[a] + 0.9 * (acc[a][dim] - chance[a])
        k90[a] = next((k for k in ks if acc[a][k] >= target), dim)
    return k90, above


def _median_k90(k90: dict[str, int | None], above: dict[str, float]) -> tuple[float, float]:
    """The verdict's coarse and fine median k90 (NaN for a side with no encoded attribute)."""
    _, coarse, fine = pca_verdict(k90, above)
    return (np.nan if coarse is None else coarse), (np.nan if fine is None else fine)


SPEC = ExperimentSpec(
    number=8,
    name="pca",
    title="PCA of the CLIP image embedding",
    claim="Few principal components reconstruct z_i with < 1% MSE, and the earliest ones carry coarse attributes.",
    paper="(Paper: 319 of 1,024 components for ViT-H/16's z_i; early components keep coarse semantics.)",
    needs=("cache",),
    cpu_budget={"quick": "~1 CPU-min", "full": "~3 CPU-min"},
    settings={"quick": PCASettings(), "full": PCASettings(train_rows=None, ks=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64))},
    run=run,
)
