"""The paper's claims as experiments on the shapes world (issue 7; ``docs/experiments/``).

Each experiment is a module with an :class:`~unclip.experiments.common.ExperimentSpec` named ``SPEC``;
:data:`EXPERIMENTS` lists them in issue 7's order. :func:`run_experiment` runs one (resumably) and writes its
table, JSON and plot, then refreshes ``README.md`` (:func:`~unclip.experiments.report.write_readme`).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from unclip.experiments.common import ExperimentContext, ExperimentSpec

EXPERIMENTS: dict[str, str] = {
    "diversity": "unclip.experiments.diversity",
    "prior_matters": "unclip.experiments.prior_matters",
    "ar_vs_diffusion": "unclip.experiments.ar_vs_diffusion",
    "guidance_fid": "unclip.experiments.guidance_fid",
    "variations": "unclip.experiments.variations",
    "text_diffs": "unclip.experiments.text_diffs",
    "binding": "unclip.experiments.binding",
    "pca": "unclip.experiments.pca",
    "eclipse": "unclip.experiments.eclipse",
}
BUDGETS = ("quick", "full")

__all__ = ["BUDGETS", "EXPERIMENTS", "ExperimentContext", "get_spec", "run_experiment"]


def get_spec(name: str) -> ExperimentSpec:
    """The :class:`ExperimentSpec` of experiment ``name`` (one of :data:`EXPERIMENTS`)."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {list(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name]).SPEC


def run_experiment(
    name: str, ctx: ExperimentContext, budget: str = "quick", settings: Any = None, **overrides: Any
) -> dict[str, Path]:
    """Run experiment ``name`` with the settings of ``budget`` (or explicit ``settings``, with field
    ``overrides``), write ``NAME.md/.json/.png`` under ``ctx.out_dir`` and refresh its README.

    Finished work units are read back from ``ctx.run_root/NAME`` instead of being recomputed.
    """
    from unclip.experiments.common import write_outputs
    from unclip.experiments.report import write_readme

    spec = get_spec(name)
    if settings is None:
        if budget not in spec.settings:
            raise ValueError(f"unknown budget {budget!r} for {name}; choose one of {list(spec.settings)}")
        settings = spec.settings[budget]
    if overrides:
        settings = replace(settings, **overrides)
    t0 = time.monotonic()
    ctx.log(f"[{name}] budget {budget}: {spec.cpu_budget.get(budget, 'custom settings')}")
    result = spec.run(ctx, settings)
    command = spec.command(budget) + (f" {ctx.command_extra}" if ctx.command_extra else "")
    paths = write_outputs(spec, result, ctx.out_dir, budget, settings, time.monotonic() - t0, command)
    write_readme(ctx.out_dir)
    ctx.log(f"[{name}] {result.verdict.label}: {result.verdict.summary}")
    return paths
