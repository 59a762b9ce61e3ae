"""``docs/experiments/README.md``: every claim, our number and whether it held, from the JSON files the
experiments wrote (an experiment without one is listed as "not yet run" with its command and CPU budget)."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

from unclip.io import atomic_write_text

INTRO = """# The paper's claims at small scale

Each experiment tests one claim of Ramesh et al. (2022), "Hierarchical Text-Conditional Image
Generation with CLIP Latents" (arXiv:2204.06125), on the shapes world ([shapes_world.md](../shapes_world.md)), where
every attribute of every image is known, so each claim becomes a number read by the shapes oracle
(`unclip.measure.oracle`). Models: a shapes model (the run directory of `unclip train shapes`, `--shapes-run`,
default `runs/shapes`: CLIP, cache of 30,000 samples with the last 1,000 rows held out, diffusion prior,
decoder, upsampler; or the built-in model) and, for the decoder comparisons, baseline decoders of the same
architecture trained with the same recipe on the same rows (`unclip.experiments.models`). Evaluation captions and
scenes come from world seed 4242 or the held-out cache rows, never from training data.

**Baselines** (`unclip.experiments.models`): the decoder comparisons (experiments 1, 2, 4, 7) train
decoders of one architecture (same config, same parameter count) with one recipe (steps, batch, learning
rate, EMA) on the same cache rows, differing only in what fills the z_i slot: unCLIP's decoder (z_i of
the image); the caption-only, GLIDE-like baseline (the slot always holds the learned null embedding, so
only the caption's CLIP token states and pooled z_t condition it; caption dropout 20%, GLIDE's rate); and
the paper's decoder trained on CLIP text embeddings (z_t in the slot, plus the caption). Budget `quick`
trains all of them small (channels 16, one ResBlock per level, 32 px, 1,000 steps of batch 32, about
15 CPU-minutes each on an idle core); budget `full` trains every compared decoder, unCLIP's included,
with one recipe (`shapes` preset, 5,000 steps of batch 32; equal budgets, issue 20), never the shipped
decoder against CPU-trained baselines. All images of
these comparisons are read at the decoders' base resolution (no upsampler).

Run one with `unclip experiment NAME [--budget quick|full] [-o docs/experiments]` (resumable: finished
units are kept under `runs/experiments/NAME/`, keyed by a fingerprint of the inputs; trained baselines under
`runs/experiments/_models/`; `--run-dir` moves both). CPU budgets are for 2 CPU cores. A claim that did not
hold at our scale is reported as such.

**From a clean clone** no `unclip train shapes` run is needed: without `runs/shapes`, an experiment uses
the built-in model and first renders and embeds the recipe's cache with its CLIP (30,000 samples of world
seed 0 at 64 px into `runs/shapes/cache`, about 1 CPU-minute; the same rows as the training run, embedded
by the fp16-stored CLIP), then trains the baselines it needs. The table's **models** column says which model
each row used. "built-in `shapes`": the built-in model and that clean-clone cache (the runs here passed
`--shapes-run` a directory holding only that cache, which changes nothing but where it lives). A path: a CPU-only
run of the `shapes` recipe (its own fp32 CLIP's cache, a 600-step prior at guidance 4 / best-of-2 and the
4,000-step CPU decoder; [shapes_model.md](../shapes_model.md), "What the CPU-only recipe gives"); rows made with
it were run before issue 20 and wait for a rerun. Experiments 3 and 9 train both priors they compare with one
recipe on the cache and decode with the built-in model's decoder. All numbers are read by the built-in oracle
([oracle.md](../oracle.md)); intervals are 95% bootstrap intervals (`verdicts.bootstrap_intervals`).

**Competence gate** (issue 20). A comparison writes a verdict only when every compared model reaches a mean
specified-attribute accuracy of at least 0.7 on held-out captions at its best guidance (`verdicts.COMPETENCE_MIN`);
otherwise its row reads "not run: model X at 0.55", and the gate column states each model's number. Rows
whose gate column reads "not checked" were run before the gate existed; rerunning them applies it.

