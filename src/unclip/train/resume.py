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


EXPORTED_WEIGHTS_NAME = "model.safetensors"


def load_init_weights(model: nn.Module, source: Path, task_name: str) -> None:
    """Load starting weights into ``model``: the EMA weights of another run (its directory or its checkpoint
    file), or an exported model folder holding ``model.safetensors`` (e.g. a stage of a saved pipeline such as
    the built-in model's ``clip/`` or ``decoder/``; cast to the model's dtype)."""
    exported = source / EXPORTED_WEIGHTS_NAME if source.is_dir() else None
    path = source / ckpt_lib.CHECKPOINT_NAME if source.is_dir() else source
    if exported is not None and not path.is_file() and exported.is_file():
        from safetensors.torch import load_file

        state = load_file(str(exported))
        reference = model.state_dict()
        state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
        where = exported
    else:
        if not path.is_file():
            raise ValueError(
                f"init_from={str(source)!r}: no checkpoint at {path} (nor exported {EXPORTED_WEIGHTS_NAME})"
            )
        ckpt = ckpt_lib.load_checkpoint(path)
        if ckpt.get("task") != task_name:
            raise ValueError(f"init_from={str(source)!r} belongs to task {ckpt.get('task')!r}, not {task_name!r}")
        state, where = ckpt["ema"], path
    grown = tuple(getattr(model, "grown_prefixes", ()))
    missing = [k for k in model.state_dict() if k not in state]
    if missing and grown and all(k.startswith(grown) for k in missing):
        # a fine-tune that adds zero-initialised modules (e.g. SmallCLIP's located colour branch): keep their init
        print(f"init_from: {len(missing)} tensors of added modules keep their initialisation ({', '.join(grown)})")
        state = {**model.state_dict(), **state}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first_line = str(err).splitlines()[0]
        raise ValueError(
            f"init_from={str(source)!r} ({where.name}) does not fit the task's model: {first_line}"
        ) from None
