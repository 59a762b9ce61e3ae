"""Shared machinery of the paper-claim experiments (issue 7): context, resumable results, outputs.

Every experiment is a module of :mod:`unclip.experiments` with a :class:`ExperimentSpec` named
``SPEC``. ``SPEC.run(ctx, settings)`` returns an :class:`ExperimentResult` (verdict, markdown table, JSON
data, matplotlib figure); :func:`write_outputs` writes ``NAME.md``, ``NAME.json`` and ``NAME.png`` under
the output directory (``docs/experiments``) atomically.

Work is split into *units* (one guidance scale of one model, one chunk of captions, ...) whose JSON
results are stored atomically under ``runs/experiments/NAME/FINGERPRINT/`` by :class:`ResultStore`, the
fingerprint identifying the inputs (cache, pipeline, oracle, seed): re-running an interrupted experiment
skips the finished units, and changed inputs start afresh. Networks the experiments train (baseline
decoders) live under ``runs/experiments/_models/FINGERPRINT/`` and resume through the training loop's
checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unclip.io import atomic_write, atomic_write_text

Log = Callable[[str], None]
REPORT_SEED = 4242  # world seed of the evaluation captions/scenes; the models train on world seed 0


# ---------------------------------------------------------------------------------------------- context


@dataclass
class ExperimentContext:
    """Where an experiment reads models and data and writes results.

    Attributes:
        run_root: resumable intermediate results (``run_root/NAME/``) and trained baselines (``run_root/_models``).
        out_dir: tables, JSON and plots (``docs/experiments``).
        shapes_run: the run directory of ``unclip train shapes`` (``pipeline/``, ``cache/``, ``clip/``, ``prior/``).
        pipeline: a pipeline directory or built-in name; default ``shapes_run/pipeline`` when it exists, else
            the built-in ``"shapes"``.
        cache: a shapes cache directory; default ``shapes_run/cache``.
        oracle: an oracle directory; default the shipped oracle.
        holdout: trailing cache rows never trained on (evaluation rows).
        device: torch device of every network.
        seed: world seed of evaluation scenes and seed of sampling noise.
        log: receives one-line progress messages.
        command_extra: options appended to the reproduce command in the outputs (e.g. ``--shapes-run DIR``).
        decoders: comparison decoders trained elsewhere (``decoder_{image,caption,text_embedding}/`` as
            ``benchmarks/gpu_experiment_decoders.py`` writes them), used instead of training them here.
    """

    run_root: Path = Path("runs/experiments")
    out_dir: Path = Path("docs/experiments")
    shapes_run: Path = Path("runs/shapes")
    pipeline: str | Path | None = None
    cache: str | Path | None = None
    oracle: str | Path | None = None
    holdout: int = 1000
    device: str = "cpu"
    seed: int = REPORT_SEED
    progress: bool | None = None
    log: Log = print
    command_extra: str = ""
    decoders: str | Path | None = None
    _memo: dict[str, Any] = field(default_factory=dict, repr=False, init=False, compare=False)

    def __post_init__(self) -> None:
        self.run_root, self.out_dir, self.shapes_run = Path(self.run_root), Path(self.out_dir), Path(self.shapes_run)

    def run_dir(self, name: str, uses: tuple[str, ...] = ("cache", "pipeline", "oracle"), extra: Any = None) -> Path:
        """``run_root/name/FINGERPRINT`` (created): stored units are only reused with the same inputs.

        ``uses`` names the inputs the units depend on (``"cache"``, ``"pipeline"``, ``"oracle"``); the
        fingerprint hashes their resolved paths and file times, ``holdout``, ``seed`` and ``extra``, and the
        inputs are recorded in ``context.json`` beside the units.
        """
        if "cache" in uses:  # a missing cache is built first: the fingerprint must name the cache, not its absence
            self.get_cache()
        inputs = {part: self._input_identity(part) for part in uses}
        inputs.update(holdout=self.holdout, seed=self.seed, extra=to_jsonable(extra))
        if self.decoders is not None:  # units decoded by decoders trained elsewhere are theirs alone
            weights = sorted(Path(self.decoders).resolve().glob("decoder_*/model/model.safetensors"))
            inputs["decoders"] = [f"{w}@{w.stat().st_mtime_ns}" for w in weights]
        text = json.dumps(inputs, sort_keys=True, default=str)
        path = self.run_root / name / hashlib.sha1(text.encode()).hexdigest()[:12]
        path.mkdir(parents=True, exist_ok=True)
        if not (path / "context.json").is_file():
            atomic_write_text(path / "context.json", json.dumps(inputs, indent=1, default=str) + "\n")
        return path

    def _input_identity(self, part: str) -> str:
        """Resolved path and modification time (ns) of the file that identifies an input."""
        if part == "cache":
            directory = self.cache_dir()
            names = ("index.json", "settings.json")
        elif part == "pipeline":
            source = self.pipeline_source()
            if isinstance(source, str) and not Path(source).is_dir():
                from unclip.pipeline.unclip_pipeline import builtin_model_dir

                source = builtin_model_dir(source) if source == "shapes" else Path(source)
            directory, names = Path(source), ("model_index.json",)
        elif part == "oracle":
            if self.oracle is None:
                from unclip.measure.oracle import ASSET_DIR

                directory = ASSET_DIR
            else:
                directory = Path(self.oracle)
            names = ("model.safetensors",)
        else:
            raise ValueError(f"unknown input {part!r}; expected cache, pipeline or oracle")
        for n in names:
            f = directory / n
            if f.is_file():
                return f"{f.resolve()}@{f.stat().st_mtime_ns}"
        return f"{directory.resolve()} (absent)"

    def pipeline_source(self) -> str | Path:
        if self.pipeline is not None:
            return self.pipeline
        local = self.shapes_run / "pipeline"
        return local if (local / "model_index.json").is_file() else "shapes"

    def get_pipeline(self):
        """The unCLIP pipeline under test (fp32, on ``device``), loaded once."""
        if "pipeline" not in self._memo:
            from unclip.pipeline import UnCLIPPipeline

            pipe = UnCLIPPipeline.from_pretrained(self.pipeline_source(), device=self.device, dtype=torch.float32)
            pipe.set_progress_bar_config(disable=True)  # experiments report their own progress
            self._memo["pipeline"] = pipe
            self._check_consistency()
        return self._memo["pipeline"]

    def get_oracle(self):
        if "oracle" not in self._memo:
            from unclip.measure.oracle import load_oracle

            self._memo["oracle"] = load_oracle(path=self.oracle, device=self.device)
        return self._memo["oracle"]

    def cache_dir(self) -> Path:
        return Path(self.cache) if self.cache is not None else self.shapes_run / "cache"

    def get_cache(self):
        """The shapes cache (images, z_i, text embeddings, records) the models were trained on."""
        if "cache" not in self._memo:
            from unclip.data.embed_cache import EmbeddingCache

            directory = self.cache_dir()
            if not (directory / "meta.json").is_file() and not (directory / "index.json").is_file():
                if self.cache is not None or (self.shapes_run / "clip").is_dir():
                    raise FileNotFoundError(
                        f"no shapes cache at {directory}: run `unclip train shapes -o {self.shapes_run}` first "
                        "or pass --cache"
                    )
                self._build_recipe_cache(directory)
            cache = EmbeddingCache.load(directory)
            if cache.records is None:
                raise ValueError(f"{directory} is not a shapes-world cache (it has no attribute records)")
            if not 0 < self.holdout < len(cache):
                raise ValueError(f"holdout={self.holdout} does not fit a cache of {len(cache)} rows")
            self._memo["cache"] = cache
            self._check_consistency()
        return self._memo["cache"]

    def _build_recipe_cache(self, directory: Path) -> None:
        """Render and embed the cache the pipeline's recipe trained on (from a clean clone: the built-in
        model's CLIP, 30,000 samples of world seed 0 at 64 px, about 1 CPU-minute), so experiments need no
        earlier ``unclip train shapes`` run. Rows are a pure function of (CLIP, world seed, index)."""
        from unclip.data.shapes import ShapesWorld
        from unclip.data.shapes_cache import build_shapes_cache
        from unclip.recipes import get_recipe

        recipe = get_recipe("shapes", device="cpu")
        self.log(
            f"no shapes cache at {directory}: building it with the CLIP of {self.pipeline_source()} "
            f"({recipe.cache_size:,} samples of world seed {recipe.world_seed} at {recipe.cache_image_size} px, "
            "as the recipe)"
        )
        clip = self.get_pipeline().clip
        world = ShapesWorld(seed=recipe.world_seed)
        build_shapes_cache(directory, clip, recipe.cache_size, world, recipe.cache_image_size, progress=self.progress)

    def get_clip(self):
        """The frozen CLIP: the pipeline's when a pipeline exists, else ``shapes_run/clip/model``."""
        if "clip" not in self._memo:
            local = self.shapes_run / "clip" / "model"
            if self.pipeline is None and not (self.shapes_run / "pipeline").is_dir() and local.is_dir():
                from unclip.encoders.loading import load_clip

                self._memo["clip"] = load_clip(local, device=self.device)
            else:
                self._memo["clip"] = self.get_pipeline().clip
            self._check_consistency()
        return self._memo["clip"]

    def _check_consistency(self) -> None:
        """Once a cache and a CLIP (or pipeline) are both loaded, check that this CLIP built the cache."""
        if self._memo.get("consistent") or "cache" not in self._memo:
            return
        clip = self._memo.get("clip")
        if clip is None and "pipeline" in self._memo:
            clip = self._memo["pipeline"].clip
        if clip is None:
            return
        from unclip.data.embed_cache import null_text_for_cache

        try:
            null_text_for_cache(self._memo["cache"], clip)
        except ValueError as err:
            raise ValueError(
                f"the cache {self.cache_dir()} was not built by the CLIP of {self.pipeline_source()} "
                f"(or {self.shapes_run / 'clip' / 'model'}): {err}; pass a matching --cache/--pipeline/--shapes-run"
            ) from None
        self._memo["consistent"] = True

    def heldout_rows(self, count: int | None = None) -> list[int]:
        """The first ``count`` (default all) held-out cache rows."""
        n = len(self.get_cache())
        rows = list(range(n - self.holdout, n))
        return rows if count is None else rows[:count]

    def generator(self, *keys: int) -> torch.Generator:
        """A CPU generator seeded by ``(ctx.seed, *keys)`` (one per work unit, so units resume exactly)."""
        seed = self.seed
        for k in keys:
            seed = (seed * 1_000_003 + int(k)) % (2**62)
        return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------- results


