"""Experiment 7, attribute binding: on two-object captions that name both objects' colour and shape
("a red circle to the left of a blue square"), unCLIP should bind worse than the caption-conditioned
baseline, and decoding the z_i of real two-object renders should swap attributes.

Scenes: two-object scenes of an unseen world seed; the caption names each object's colour and shape and the
relation. Per image the oracle (canonical slots, :func:`unclip.measure.oracle.caption_slots`) gives:

- **binding accuracy**: two objects found and both colours and both shapes on the right objects;
- **colour swap**: two objects found, each carrying the *other* named object's colour;
- the relation's accuracy.

Reconstructions: the unCLIP decoder decodes the true z_i of held-out two-object cache rows without a caption
(what variations do); the same measures against the true record.

Competence gate: both decoders must reach a mean specified-attribute accuracy of 0.7 at their best guidance
(of ``gate_guidances``) on the first ``gate_rows`` held-out cache rows (experiments 2 and 4's units).

Verdict: held when unCLIP's binding accuracy is below the baseline's by more than 1.96 standard errors of the
difference, not held when above by as much, else inconclusive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from unclip.experiments.common import (
    ExperimentContext,
    ExperimentResult,
    ExperimentSpec,
    Progress,
    ResultStore,
    Verdict,
    competence_gate,
    error_bar_lengths,
    markdown_table,
    new_figure,
)
from unclip.experiments.guidance_fid import FULL as GUIDANCE_FID_FULL
from unclip.experiments.guidance_fid import decoder_info
from unclip.experiments.models import FULL_DECODERS, QUICK_DECODERS, DecoderBudget
from unclip.experiments.sweep import SETTING_LABELS, SETTINGS, best_accuracy, decoder_for, generate
from unclip.experiments.verdicts import COMPETENCE_MIN, binding_difference, binding_verdict, format_interval

COMPARED = ("unclip", "caption")


@dataclass
class BindingSettings:
    """captions: two-object captions; per_caption: images each; guidances: decoder guidance scales;
    reconstructions: held-out two-object rows decoded from their z_i; steps, decoders: as the sweep; gate_rows,
    gate_guidances (None: ``guidances``), competence_min: the competence gate's held-out rows, guidance sweep and
    accuracy (at ``full`` the units of experiments 2 and 4, so the three rows gate on the same numbers)."""

    captions: int = 64
    per_caption: int = 2
    guidances: tuple[float, ...] = (3.0,)
    reconstructions: int = 64
    steps: int = 20
    decoders: DecoderBudget = field(default_factory=lambda: QUICK_DECODERS)
    gate_rows: int = 64
    gate_guidances: tuple[float, ...] | None = None
    competence_min: float = COMPETENCE_MIN


def binding_caption(record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(caption, spec) naming both objects' colour and shape and their relation, for a two-object record."""
    from unclip.data.shapes_captions import caption_from_spec

    if len(record["objects"]) != 2:
        raise ValueError(f"binding captions need two objects, got {len(record['objects'])}")
    spec = {"objects": [{"shape": o["shape"], "colour": o["colour"]} for o in record["objects"]],
            "relation": record["relation"]}  # fmt: skip
    return caption_from_spec(spec), spec


def binding_measures(pred: dict[str, Any], spec: dict[str, Any]) -> dict[str, bool]:
    """``bound`` (both objects' colour and shape right), ``colours_bound`` (both objects' colours right,
    shapes ignored), ``colour_swap``, ``relation`` and ``count`` for one predicted record against a two-object
    spec (objects in caption order with a relation)."""
    from unclip.measure.oracle import canonical_objects, caption_slots

    slots, rel = caption_slots(spec)
    objects, p_rel = canonical_objects(pred)
    if len(objects) != 2:
        return {"count": False, "bound": False, "colours_bound": False, "colour_swap": False, "relation": False}
    named = spec["objects"]
    got = [objects[slots[k]] for k in range(2)]
    bound = all(got[k]["colour"] == named[k]["colour"] and got[k]["shape"] == named[k]["shape"] for k in range(2))
    colours = all(got[k]["colour"] == named[k]["colour"] for k in range(2))
    swap = got[0]["colour"] == named[1]["colour"] and got[1]["colour"] == named[0]["colour"]
    return {"count": True, "bound": bound, "colours_bound": colours, "colour_swap": swap, "relation": p_rel == rel}


MEASURES = ("count", "bound", "colours_bound", "colour_swap", "relation")


