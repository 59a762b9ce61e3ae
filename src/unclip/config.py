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


class ConfigTypeError(ValueError):
    """A config value whose JSON type does not fit its field (the message names the field)."""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_type(tp: Any, value: Any, where: str) -> None:
    """Raise :class:`ConfigTypeError` when a converted ``value`` cannot be of type ``tp`` (scalars, Literal,
    tuples, lists, dicts, optionals; other types are not checked)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None:
        if tp is type(None) or type(None) in args or tp is Any:
            return
        raise ConfigTypeError(f"field {where!r} must be {_type_name(tp)}, got null")
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                _check_type(arg, value, where)
                return
            except ConfigTypeError as err:
                errors.append(err)
        raise ConfigTypeError(f"field {where!r} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigTypeError(f"field {where!r} must be {_type_name(tp)}, got {value!r}")
        return
    expected = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}
    if tp in expected:
        if not isinstance(value, expected[tp]) or (tp is not bool and isinstance(value, bool)):
            raise ConfigTypeError(f"field {where!r} must be {tp.__name__}, got {value!r}")
        return
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            raise ConfigTypeError(f"field {where!r} must be a list, got {value!r}")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ConfigTypeError(f"field {where!r} must have {len(args)} entries, got {value!r}")
            for i, (a, v) in enumerate(zip(args, value)):
                _check_type(a, v, f"{where}[{i}]")
        elif args:
            for i, v in enumerate(value):
                _check_type(args[0], v, f"{where}[{i}]")
        return
    if origin is dict and not isinstance(value, dict):
        raise ConfigTypeError(f"field {where!r} must be an object, got {value!r}")
    if dataclasses.is_dataclass(tp) and not dataclasses.is_dataclass(value):
        raise ConfigTypeError(f"field {where!r} must be an object ({tp.__name__}), got {value!r}")


def config_from_dict(cls: type[T], data: dict[str, Any], _where: str = "") -> T:
    """Rebuild a dataclass of type ``cls`` from a dict produced by :func:`config_to_dict`.

    Values are type-checked against the field hints; a wrong type raises :class:`ConfigTypeError` naming the
    field (``decoder.channel_mult[1]``)."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, dict):
        raise ConfigTypeError(f"{_where or cls.__name__} must be an object, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for {cls.__name__}; expected a subset of {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        where = f"{_where}.{key}" if _where else key
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            kwargs[key] = config_from_dict(hints[key], value, where)
            continue
        converted = _convert(hints[key], value)
        _check_type(hints[key], converted, where)
        kwargs[key] = converted
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:  # the dataclass's own checks (__post_init__)
        if isinstance(err, ConfigTypeError):
            raise
        raise ConfigTypeError(f"{cls.__name__}: {err}") from None


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
    except UnicodeDecodeError as err:
        raise ValueError(f"config file {path} is not UTF-8 text: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a JSON object, got {type(data).__name__}")
    try:
        return config_from_dict(cls, data)
    except ValueError as err:
        raise type(err)(f"config file {path}: {err}") from None
