"""Typed config dataclasses <-> JSON.

Every model and training config in unclip is a (possibly nested) dataclass. ``save_config`` writes it
as JSON next to the weights, ``load_config`` rebuilds it, converting lists back to tuples and nested
dicts back to dataclasses according to the type hints. Unknown keys are an error that names them.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from unclip.io import atomic_write_text

T = TypeVar("T")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass instance, got {type(config).__name__}")
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _convert(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return config_from_dict(tp, value)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value)
            except (TypeError, ValueError):
                continue
        return value
    if origin is tuple and isinstance(value, (list, tuple)):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        if args:
            return tuple(_convert(a, v) for a, v in zip(args, value))
        return tuple(value)
    if origin is list and isinstance(value, (list, tuple)):
        return [_convert(args[0], v) if args else v for v in value]
    if origin is dict and isinstance(value, dict):
        return {k: _convert(args[1], v) if args else v for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a dataclass of type ``cls`` from a dict produced by :func:`config_to_dict`."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for {cls.__name__}; expected a subset of {sorted(names)}")
    kwargs = {k: _convert(hints[k], v) for k, v in data.items()}
    return cls(**kwargs)


def save_config(config: Any, path: str | Path) -> None:
    """Write ``config`` as pretty JSON, atomically."""
    atomic_write_text(Path(path), json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n")


def load_config(cls: type[T], path: str | Path) -> T:
    """Read a JSON config written by :func:`save_config` into ``cls``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"config file {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a JSON object, got {type(data).__name__}")
    return config_from_dict(cls, data)
