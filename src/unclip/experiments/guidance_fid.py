"""Experiment 4, guidance hurts unCLIP less: domain Fréchet distance (oracle features) against decoder
guidance, unCLIP vs the caption-only baseline (same decoder size and training recipe, see
:mod:`unclip.experiments.models`).

Captions: the first ``rows`` held-out cache rows (one image each, decoded at the base resolution). Reference:
the real images of the last ``reference`` held-out rows (disjoint). The FD of the real images of the
caption rows to the same reference is the floor (sampling noise at this N). Competence gate: both decoders must
reach a mean specified-attribute accuracy of 0.7 at their best guidance of the sweep. Verdict: held when
unCLIP's FD rises less from its best guidance to the largest guidance than the baseline's does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from unclip.experiments.common import (
    ExperimentContext,
    ExperimentResult,
    ExperimentSpec,
    Progress,
    Verdict,
    competence_gate,
    error_bar_lengths,
    markdown_table,
    new_figure,
)
from unclip.experiments.models import FULL_DECODERS, QUICK_DECODERS, DecoderBudget
from unclip.experiments.sweep import (
    SETTING_LABELS,
    decoder_for,
    real_features,
    real_scores,
    row_sweep_unit,
    summarise_scores,
    unit_intervals,
    unit_key,
)
from unclip.experiments.verdicts import COMPETENCE_MIN, fd_rise, format_interval, guidance_fid_verdict


@dataclass
class SweepSettings:
    """rows: captions (held-out rows) per unit; reference: real held-out rows for the FD reference (taken
    from the end of the held-out range, disjoint from ``rows``); guidances: decoder guidance scales;
    steps: DDPM decoder steps; decoders: the compared decoders' training recipe; competence_min: the
    competence gate's accuracy."""

    rows: int = 200
    reference: int = 500
    guidances: tuple[float, ...] = (1.0, 3.0, 8.0)
    steps: int = 20
    decoders: DecoderBudget = field(default_factory=lambda: QUICK_DECODERS)
    competence_min: float = COMPETENCE_MIN


QUICK = SweepSettings()
FULL = SweepSettings(rows=500, guidances=(1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0), steps=25, decoders=FULL_DECODERS)


def split_rows(ctx: ExperimentContext, s: SweepSettings) -> tuple[list[int], list[int]]:
    held = ctx.heldout_rows()
    if s.rows + s.reference > len(held):
        raise ValueError(f"rows ({s.rows}) + reference ({s.reference}) exceed the {len(held)} held-out rows")
    return held[: s.rows], held[len(held) - s.reference :]


def sweep_table(ctx: ExperimentContext, name: str, settings_list: tuple[str, ...], s: SweepSettings):
    """Run (or read) every unit of ``settings_list`` x ``s.guidances``; returns (results, real, size)."""
    from unclip.measure.metrics import frechet_distance

    rows, ref_rows = split_rows(ctx, s)
    progress = Progress(name, len(settings_list) * len(s.guidances), ctx.log)
    size = decoder_for(ctx, s.decoders, settings_list[0]).model.config.image_size
    ref = real_features(ctx, ref_rows, size)
    real_feats, real_sc = real_features(ctx, rows, size), real_scores(ctx, rows, size)
    real = {"fd": frechet_distance(real_feats, ref), "accuracy": summarise_scores(real_sc),
            "intervals": unit_intervals(real_feats, real_sc, ref)}  # fmt: skip
    results: dict[str, dict[str, dict]] = {}
    for setting in settings_list:
        results[setting] = {}
        for g in s.guidances:
            key = unit_key(setting, g, len(rows), s.steps)
            unit = row_sweep_unit(ctx, s.decoders, setting, g, rows, s.steps)
            progress.step(key)
            results[setting][f"{g:g}"] = {
                "fd": frechet_distance(unit["features"], ref),
                "accuracy": summarise_scores(unit["scores"]),
                "intervals": unit_intervals(unit["features"], unit["scores"], ref),
            }
    return results, real, size


def fd_cell(point: dict[str, Any]) -> str:
    """``41.01 [37.92, 45.30]``: a sweep point's FD with its 95% interval."""
    return format_interval(point["fd"], point["intervals"]["fd"])


def accuracy_cell(point: dict[str, Any]) -> str:
    """``0.680 [0.652, 0.707]``: a sweep point's mean specified-attribute accuracy with its 95% interval."""
    return format_interval(point["accuracy"]["mean"], point["intervals"]["accuracy"], digits=3)


