"""Type and range checks for config values, applied when a YAML file is loaded.

Each dataclass field may carry ``metadata`` with ``bools`` ({False: ..., True: ...} for YAML's
``off`` / ``on``), ``choices`` (a tuple, or a callable returning
one), ``min`` / ``max`` (inclusive) and ``positive`` (> 0). Messages name the key, the value and
what was expected, e.g. ``train.phases[2].epochs: expected a positive integer, got -2``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

__all__ = ["check_value", "ConfigError"]


class ConfigError(ValueError):
    """A config value of the wrong type or out of range (one line naming the key)."""


_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping"}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(a) for a in typing.get_args(tp) if a is not type(None)]
        none = type(None) in typing.get_args(tp)
        return " or ".join(parts) + (" or null" if none else "")
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    return _NAMES.get(tp, str(tp))


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` converted to ``tp`` (int -> float allowed; lists -> tuples) or ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if origin is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")
        return tuple(_convert(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
    else:
        return value
    raise ConfigError(f"{where}: expected {_describe(tp)}, got {value!r}")


def check_value(f: dataclasses.Field, tp: Any, value: Any, where: str) -> Any:
    """Convert ``value`` to the field's type and apply its metadata checks."""
    meta = f.metadata
    if isinstance(value, bool) and "bools" in meta:  # YAML reads `off` / `on` as booleans
        value = meta["bools"][value]
    value = _convert(tp, value, where)
    if value is None:
        return value
    items = value if isinstance(value, tuple) else (value,)
    for v in items:
        if isinstance(v, int | float) and not isinstance(v, bool):
            if meta.get("positive") and not v > 0:
                kind = "integer" if isinstance(v, int) else "number"
                raise ConfigError(f"{where}: expected a positive {kind}, got {v!r}")
            if "min" in meta and v < meta["min"]:
                raise ConfigError(f"{where}: expected a value >= {meta['min']}, got {v!r}")
            if "max" in meta and v > meta["max"]:
                raise ConfigError(f"{where}: expected a value <= {meta['max']}, got {v!r}")
        choices = meta.get("choices")
        if choices is not None:
            valid = choices() if callable(choices) else choices
            if v not in valid and not (meta.get("or_path") and isinstance(v, str) and ("/" in v or "." in v)):
                extra = " or a path to a local file" if meta.get("or_path") else ""
                raise ConfigError(f"{where}: unknown value {v!r}; valid: {', '.join(map(str, valid))}{extra}")
    return value
