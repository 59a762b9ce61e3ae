"""Experiment 6, text diffs: as θ goes 0 -> 0.5 the edited attribute should flip while the others stay.

For one-object scenes rendered from an unseen world seed, an edit changes one attribute (``colour``:
"a red circle" -> "a blue circle"; ``shape``: "a red circle" -> "a red square"; ``size``: "a small red
circle" -> "a large red circle"). The source caption names the object's colour and shape (and the size for
size edits); the target value is drawn at random among the other values (never the background colour).
Each edit runs the pipeline's ``edit`` computation (z_d = normalise(z_t - z_t0) scaled to |z_i|, decode
slerp(z_i, z_d, θ) with DDIM from the image's DDIM-inverted x_T), batched over scenes.

Per θ the oracle gives the **flip rate** (edited images showing the target value) and the **stability**
of each other attribute (still equal to the scene's true value). Verdict: held when, for every edit kind,
the flip rate at the largest θ exceeds the one at θ = 0 by at least 0.25 and the mean stability of the
other attributes at the largest θ is at least 0.8 x its value at θ = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from unclip.data.shapes_captions import COLOURS, SHAPES, SIZES
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
from unclip.experiments.probe import PROBE_ATTRIBUTES
from unclip.experiments.variations import _attr
from unclip.experiments.verdicts import bootstrap_intervals, format_interval, text_diff_passes, text_diffs_verdict

EDIT_KINDS = ("colour", "shape", "size")


@dataclass
class TextDiffSettings:
    """kinds: edited attributes; sources: scenes per kind; thetas: slerp amounts; steps: DDIM steps."""

    kinds: tuple[str, ...] = ("colour", "shape")
    sources: int = 24
    thetas: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    steps: int = 25
    chunk: int = 8


def edit_captions(obj: dict[str, Any], background: str, kind: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """(from_text, to_text, target value) for editing attribute ``kind`` of a one-object scene."""
    if kind not in EDIT_KINDS:
        raise ValueError(f"edit kind must be one of {EDIT_KINDS}, got {kind!r}")
    choices = {
        "colour": [c for c in COLOURS if c not in (obj["colour"], background)],
        "shape": [s for s in SHAPES if s != obj["shape"]],
        "size": [s for s in SIZES if s != obj["size"]],
    }[kind]
    target = choices[int(rng.integers(len(choices)))]
    words = dict(colour=obj["colour"], shape=obj["shape"], size=obj["size"] if kind == "size" else "")
    new = dict(words, **{kind: target})

    def text(w: dict[str, str]) -> str:
        phrase = " ".join(x for x in (w["size"], w["colour"], w["shape"]) if x)
        return ("an " if phrase[0] in "aeiou" else "a ") + phrase

    return text(words), text(new), target


@torch.no_grad()
def batched_edits(
    pipe, images: list[Image.Image], to_texts: list[str], from_texts: list[str], thetas: list[float], steps: int,
    generator: torch.Generator,
) -> torch.Tensor:  # fmt: skip
    """``pipe.edit`` for several images at once: [len(images) * len(thetas), 3, S, S] in [-1, 1], image-major
    (:meth:`UnCLIPPipeline.sample_edits` with ``steps`` DDIM inversion and decoding steps)."""
    settings = replace(pipe.defaults, decoder_steps=steps)
    return pipe.sample_edits(images, to_texts, from_texts, thetas, settings, generator).float().cpu()


def run(ctx: ExperimentContext, s: TextDiffSettings) -> ExperimentResult:
    from unclip.data.shapes import ShapesWorld
    from unclip.measure.oracle import predict
    from unclip.measure.quality import held_out_captions

    store = ResultStore(ctx.run_dir("text_diffs", uses=("pipeline", "oracle")) / "units")
    world = ShapesWorld(seed=ctx.seed)
    samples = held_out_captions(ctx.seed, s.sources, 1)
    thetas = [float(t) for t in s.thetas]
    chunks = [(k, c) for k in s.kinds for c in range(0, s.sources, s.chunk)]
    progress = Progress("text_diffs", len(chunks), ctx.log)

    def unit(kind: str, start: int) -> dict[str, Any]:
        pipe, oracle = ctx.get_pipeline(), ctx.get_oracle()
        part = samples[start : start + s.chunk]
        rng = np.random.default_rng([ctx.seed, EDIT_KINDS.index(kind), start])
        caps = [edit_captions(x.record["objects"][0], x.record["background"], kind, rng) for x in part]
        renders = [Image.fromarray(world.render(x.scene, pipe.image_size)) for x in part]
        images = batched_edits(pipe, renders, [c[1] for c in caps], [c[0] for c in caps], thetas, s.steps,
                               ctx.generator(EDIT_KINDS.index(kind), start))  # fmt: skip
        preds = predict(oracle, images.clamp(-1, 1))
        others = [a for a in PROBE_ATTRIBUTES if a != kind]
        flips = [0] * len(thetas)
        stable = {a: [0] * len(thetas) for a in others}
        flip_each, kept_each = [], []  # per scene, per θ: target flipped (0/1); other attributes kept (fraction)
        for i, x in enumerate(part):
            flip_each.append([]), kept_each.append([])
            for j in range(len(thetas)):
                p = preds[i * len(thetas) + j]
                flipped = int(_attr(p, kind) == caps[i][2])
                kept = [int(_attr(p, a) == _attr(x.record, a)) for a in others]
                flips[j] += flipped
                for a, k in zip(others, kept):
                    stable[a][j] += k
                flip_each[-1].append(flipped)
                kept_each[-1].append(sum(kept) / len(kept))
        return {"n": len(part), "flips": flips, "stable": stable, "flip_each": flip_each, "kept_each": kept_each,
                "edits": [list(c) for c in caps[:3]]}  # fmt: skip

    results = {}
    for kind, start in chunks:
        results[(kind, start)] = progress.unit(store, f"scenes_{kind}_{start}", lambda k=kind, c=start: unit(k, c),
                                               f"{kind} edits of sources {start}..")  # fmt: skip
    summary: dict[str, Any] = {}
    rows = []
    for kind in s.kinds:
        units = [results[(kind, c)] for c in range(0, s.sources, s.chunk)]
        n = sum(u["n"] for u in units)
        flip = [sum(u["flips"][j] for u in units) / n for j in range(len(thetas))]
        others = [a for a in PROBE_ATTRIBUTES if a != kind]
        stab = {a: [sum(u["stable"][a][j] for u in units) / n for j in range(len(thetas))] for a in others}
        mean_stab = [float(np.mean([stab[a][j] for a in others])) for j in range(len(thetas))]
        ok = text_diff_passes(flip, mean_stab)
        flip_each = np.asarray([f for u in units for f in u["flip_each"]], dtype=float)  # [n, θ]
        kept_each = np.asarray([k for u in units for k in u["kept_each"]], dtype=float)  # [n, θ]
        ci = bootstrap_intervals([n], lambda i, f=flip_each, k=kept_each: [*f[i].mean(0), *k[i].mean(0),
                                                                             f[i, -1].mean() - f[i, 0].mean()],
                                 seed=ctx.seed)  # fmt: skip
        flip_ci, stab_ci, gain_ci = ci[: len(thetas)], ci[len(thetas) : 2 * len(thetas)], ci[-1]
        summary[kind] = {"n": n, "flip_rate": flip, "stability": stab, "mean_stability": mean_stab, "passes": ok,
                         "flip_rate_interval": flip_ci, "mean_stability_interval": stab_ci,
                         "flip_gain": flip[-1] - flip[0], "flip_gain_interval": gain_ci,
                         "examples": units[0]["edits"]}  # fmt: skip
        for j, t in enumerate(thetas):
            rows.append([kind, t, format_interval(flip[j], flip_ci[j]), format_interval(mean_stab[j], stab_ci[j]),
                         *[stab[a][j] for a in others]])  # fmt: skip
    desc = "; ".join(
        f"{k}: flip {summary[k]['flip_rate'][0]:.2f} -> "
        f"{format_interval(summary[k]['flip_rate'][-1], summary[k]['flip_rate_interval'][-1])}, other attributes "
        f"kept {summary[k]['mean_stability'][0]:.2f} -> "
        f"{format_interval(summary[k]['mean_stability'][-1], summary[k]['mean_stability_interval'][-1])}"
        for k in s.kinds
    )
    held = text_diffs_verdict(summary[k]["passes"] for k in s.kinds)
    verdict = Verdict(held, f"θ {thetas[0]:g} -> {thetas[-1]:g}: {desc}.")
    table_parts = []
    for kind in s.kinds:
        others = [a for a in PROBE_ATTRIBUTES if a != kind]
        header = ["edit", "θ", "target flip rate [95%]", "others kept (mean) [95%]", *[f"{a} kept" for a in others]]
        table_parts.append(markdown_table(header, [r for r in rows if r[0] == kind]))
    fig, axes = new_figure(len(s.kinds))
    for ax, kind in zip(axes, s.kinds):
        for key, marker, label in (
            ("flip_rate", "o", f"target ({kind}) flipped"),
            ("mean_stability", "s", "other attributes kept (mean)"),
        ):
            line = ax.plot(thetas, summary[kind][key], marker=marker, lw=2, label=label)[0]
            band = summary[kind][f"{key}_interval"]
            ax.fill_between(thetas, [b[0] for b in band], [b[1] for b in band], color=line.get_color(), alpha=0.2,
                            lw=0)  # fmt: skip
        for a, v in summary[kind]["stability"].items():
            ax.plot(thetas, v, lw=0.8, alpha=0.6, ls="--", label=f"{a} kept")
        ax.set(xlabel="θ", ylabel="rate", ylim=(-0.02, 1.02), title=f"{kind} edits (n={summary[kind]['n']})")
        ax.legend(fontsize=7)
    notes = (f"{s.sources} one-object scenes of world seed {ctx.seed} per edit kind; DDIM inversion and decoding with "
             f"{s.steps} steps, the pipeline's decoder guidance and upsampler. Example edits (from, to, target): "
             + "; ".join(f"{summary[k]['examples'][0][0]!r} -> {summary[k]['examples'][0][1]!r}" for k in s.kinds)
             + ". Intervals: 95% bootstrap over scenes.")  # fmt: skip
    return ExperimentResult(verdict, "\n\n".join(table_parts), {"thetas": thetas, "edits": summary}, fig, notes)


SPEC = ExperimentSpec(
    number=6,
    name="text_diffs",
    title="Text diffs",
    claim="Moving z_i toward a text diff z_d = normalise(z_t - z_t0) by θ = 0 -> 0.5 flips the target "
    "attribute while the other attributes stay fixed.",
    paper="(Paper §3.3, Fig. 5: qualitative.)",
    needs=("pipeline", "oracle"),
    cpu_budget={"quick": "~10 CPU-min (2 edit kinds x 24 scenes x 6 θ)", "full": "~40 CPU-min (3 kinds x 64 scenes)"},
    settings={"quick": TextDiffSettings(), "full": TextDiffSettings(kinds=EDIT_KINDS, sources=64, steps=50)},
    run=run,
)