def rate_interval(rate: float, n: int, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of a rate over ``n`` images: a yes/no measure's resample depends on its count
    alone, so the stored rate and n rebuild the per-image outcomes exactly."""
    import numpy as np

    from unclip.experiments.verdicts import bootstrap_interval

    outcomes = np.zeros(n)
    outcomes[: round(rate * n)] = 1.0
    return bootstrap_interval([n], lambda i: float(outcomes[i].mean()), seed=seed)


def _cell(rates: dict[str, float], key: str) -> str:
    if key == "n":
        return str(int(rates[key]))
    return format_interval(rates[key], rate_interval(rates[key], int(rates["n"])), digits=3)


def _rates(measures: list[dict[str, bool]]) -> dict[str, float]:
    n = len(measures)
    out = {k: sum(m[k] for m in measures) / n for k in MEASURES}
    out["n"] = n
    return out


def run(ctx: ExperimentContext, s: BindingSettings) -> ExperimentResult:
    from unclip.measure.oracle import predict
    from unclip.measure.quality import held_out_captions

    store = ResultStore(ctx.run_dir("binding") / "units")
    samples = held_out_captions(ctx.seed, s.captions, 2)
    caps = [binding_caption(x.record) for x in samples]
    progress = Progress("binding", len(COMPARED) * len(s.guidances) + 1, ctx.log)

    def gen_unit(setting: str, g: float) -> dict[str, Any]:
        text = ctx.get_clip().embed_text([c for c, _ in caps for _ in range(s.per_caption)]).to("cpu", torch.float32)
        gen = ctx.generator(s.captions, s.per_caption, int(g * 1000), 21 + SETTINGS.index(setting))
        images = generate(ctx, s.decoders, setting, text, g, s.steps, gen).clamp(-1, 1)
        preds = predict(ctx.get_oracle(), images)
        return _rates([binding_measures(p, caps[i // s.per_caption][1]) for i, p in enumerate(preds)])

    def recon_unit() -> dict[str, Any]:
        cache = ctx.get_cache()
        rows = [r for r in ctx.heldout_rows() if len(cache.records[r]["objects"]) == 2][: s.reconstructions]
        stage = decoder_for(ctx, s.decoders, "unclip")
        from unclip.stages.decoding import sample_decoder

        z = cache.image_embedding[torch.tensor(rows)].float()
        images = sample_decoder(stage.model, stage.diffusion, z, None, steps=s.steps, sampler="ddpm",
                                guidance_scale=s.guidances[0], generator=ctx.generator(77, len(rows)))  # fmt: skip
        preds = predict(ctx.get_oracle(), images.float().clamp(-1, 1))
        specs = [binding_caption(cache.records[r])[1] for r in rows]
        real = predict(ctx.get_oracle(), cache.pixels(rows, stage.model.config.image_size))
        return {"decoded": _rates([binding_measures(p, sp) for p, sp in zip(preds, specs)]),
                "real": _rates([binding_measures(p, sp) for p, sp in zip(real, specs)])}  # fmt: skip

    res: dict[str, dict[str, Any]] = {m: {} for m in COMPARED}
    for m in COMPARED:
        for g in s.guidances:
            res[m][f"{g:g}"] = progress.unit(
                store,
                f"{m}_g{g:g}_c{s.captions}x{s.per_caption}_s{s.steps}_v2",
                lambda m=m, g=g: gen_unit(m, g),
                f"{m} at guidance {g:g}",
            )
    recon = progress.unit(store, f"reconstructions_n{s.reconstructions}_s{s.steps}_v2", recon_unit, "reconstructions")
    gs = [f"{g:g}" for g in s.guidances]
    diffs = []
    for g in gs:
        u, b = res["unclip"][g], res["caption"][g]
        diffs.append(binding_difference(u["bound"], u["n"], b["bound"], b["n"]))
    held = binding_verdict(diffs)
    verdict = Verdict(held, "binding accuracy unCLIP − caption-only: " + ", ".join(
        f"{x:+.3f} ± {e:.3f} (g={g})" for (x, e), g in zip(diffs, gs)) + f"; both colours on the right objects "
        f"unCLIP {res['unclip'][gs[0]]['colours_bound']:.3f} vs {res['caption'][gs[0]]['colours_bound']:.3f}; "
        f"colour swaps unCLIP "
        f"{res['unclip'][gs[0]]['colour_swap']:.3f} vs {res['caption'][gs[0]]['colour_swap']:.3f}; reconstructions "
        f"from z_i: bound {recon['decoded']['bound']:.3f}, swapped {recon['decoded']['colour_swap']:.3f} "
        f"(real renders {recon['real']['bound']:.3f}).")  # fmt: skip
    best = best_accuracy(ctx, s.decoders, COMPARED, s.gate_guidances or s.guidances, s.gate_rows, s.steps)
    verdict, gate = competence_gate(verdict, best, SETTING_LABELS, s.competence_min)
    header = [
        "images",
        "guidance",
        "two objects",
        "bound (colour+shape both right)",
        "both colours right",
        "colours swapped",
        "relation",
        "n",
    ]
    rows = [[SETTING_LABELS[m], g, *[_cell(res[m][g], k) for k in (*MEASURES, "n")]]
            for m in COMPARED for g in gs]  # fmt: skip
    rows.append(
        [
            "unCLIP decoder on true z_i (reconstruction)",
            s.guidances[0],
            *[_cell(recon["decoded"], k) for k in (*MEASURES, "n")],
        ]
    )
    rows.append(
        [
            "real renders (oracle ceiling)",
            "—",
            *[_cell(recon["real"], k) for k in (*MEASURES, "n")],
        ]
    )
    fig, (ax,) = new_figure(1, width=7)
    short = {"unclip": "unCLIP", "caption": "caption-only"}
    labels = [f"{short[m]}\ng={g}" for m in COMPARED for g in gs] + ["reconstruction\nfrom z_i", "real"]
    bound = [res[m][g]["bound"] for m in COMPARED for g in gs] + [recon["decoded"]["bound"], recon["real"]["bound"]]
    swap = [res[m][g]["colour_swap"] for m in COMPARED for g in gs] + [
        recon["decoded"]["colour_swap"],
        recon["real"]["colour_swap"],
    ]
    x = torch.arange(len(labels)).float()
    ns = [res[m][g]["n"] for m in COMPARED for g in gs] + [recon["decoded"]["n"], recon["real"]["n"]]
    for offset, values, label in ((-0.2, bound, "bound"), (0.2, swap, "colours swapped")):
        errors = error_bar_lengths(values, [rate_interval(v, int(n)) for v, n in zip(values, ns)])
        ax.bar((x + offset).tolist(), values, width=0.4, yerr=errors, capsize=2, label=label)
    ax.set_xticks(x.tolist(), labels, fontsize=7)
    ax.set(ylabel="rate", ylim=(0, 1), title="Binding on two-object captions")
    ax.legend()
    info = decoder_info(ctx, s, COMPARED)
    notes = (
        f"{s.captions} two-object scenes of world seed {ctx.seed}, captions naming both colours and shapes "
        f"(e.g. {caps[0][0]!r}), {s.per_caption} images each, {s.steps} DDPM steps at the decoder's base "
        f"resolution. Decoders: "
        + "; ".join(
            f"{SETTING_LABELS[m]}: {v['params']:,} parameters ({v['source'] or 'trained here'})"
            for m, v in info.items()
        )
        + f". Reconstructions: {recon['decoded']['n']} held-out two-object cache rows decoded from their z_i."
    )
    data = {"generated": res, "reconstructions": recon, "difference_bound": diffs, "decoders": info, "gate": gate}
    return ExperimentResult(verdict, markdown_table(header, rows), data, fig, notes)


SPEC = ExperimentSpec(
    number=7,
    name="binding",
    title="Attribute binding",
    claim="unCLIP binds attributes to objects worse than a caption-conditioned decoder, and its reconstructions "
    "swap attributes between objects.",
    paper="(Paper §7, Fig. 14: qualitative.)",
    needs=("cache", "oracle", "baselines"),
    cpu_budget={
        "quick": "uses experiment 1's decoders; ~5 CPU-min sampling",
        "full": "uses the full-budget decoders; ~20 CPU-min sampling",
    },
    settings={
        "quick": BindingSettings(),
        "full": BindingSettings(
            captions=200,
            guidances=(1.0, 3.0, 8.0),
            reconstructions=200,
            steps=25,
            decoders=FULL_DECODERS,
            gate_rows=GUIDANCE_FID_FULL.rows,
            gate_guidances=GUIDANCE_FID_FULL.guidances,
        ),
    },  # fmt: skip
    run=run,
)
