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
    normalised_above_chance,
    one_object_labels,
    probe_accuracy,
)
from unclip.experiments.verdicts import PCA_COARSE as COARSE
from unclip.experiments.verdicts import PCA_ENCODED_MIN as ENCODED_MIN
from unclip.experiments.verdicts import PCA_FINE as FINE
from unclip.experiments.verdicts import pca_encoded, pca_verdict


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
    heldout_rel = float((centred_test - proj).square().sum(1).mean() / centred_test.square().sum(1).mean())

    tr_rows, tr_labels = one_object_labels(cache.records, train)
    te_rows, te_labels = one_object_labels(cache.records, test)
    coeff_tr = (z[tr_rows] - mean) @ comps.T
    coeff_te = (z[te_rows] - mean) @ comps.T
    ks = sorted({k for k in s.ks if k < dim} | {dim})
    progress = Progress("pca", len(ks) * len(PROBE_ATTRIBUTES), ctx.log)
    acc: dict[str, dict[str, float]] = {a: {} for a in PROBE_ATTRIBUTES}
    for k in ks:
        for a in PROBE_ATTRIBUTES:
            acc[a][str(k)] = progress.unit(
                store, f"probe_{a}_k{k}",
                lambda k=k, a=a: probe_accuracy(coeff_tr[:, :k], tr_labels[a], coeff_te[:, :k], te_labels[a]),
                f"probe {a} on {k} components",
            )  # fmt: skip
    chance = {a: majority_accuracy(tr_labels[a], te_labels[a]) for a in PROBE_ATTRIBUTES}
    above = {a: normalised_above_chance(acc[a][str(dim)], chance[a]) for a in PROBE_ATTRIBUTES}
    encoded = pca_encoded(above)
    k90: dict[str, int | None] = dict.fromkeys(PROBE_ATTRIBUTES)
    for a in encoded:
        target = chance[a] + 0.9 * (acc[a][str(dim)] - chance[a])
        k90[a] = next((k for k in ks if acc[a][str(k)] >= target), dim)
    count = (f"{k_needed} of {dim} components ({100 * k_needed / dim:.0f}%) reconstruct z_i with < 1% relative MSE "
             f"(held-out {100 * heldout_rel:.2f}%; paper 319/1024 = 31%)")  # fmt: skip
    missing = [a for a in PROBE_ATTRIBUTES if a not in encoded]
    unenc = f"; not encoded by z_i (probe within {ENCODED_MIN:.0%} of chance): {', '.join(missing)}" if missing else ""
    order = ", ".join(f"{a} {k90[a]}" for a in sorted(encoded, key=lambda a: k90[a]))
    held, coarse, fine = pca_verdict(k90, above)
    if held is not None:
        verdict = Verdict(held, f"{count}; median k90 coarse {coarse:g} vs fine {fine:g} (k90: {order}){unenc}.")
    else:
        verdict = Verdict(None, f"{count}; early vs late cannot be compared (k90: {order}){unenc}.")
    header = ["attribute", "chance", *[f"k={k}" for k in ks], "above chance (all of z_i)", "k90"]
    rows = [[a, chance[a], *[acc[a][str(k)] for k in ks], above[a], k90[a] if a in encoded else "not encoded"]
            for a in PROBE_ATTRIBUTES]  # fmt: skip
    table = (
        f"Components for < {100 * s.max_rel_mse:g}% relative MSE: **{k_needed} / {dim}** "
        f"(held-out relative MSE at that k: {100 * heldout_rel:.2f}%).\n\n"
        "Held-out accuracy of a linear probe on the first k PCA coefficients (one-object scenes):\n\n"
        + markdown_table(header, rows)
    )
    fig, (ax1, ax2) = new_figure(2)
    kk = torch.arange(0, var.numel() + 1)
    ax1.semilogy(kk.numpy(), curve.clamp(min=1e-12).numpy())
    ax1.axhline(s.max_rel_mse, color="grey", ls="--", lw=1)
    ax1.axvline(k_needed, color="C3", ls=":", lw=1, label=f"k = {k_needed}")
    ax1.set(xlabel="components kept", ylabel="relative reconstruction MSE", title="PCA of z_i")
    ax1.legend()
    for a in PROBE_ATTRIBUTES:
        ax2.plot(ks, [acc[a][str(k)] for k in ks], marker="o", label=a, ls="-" if a in COARSE else "--")
    ax2.set_xscale("log", base=2)
    ax2.set(xlabel="leading components k", ylabel="probe accuracy (held out)", title="What early components carry")
    ax2.legend(fontsize=8)
    data = {
        "dim": dim, "components_below_threshold": k_needed, "threshold": s.max_rel_mse,
        "heldout_rel_mse_at_k": heldout_rel, "rel_mse_curve": curve[: min(len(curve), 257)].tolist(),
        "probe_accuracy": acc, "chance": chance, "above_chance": above, "encoded": encoded, "k90": k90,
        "median_k90_coarse": coarse, "median_k90_fine": fine,
        "train_rows": len(train), "probe_train_rows": len(tr_rows), "probe_test_rows": len(te_rows),
    }  # fmt: skip
    notes = (
        f"Coarse attributes: {', '.join(COARSE)}; fine: {', '.join(FINE)}. PCA on {len(train)} training rows of the "
        f"cache; probes on {len(tr_rows)} one-object training rows, scored on {len(te_rows)} held-out rows."
    )
    return ExperimentResult(verdict, table, data, fig, notes)


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