**Scale caveat.** Experiments 1, 2, 4 and 7 ran at the `full` budget: every compared decoder, unCLIP's
included, trained with one recipe (5,000 steps of batch 32, 2.1 M parameters, 32 px; about 41 CPU-minutes each
in bf16 on an AMX CPU). unCLIP's decoder passes the gate in each (0.74 on the 500 held-out rows of 2, 4 and 7;
0.86 on experiment 1's captions); the caption-only baseline (0.62–0.69) and the decoder trained on z_t (0.58)
do not, so these rows read "not run" and their numbers are descriptive only. A longer shared budget is what
they need. With a GPU, `python benchmarks/gpu_experiment_decoders.py --out OUT --device cuda` trains all three
decoders (unCLIP's, caption-only, z_t) with the shipped decoder's recipe and equal steps in one call, and
`unclip experiment NAME --budget full --decoders OUT` then runs experiments 1, 2, 4 and 7 with them on the CPU.
"""


def write_readme(out_dir: str | Path) -> Path:
    """(Re)write ``out_dir/README.md`` from the experiments' JSON files."""
    from unclip.experiments import EXPERIMENTS, get_spec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = [INTRO, "| # | experiment | claim | our number | verdict | competence gate | budget run | models |",
             "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    pending = []
    written = {n: json.loads((out / f"{n}.json").read_text()) for n in EXPERIMENTS if (out / f"{n}.json").is_file()}
    for name in EXPERIMENTS:
        spec = get_spec(name)
        if name in written:
            data = written[name]
            label, summary, gate = regated(data, written)
            lines.append(f"| {spec.number} | [{spec.title}]({name}.md) | {spec.claim} | {summary} | "
                         f"**{label}** | {gate_cell(data, gate)} | `{data['budget']}` | "
                         f"{models_cell(data)} |")  # fmt: skip
        else:
            lines.append(f"| {spec.number} | {spec.title} | {spec.claim} | — | **not yet run** | — | — | — |")
            pending.append(spec)
    lines.append("")
    if pending:
        lines.append("## Not yet run")
        lines.append("")
        for spec in pending:
            lines.append(f"- **{spec.number}. {spec.title}**: `{spec.command('quick')}` "
                         f"({spec.cpu_budget.get('quick', '?')}); full: `{spec.command('full')}` "
                         f"({spec.cpu_budget.get('full', '?')}). Needs: {', '.join(spec.needs)}.")  # fmt: skip
        lines.append("")
    discussion = out / DISCUSSION
    if discussion.is_file():
        lines += ["## What held, what did not, and why", "", discussion.read_text().strip(), ""]
    lines.append("## Methods")
    lines.append("")
    for name in EXPERIMENTS:
        spec = get_spec(name)
        lines.append(f"### {spec.number}. {spec.title} (`{name}`)")
        lines.append("")
        lines.append(_doc_markdown(importlib.import_module(EXPERIMENTS[name]).__doc__ or ""))
        lines.append("")
    lines.append("## Commands and budgets")
    lines.append("")
    lines.append("Every row of the table above ran at the `full` budget; `--budget quick` smoke-runs the same code.")
    lines.append("")
    lines.append("| # | command (the table's row) | quick budget | full budget |")
    lines.append("|---|---|---|---|")
    for name in EXPERIMENTS:
        spec = get_spec(name)
        lines.append(f"| {spec.number} | `{spec.command('full')}` | {spec.cpu_budget.get('quick', '?')} | "
                     f"{spec.cpu_budget.get('full', '?')} |")  # fmt: skip
    lines.append("")
    path = out / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def gate_cell(data: dict, gate: dict | None = None) -> str:
    """The README's gate column: each compared model's best accuracy (``gate``, default the one the run wrote),
    or why there is none."""
    gate = gate if gate is not None else data.get("results", {}).get("gate")
    if gate is None:
        return "not checked (run before the gate)" if data.get("number") in GATED_EXPERIMENTS else "—"
    return (
        ", ".join(
            f"{gate['labels'][m]} {a:.2f}{' ✗' if m in gate['failed'] else ' ✓'}"
            for m, a in gate["best_accuracy"].items()
        )
        + f" (≥ {gate['minimum']:.2f}{'; from the recorded numbers' if gate.get('recorded') else ''})"
    )


def recorded_best_accuracy(data: dict, written: dict[str, dict]) -> dict[str, float] | None:
    """Each gated model's best mean specified-attribute accuracy, read from the numbers a run wrote before the
    gate existed (``written``: every experiment's JSON by name). Binding measured no accuracy of its own: it
    takes experiment 1's when both ran the same decoders. None when the numbers are not there."""
    name, r = data.get("name"), data.get("results", {})

    def num(x) -> float:
        return float("nan") if x is None else float(x)

    try:
        if name == "diversity":
            return {m: max(num(v["mean_accuracy"]) for v in r["results"][m].values()) for m in ("unclip", "caption")}
        if name in ("guidance_fid", "prior_matters"):
            models = ("unclip", "caption") if name == "guidance_fid" else ("unclip", "text_embedding")
            return {m: max(num(v["accuracy"]["mean"]) for v in r["fd_and_accuracy"][m].values()) for m in models}
        if name == "ar_vs_diffusion":
            return {m: num(r["images"][m]["accuracy"]["mean"]) for m in ("diffusion", "ar")}
        if name == "binding":
            div = written.get("diversity")
            decoders = data.get("settings", {}).get("decoders")
            same = div is not None and div.get("settings", {}).get("decoders") == decoders
            return recorded_best_accuracy(div, written) if same and "gate" not in div["results"] else None
    except (KeyError, TypeError, ValueError):
        return None
    return None


def regated(data: dict, written: dict[str, dict]) -> tuple[str, str, dict | None]:
    """(label, summary, gate) of a README row. A comparison run before the gate existed gets the gate applied
    to its recorded numbers (:func:`recorded_best_accuracy`): failing it, or without such numbers, the row reads
    "not run"."""
    from unclip.experiments.common import Verdict, competence_gate
    from unclip.experiments.sweep import SETTING_LABELS
    from unclip.experiments.verdicts import COMPETENCE_MIN

    v = data["verdict"]
    if data.get("number") not in GATED_EXPERIMENTS or "gate" in data.get("results", {}):
        return v["label"], v["summary"], None
    best = recorded_best_accuracy(data, written)
    if best is None:  # no verdict without the gate: a comparison whose models' accuracy is unknown is not run
        return "not run", (f"not run: its models' accuracy was not recorded, so the gate cannot be checked "
                           f"(its page, from before the gate, reads \"{v['label']}\")."), None  # fmt: skip
    labels = {**SETTING_LABELS, "diffusion": "diffusion prior", "ar": "AR prior"}
    gated, gate = competence_gate(Verdict(v["held"], v["summary"]), best, labels, COMPETENCE_MIN)
    gate["recorded"] = True
    if not gated.not_run:
        return v["label"], v["summary"], gate
    return gated.label, (f"{gated.summary} Gate applied afterwards to the recorded numbers of this run, made "
                         f"before the gate (its page reads \"{v['label']}\")."), gate  # fmt: skip


GATED_EXPERIMENTS = (1, 2, 3, 4, 7, 9)  # the comparisons of trained models
DISCUSSION = "discussion.md"  # hand-written reading of the table, included under it when present


def models_cell(data: dict) -> str:
    """The README's models column: which shapes model the run used, read from its reproducing command
    (``--pipeline NAME`` first, else ``--shapes-run DIR``, else the default: the built-in model)."""
    words = data.get("command", "").split()
    for flag in ("--pipeline", "--shapes-run"):
        if flag in words[:-1]:
            value = words[words.index(flag) + 1]
            return f"built-in `{value}`" if flag == "--pipeline" and "/" not in value else f"`{value}`"
    return "built-in `shapes`"


def _doc_markdown(doc: str) -> str:
    """A module docstring as markdown: RST double backticks become single, the :func:/:mod: roles go."""
    text = re.sub(r":(?:func|mod|class|data|meth):`~?([^`]+)`", r"`\1`", doc.strip())
    return text.replace("``", "`")
