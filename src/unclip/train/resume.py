"""Which checkpoint a run may continue from: the run directory's own (the same task, the same result-changing
settings), or another run's EMA weights as a starting point (``init_from``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from torch import nn

from unclip.config import config_to_dict
from unclip.train import checkpoint as ckpt_lib
from unclip.train.config import TrainConfig, result_field_differences
from unclip.train.dist import DistInfo
from unclip.train.settings import setting_differences
from unclip.train.task import TrainTask


def resume_checkpoint(
    task: TrainTask, config: TrainConfig, out_dir: Path, info: DistInfo, settings: dict[str, Any]
) -> dict[str, Any] | None:
    """The checkpoint of ``out_dir`` to resume from (None when there is none), after checking that it belongs to
    ``task`` and that neither the loop's result-changing fields nor the task's ``settings`` changed."""
    path = out_dir / ckpt_lib.CHECKPOINT_NAME
    if not path.exists():
        return None
    ckpt = ckpt_lib.load_checkpoint(path)
    if ckpt["task"] != task.name:
        raise ValueError(f"{path} belongs to task {ckpt['task']!r}, not {task.name!r}; use another out_dir")
    diffs = result_field_differences(ckpt["config"], config_to_dict(config))
    saved_settings = ckpt.get("task_settings")
    if isinstance(saved_settings, dict):
        diffs += setting_differences(saved_settings, settings)
    elif settings and info.is_main:
        print(
            f"[{task.name}] warning: {path} does not record the task's settings (written by an older unclip); "
            "they cannot be checked on this resume",
            file=sys.stderr,
            flush=True,
        )
    if diffs:
        shown, seen = [], set()
        for name, a, b in diffs:  # one setting seen through several objects (config.x, model_config.x): once
            key = (name.rsplit(".", 1)[-1], repr(a), repr(b))
            if key not in seen:
                seen.add(key)
                shown.append(f"{name}: checkpoint has {a!r}, now {b!r}")
        text = "; ".join(shown)
        raise ValueError(
            f"cannot resume from {path}: settings that change the result differ ({text}). "
            "Restore those values, or start over in a new output directory."
        )
    return ckpt


def load_init_weights(model: nn.Module, source: Path, task_name: str) -> None:
    """Load the EMA weights of another run (its directory or its checkpoint file) into ``model``."""
    path = source / ckpt_lib.CHECKPOINT_NAME if source.is_dir() else source
    if not path.is_file():
        raise ValueError(f"init_from={str(source)!r}: no checkpoint at {path}")
    ckpt = ckpt_lib.load_checkpoint(path)
    if ckpt.get("task") != task_name:
        raise ValueError(f"init_from={str(source)!r} belongs to task {ckpt.get('task')!r}, not {task_name!r}")
    try:
        model.load_state_dict(ckpt["ema"])
    except RuntimeError as err:
        first_line = str(err).splitlines()[0]
        raise ValueError(f"init_from={str(source)!r} does not fit the task's model: {first_line}") from None