def plot_sweep(ax_fd, ax_accuracy, results: dict, settings_list: tuple[str, ...], guidances: tuple[float, ...]) -> None:
    """FD and accuracy against guidance, one curve per setting, with 95% bootstrap error bars."""
    gs = [f"{g:g}" for g in guidances]
    for m in settings_list:
        points = [results[m][g] for g in gs]
        fd = [p["fd"] for p in points]
        accuracy = [p["accuracy"]["mean"] for p in points]
        fd_err = error_bar_lengths(fd, [p["intervals"]["fd"] for p in points])
        accuracy_err = error_bar_lengths(accuracy, [p["intervals"]["accuracy"] for p in points])
        style = {"marker": "o", "capsize": 3, "label": SETTING_LABELS[m]}
        ax_fd.errorbar(list(guidances), fd, yerr=fd_err, **style)
        ax_accuracy.errorbar(list(guidances), accuracy, yerr=accuracy_err, **style)


def decoder_info(ctx: ExperimentContext, s: SweepSettings, settings_list: tuple[str, ...]) -> dict[str, dict]:
    out = {}
    for setting in settings_list:
        st = decoder_for(ctx, s.decoders, setting)
        out[setting] = {"conditioning": st.conditioning, "params": st.params, "train_steps": st.train_steps,
                        "train_seconds": st.train_seconds, "source": st.source}  # fmt: skip
    return out


def run(ctx: ExperimentContext, s: SweepSettings) -> ExperimentResult:
    compared = ("unclip", "caption")
    results, real, size = sweep_table(ctx, "guidance_fid", compared, s)
    gs = [f"{g:g}" for g in s.guidances]
    curves = {m: [results[m][g]["fd"] for g in gs] for m in compared}
    rise = {m: fd_rise(curves[m]) for m in compared}
    slope = {m: float(np.polyfit(list(s.guidances), curves[m], 1)[0]) for m in compared}
    held = guidance_fid_verdict(curves["unclip"], curves["caption"])
    verdict = Verdict(held, f"FD rise from best guidance to {gs[-1]}: unCLIP {rise['unclip']:.2f} vs caption-only "
                            f"{rise['caption']:.2f} (slopes {slope['unclip']:+.3f} vs {slope['caption']:+.3f} per "
                            f"unit of guidance; real-image floor {real['fd']:.2f}).")  # fmt: skip
    best = {m: max(results[m][g]["accuracy"]["mean"] for g in gs) for m in compared}
    verdict, gate = competence_gate(verdict, best, SETTING_LABELS, s.competence_min)
    header = ["decoder guidance", *[f"FD {SETTING_LABELS[m]}" for m in compared],
              *[f"accuracy {SETTING_LABELS[m]}" for m in compared]]  # fmt: skip
    table_rows = [[g, *[fd_cell(results[m][g]) for m in compared], *[accuracy_cell(results[m][g]) for m in compared]]
                  for g in gs]  # fmt: skip
    table_rows.append(["real renders", fd_cell(real), fd_cell(real), accuracy_cell(real), accuracy_cell(real)])
    fig, (ax1, ax2) = new_figure(2)
    plot_sweep(ax1, ax2, results, compared, s.guidances)
    ax1.axhline(real["fd"], color="grey", ls="--", lw=1, label="real renders (floor)")
    ax1.set(xlabel="decoder guidance scale", ylabel="domain FD (oracle features)", title="FD vs guidance")
    ax2.set(xlabel="decoder guidance scale", ylabel="specified-attribute accuracy", title="Caption accuracy")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    info = decoder_info(ctx, s, compared)
    notes = (f"{s.rows} held-out captions, one image each at {size} px (decoder base resolution, no upsampler), "
             f"{s.steps} DDPM steps; FD reference: {s.reference} other held-out real images. Decoders: "
             + "; ".join(f"{SETTING_LABELS[m]}: {v['params']:,} parameters, {v['train_steps'] or 'shipped recipe'} "
                         f"steps ({v['source'] or 'trained here'})" for m, v in info.items())
             + ". unCLIP's z_i come from the diffusion prior (25 steps, guidance 4, best of 2).")  # fmt: skip
    data = {"fd_and_accuracy": results, "real": real, "fd_rise": rise, "fd_slope": slope, "decoders": info,
            "image_size": size, "gate": gate}  # fmt: skip
    return ExperimentResult(verdict, markdown_table(header, table_rows), data, fig, notes)


SPEC = ExperimentSpec(
    number=4,
    name="guidance_fid",
    title="Guidance hurts unCLIP's FID less",
    claim="Raising decoder guidance hurts FID much less for unCLIP than for a caption-conditioned (GLIDE-like) "
    "decoder.",
    paper="(Paper §5.3, Fig. 11: curves only.)",
    needs=("cache", "oracle", "baselines"),
    cpu_budget={
        "quick": "~15 CPU-min of decoder training x 2 + ~10 CPU-min sampling (shared with exp. 2)",
        "full": "~60 CPU-min training per decoder (2, shared with exp. 1) + ~60 CPU-min sampling",
    },  # fmt: skip
    settings={"quick": QUICK, "full": FULL},
    run=run,
)
