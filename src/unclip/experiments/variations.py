"""Experiment 5, variations keep what CLIP encodes: per-attribute preservation of image variations vs how
well a linear probe reads that attribute from z_i.

1. Probes (:mod:`unclip.experiments.probe`) per attribute on z_i of one-object training rows of the
   cache, scored on the held-out rows.
2. Variations (the pipeline's ``vary``: DDIM-invert the decoder, decode the image's z_i with DDIM at
   eta = 1) of one-object scenes rendered from an unseen world seed; the oracle reads source renders and
   variations; preservation of an attribute = how often a variation's attribute equals the source's.

Raw rates are not comparable across attributes (2 sizes, 9 positions), so both are also normalised to
"above chance": probe (acc - majority) / (1 - majority); preservation (rate - Σp²) / (1 - Σp²), Σp² being
the agreement of two independent draws from the data's marginal. Verdict: Spearman correlation of the two
normalised scores over the 6 attributes: held when ρ ≥ 0.6, not held when ρ ≤ 0, else inconclusive.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from unclip.experiments.common import (
    ExperimentContext,
    ExperimentResult,
    ExperimentSpec,
    Progress,
    ResultStore,
    Verdict,
    error_bar_lengths,
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
from unclip.experiments.verdicts import bootstrap_intervals, format_interval, variations_verdict
from unclip.experiments.verdicts import spearman as _spearman


@dataclass
class VariationSettings:
    """probe_train_rows: cache rows for the probes; sources, variations: scenes and variations of each;
    steps: DDIM inversion and decoding steps; eta: variation noise; chunk: sources per work unit."""

    probe_train_rows: int = 10000
    sources: int = 24
    variations: int = 4
    steps: int = 25
    eta: float = 1.0
    chunk: int = 8


@torch.no_grad()
def batched_variations(
    pipe, images: list[Image.Image], num: int, eta: float, steps: int, generator: torch.Generator
) -> torch.Tensor:
    """``pipe.vary`` for several images at once: [len(images) * num, 3, S, S] in [-1, 1], image-major
    (:meth:`UnCLIPPipeline.sample_variations` with ``steps`` DDIM inversion and decoding steps)."""
    settings = replace(pipe.defaults, decoder_steps=steps)
    return pipe.sample_variations(images, num, eta, settings, generator).float().cpu()


def _attr(record: dict[str, Any], attribute: str) -> Any:
    if attribute == "background":
        return record["background"]
    return record["objects"][0][attribute] if record["objects"] else None


def run(ctx: ExperimentContext, s: VariationSettings) -> ExperimentResult:
    from unclip.data.shapes import ShapesWorld
    from unclip.measure.oracle import predict
    from unclip.measure.quality import held_out_captions

    cache = ctx.get_cache()
    store = ResultStore(ctx.run_dir("variations") / "units")
    n_train = len(cache) - ctx.holdout
    tr_rows, tr_labels = one_object_labels(cache.records, range(min(n_train, s.probe_train_rows)))
    te_rows, te_labels = one_object_labels(cache.records, ctx.heldout_rows())
    z = cache.image_embedding.double()
    chunks = list(range(0, s.sources, s.chunk))
    progress = Progress("variations", len(PROBE_ATTRIBUTES) + len(chunks), ctx.log)
    probe_rows = {
        a: np.asarray(progress.unit(store, f"probe_rows_{a}", lambda a=a: probe_correct(
            z[tr_rows], tr_labels[a], z[te_rows], te_labels[a]), f"probe {a}"), dtype=float)
        for a in PROBE_ATTRIBUTES
    }  # fmt: skip
    probe = {a: float(probe_rows[a].mean()) for a in PROBE_ATTRIBUTES}
    probe_chance = {a: majority_accuracy(tr_labels[a], te_labels[a]) for a in PROBE_ATTRIBUTES}
    is_majority = {a: np.asarray([t == majority_label(tr_labels[a]) for t in te_labels[a]], dtype=float)
                   for a in PROBE_ATTRIBUTES}  # fmt: skip
    marginal = {}
    for a in PROBE_ATTRIBUTES:
        counts = Counter(tr_labels[a])
        marginal[a] = sum((c / len(tr_labels[a])) ** 2 for c in counts.values())

    world = ShapesWorld(seed=ctx.seed)
    samples = held_out_captions(ctx.seed, s.sources, 1)

    def chunk_unit(start: int) -> dict[str, Any]:
        pipe, oracle = ctx.get_pipeline(), ctx.get_oracle()
        part = samples[start : start + s.chunk]
        renders = [Image.fromarray(world.render(x.scene, pipe.image_size)) for x in part]
        source_px = torch.stack([torch.from_numpy(np.array(r)).permute(2, 0, 1) for r in renders]).float()
        src_pred = predict(oracle, source_px / 127.5 - 1)
        images = batched_variations(pipe, renders, s.variations, s.eta, s.steps, ctx.generator(start))
        preds = predict(oracle, images.clamp(-1, 1))
        kept = {a: 0 for a in PROBE_ATTRIBUTES}
        truth_vs_var = {a: 0 for a in PROBE_ATTRIBUTES}
        oracle_ok = {a: 0 for a in PROBE_ATTRIBUTES}
        kept_each = {a: [0] * len(part) for a in PROBE_ATTRIBUTES}  # per source: variations keeping the true value
        for i, x in enumerate(part):
            for a in PROBE_ATTRIBUTES:
                oracle_ok[a] += _attr(src_pred[i], a) == _attr(x.record, a)
            for j in range(s.variations):
                p = preds[i * s.variations + j]
                for a in PROBE_ATTRIBUTES:
                    kept[a] += _attr(p, a) == _attr(src_pred[i], a)
                    truth_vs_var[a] += _attr(p, a) == _attr(x.record, a)
                    kept_each[a][i] += int(_attr(p, a) == _attr(x.record, a))
        return {"sources": len(part), "variations": len(part) * s.variations, "kept_vs_oracle_source": kept,
                "kept_vs_truth": truth_vs_var, "oracle_source_correct": oracle_ok, "kept_each": kept_each}  # fmt: skip

    units = [progress.unit(store, f"scenes_{c}", lambda c=c: chunk_unit(c), f"variations of sources {c}..")
             for c in chunks]  # fmt: skip
    n_var = sum(u["variations"] for u in units)
    n_src = sum(u["sources"] for u in units)
    kept = {a: sum(u["kept_vs_truth"][a] for u in units) / n_var for a in PROBE_ATTRIBUTES}
    kept_src = {a: sum(u["kept_vs_oracle_source"][a] for u in units) / n_var for a in PROBE_ATTRIBUTES}
    oracle_src = {a: sum(u["oracle_source_correct"][a] for u in units) / n_src for a in PROBE_ATTRIBUTES}
    probe_norm = {a: normalised_above_chance(probe[a], probe_chance[a]) for a in PROBE_ATTRIBUTES}
    kept_norm = {a: normalised_above_chance(kept[a], marginal[a]) for a in PROBE_ATTRIBUTES}
    rho = _spearman([probe_norm[a] for a in PROBE_ATTRIBUTES], [kept_norm[a] for a in PROBE_ATTRIBUTES])
    raw_rho = _spearman([probe[a] for a in PROBE_ATTRIBUTES], [kept[a] for a in PROBE_ATTRIBUTES])
    held = variations_verdict(rho)
    kept_each = np.asarray([[k for u in units for k in u["kept_each"][a]] for a in PROBE_ATTRIBUTES], dtype=float)

    def statistics(rows: np.ndarray, sources: np.ndarray) -> list[float]:
        p = [probe_rows[a][rows].mean() for a in PROBE_ATTRIBUTES]
        c = [is_majority[a][rows].mean() for a in PROBE_ATTRIBUTES]
        k = kept_each[:, sources].sum(1) / (len(sources) * s.variations)
        pn = [normalised_above_chance(x, y) for x, y in zip(p, c)]
        kn = [normalised_above_chance(x, marginal[a]) for x, a in zip(k, PROBE_ATTRIBUTES)]
        return [_spearman(pn, kn), _spearman(p, list(k)), *p, *k]

    ci = bootstrap_intervals([len(te_rows), n_src], statistics, seed=ctx.seed)
    rho_ci, raw_rho_ci = ci[0], ci[1]
    probe_ci = dict(zip(PROBE_ATTRIBUTES, ci[2 : 2 + len(PROBE_ATTRIBUTES)]))
    kept_ci = dict(zip(PROBE_ATTRIBUTES, ci[2 + len(PROBE_ATTRIBUTES) :]))
    order = sorted(PROBE_ATTRIBUTES, key=lambda a: -probe_norm[a])
    verdict = Verdict(held, f"Spearman ρ = {format_interval(rho, rho_ci)} between probe accuracy on z_i and "
                            f"preservation under variation (both above chance; raw rates ρ = "
                            f"{format_interval(raw_rho, raw_rho_ci)}); best kept: "
                            f"{max(PROBE_ATTRIBUTES, key=lambda a: kept_norm[a])}, least: "
                            f"{min(PROBE_ATTRIBUTES, key=lambda a: kept_norm[a])}.")  # fmt: skip
    header = ["attribute", "probe acc on z_i", "probe chance", "probe above chance", "kept in variations",
              "Σp² (chance)", "kept above chance", "kept vs oracle's read of source", "oracle on sources"]  # fmt: skip
    rows = [[a, format_interval(probe[a], probe_ci[a], 3), probe_chance[a], probe_norm[a],
             format_interval(kept[a], kept_ci[a], 3), marginal[a], kept_norm[a], kept_src[a], oracle_src[a]]
            for a in order]  # fmt: skip
    fig, (ax1, ax2) = new_figure(2)
    for ax, xs, ys, title in ((ax1, probe_norm, kept_norm, "above chance"), (ax2, probe, kept, "raw rates")):
        ax.scatter([xs[a] for a in PROBE_ATTRIBUTES], [ys[a] for a in PROBE_ATTRIBUTES])
        if title == "raw rates":
            ax.errorbar(
                [xs[a] for a in PROBE_ATTRIBUTES],
                [ys[a] for a in PROBE_ATTRIBUTES],
                fmt="none",
                lw=1,
                xerr=error_bar_lengths([xs[a] for a in PROBE_ATTRIBUTES], [probe_ci[a] for a in PROBE_ATTRIBUTES]),
                yerr=error_bar_lengths([ys[a] for a in PROBE_ATTRIBUTES], [kept_ci[a] for a in PROBE_ATTRIBUTES]),
            )
        for a in PROBE_ATTRIBUTES:
            ax.annotate(a, (xs[a], ys[a]), fontsize=8, xytext=(3, 3), textcoords="offset points")
        ax.set(xlabel="linear probe accuracy on z_i", ylabel="preserved under variation", title=title)
    data = {"probe_accuracy": probe, "probe_chance": probe_chance, "probe_above_chance": probe_norm,
            "preservation": kept, "marginal_agreement": marginal, "preservation_above_chance": kept_norm,
            "preservation_vs_oracle_source": kept_src, "oracle_accuracy_on_sources": oracle_src,
            "spearman_above_chance": rho, "spearman_raw": raw_rho, "spearman_above_chance_interval": rho_ci,
            "spearman_raw_interval": raw_rho_ci, "probe_accuracy_interval": probe_ci, "preservation_interval": kept_ci,
            "sources": n_src, "variations": n_var,
            "probe_train_rows": len(tr_rows), "probe_test_rows": len(te_rows)}  # fmt: skip
    notes = (f"{n_src} one-object scenes of world seed {ctx.seed} (never trained on), {s.variations} variations each "
             f"(DDIM inversion and decoding with {s.steps} steps, eta {s.eta}, the pipeline's decoder guidance "
             f"and upsampler). 'kept' compares the oracle's reading of a variation with the scene's true attribute; "
             f"'kept vs oracle's read of source' with the oracle's reading of the source render. Intervals: 95% "
             f"bootstrap, resampling held-out probe rows and source scenes independently.")  # fmt: skip
    return ExperimentResult(verdict, markdown_table(header, rows), data, fig, notes)


SPEC = ExperimentSpec(
    number=5,
    name="variations",
    title="Variations keep what CLIP encodes",
    claim="Image variations preserve the attributes that z_i encodes; the per-attribute preservation rate "
    "tracks how well a linear probe recovers the attribute from z_i.",
    paper="(Paper §3.1, Fig. 3: variations keep semantics and style, vary non-essential details.)",
    needs=("pipeline", "cache", "oracle"),
    cpu_budget={
        "quick": "~10 CPU-min (24 scenes x 4 variations, 25 steps)",
        "full": "~45 CPU-min (100 scenes x 4 variations, 50 steps)",
    },  # fmt: skip
    settings={"quick": VariationSettings(), "full": VariationSettings(probe_train_rows=29000, sources=100, steps=50)},
    run=run,
)