def to_jsonable(value: Any) -> Any:
    """Dataclasses, numpy and torch scalars/arrays, tuples and paths -> plain JSON values (NaN -> None)."""
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return to_jsonable(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        f = float(value)
        return f if math.isfinite(f) else None
    if isinstance(value, Path):
        return str(value)
    return value


class ResultStore:
    """JSON results of finished work units, one file each under ``directory``, written atomically."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if not key or not re.fullmatch(r"[A-Za-z0-9_.=+-]+", key):
            raise ValueError(f"unit key {key!r} must be non-empty and use only letters, digits and _.=+-")
        return self.directory / f"{key}.json"

    def get(self, key: str) -> Any | None:
        path = self.path(key)
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, key: str, value: Any) -> Any:
        value = to_jsonable(value)
        atomic_write_text(self.path(key), json.dumps(value, indent=1) + "\n")
        return value

    def compute(self, key: str, fn: Callable[[], Any]) -> Any:
        """The stored result of ``key``, or ``fn()`` stored under ``key``."""
        found = self.get(key)
        return found if found is not None else self.put(key, fn())


class Progress:
    """One log line per finished unit: ``[name] 3/12 what (42 s, ~2 min left)``."""

    def __init__(self, name: str, total: int, log: Log) -> None:
        self.name, self.total, self.log = name, max(1, total), log
        self.done, self.t0, self.timed = 0, time.monotonic(), 0

    def step(self, what: str, cached: bool = False) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.t0
        if cached:
            self.log(f"[{self.name}] {self.done}/{self.total} {what} (cached)")
            return
        self.timed += 1
        left = elapsed / self.timed * (self.total - self.done)
        self.log(f"[{self.name}] {self.done}/{self.total} {what} ({elapsed:.0f} s, ~{left / 60:.1f} min left)")

    def unit(self, store: ResultStore, key: str, fn: Callable[[], Any], what: str | None = None) -> Any:
        """``store.compute(key, fn)`` with a progress line."""
        cached = store.get(key)
        if cached is not None:
            self.step(what or key, cached=True)
            return cached
        value = store.put(key, fn())
        self.step(what or key)
        return value


# ---------------------------------------------------------------------------------------------- outputs


@dataclass
class Verdict:
    """Whether a claim held at our scale.

    Attributes:
        held: True (held), False (did not hold), None (inconclusive: differences within noise).
        summary: our number(s) in one line, e.g. "entropy 0.71 vs 0.42 at matched accuracy 0.80".
    """

    held: bool | None
    summary: str
    not_run: bool = False  # a compared model failed the competence gate: no verdict (held is None)

    @property
    def label(self) -> str:
        if self.not_run:
            return "not run"
        return {True: "held", False: "did not hold", None: "inconclusive"}[self.held]


def competence_gate(
    verdict: Verdict, best_accuracy: dict[str, float], labels: dict[str, str], minimum: float
) -> tuple[Verdict, dict[str, Any]]:
    """The verdict if every compared model reaches ``minimum`` mean specified-attribute accuracy at its best
    guidance (``best_accuracy``: model -> accuracy), else "not run: model X at 0.55" and no verdict; with the
    gate's record for the JSON (``{"minimum", "best_accuracy", "failed", "labels"}``)."""
    from unclip.experiments.verdicts import competence_failures

    failed = competence_failures(best_accuracy, minimum)
    labels = {m: labels.get(m, m) for m in best_accuracy}
    record = {"minimum": minimum, "best_accuracy": dict(best_accuracy), "failed": failed, "labels": labels}
    if not failed:
        return verdict, record
    passed = [m for m in best_accuracy if m not in failed]
    summary = "not run: " + ", ".join(f"model {labels[m]} at {best_accuracy[m]:.2f}" for m in failed)
    summary += f" (gate: every compared model >= {minimum:.2f} mean specified-attribute accuracy at its best guidance"
    summary += ("; " + ", ".join(f"{labels[m]} {best_accuracy[m]:.2f}" for m in passed) if passed else "") + ")."
    return Verdict(None, summary, not_run=True), record


def gate_markdown(gate: dict[str, Any]) -> str:
    """One line stating each compared model's best accuracy against the gate (a :func:`competence_gate` record)."""
    parts = [
        f"{gate['labels'][m]} {a:.3f} {'(failed)' if m in gate['failed'] else '(passed)'}"
        for m, a in gate["best_accuracy"].items()
    ]
    return (
        f"**Competence gate** (mean specified-attribute accuracy at each model's best guidance >= "
        f"{gate['minimum']:.2f}): " + "; ".join(parts) + "."
    )


@dataclass
class ExperimentResult:
    """What an experiment produces: verdict, markdown table, JSON-able data, a figure and notes (markdown)."""

    verdict: Verdict
    table: str
    data: dict[str, Any]
    figure: Any
    notes: str = ""


@dataclass(frozen=True)
class ExperimentSpec:
    """An experiment: its number and name, the paper's claim, what it needs, its CPU budgets and its code.

    Attributes:
        number, name, title: issue 7's numbering, the CLI name, a heading.
        claim: the paper's claim as we test it; paper: the paper's evidence/number.
        needs: what must exist ("pipeline", "cache", "oracle", "baselines", "priors").
        cpu_budget: per budget name, a human estimate of CPU time on 2 cores.
        settings: per budget name, the experiment's settings dataclass.
        run: ``run(ctx, settings) -> ExperimentResult``.
    """

    number: int
    name: str
    title: str
    claim: str
    paper: str
    needs: tuple[str, ...]
    cpu_budget: dict[str, str]
    settings: dict[str, Any]
    run: Callable[[ExperimentContext, Any], ExperimentResult]

    def command(self, budget: str = "quick") -> str:
        return f"unclip experiment {self.name} --budget {budget}"


def markdown_table(header: list[str], rows: list[list[Any]], digits: int = 3) -> str:
    """A markdown table; floats rounded to ``digits``, None shown as "—"."""

    def cell(v: Any) -> str:
        if v is None:
            return "—"
        if isinstance(v, float):
            return "nan" if not math.isfinite(v) else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def error_bar_lengths(values: list[float], intervals: list[tuple[float, float]]) -> list[list[float]]:
    """Matplotlib's ``[[below...], [above...]]`` error-bar lengths of each value's (low, high) interval, never
    negative (a percentile interval need not contain its point estimate)."""
    return [[max(v - lo, 0.0) for v, (lo, _) in zip(values, intervals)],
            [max(hi - v, 0.0) for v, (_, hi) in zip(values, intervals)]]  # fmt: skip


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.8):
    """A matplotlib figure with ``ncols`` axes side by side (Agg backend, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def write_outputs(
    spec: ExperimentSpec,
    result: ExperimentResult,
    out_dir: str | Path,
    budget: str,
    settings: Any,
    seconds: float,
    command: str | None = None,
) -> dict[str, Path]:
    """Write ``NAME.md``, ``NAME.json`` and ``NAME.png`` under ``out_dir`` (atomically); returns their paths.
    ``command`` reproduces the run (default ``spec.command(budget)``)."""
    command = command or spec.command(budget)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{spec.name}.{ext}" for ext in ("md", "json", "png")}
    finished = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    payload = {
        "number": spec.number,
        "name": spec.name,
        "title": spec.title,
        "claim": spec.claim,
        "paper": spec.paper,
        "budget": budget,
        "settings": settings,
        "command": command,
        "wall_seconds": round(seconds, 1),
        "finished": finished,
        "verdict": {
            "held": result.verdict.held,
            "label": result.verdict.label,
            "summary": result.verdict.summary,
            "not_run": result.verdict.not_run,
        },
        "results": result.data,
    }
    atomic_write_text(paths["json"], json.dumps(to_jsonable(payload), indent=1) + "\n")
    result.figure.tight_layout()
    atomic_write(paths["png"], lambda f: result.figure.savefig(f, format="png", dpi=110))
    plt.close(result.figure)
    md = [
        f"# {spec.number}. {spec.title}",
        "",
        f"**Claim (paper).** {spec.claim} {spec.paper}",
        "",
        f"**Verdict at our scale: {result.verdict.label}.** {result.verdict.summary}",
        "",
        *([gate_markdown(result.data["gate"]), ""] if "gate" in result.data else []),
        result.table,
        "",
        f"![{spec.name}]({spec.name}.png)",
        "",
    ]
    if result.notes:
        md += [result.notes.strip(), ""]
    md += [
        f"Reproduce: `{command}` (budget `{budget}`: {spec.cpu_budget.get(budget, '?')}; "
        f"this run took {seconds / 60:.1f} min wall on a shared 2-core machine, reusing the models and units "
        f"already stored under its run directory, finished {finished}). "
        f"Raw numbers: [{spec.name}.json]({spec.name}.json).",
        "",
    ]
    atomic_write_text(paths["md"], "\n".join(md))
    return paths
