"""Experiment configuration: YAML files in ``experiments/`` loaded into frozen dataclasses.

A file may name a ``base:`` (another YAML, relative to it) whose values it overrides,
section by section. Unknown keys are errors that list the valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DataConfig", "Experiment", "load_experiment", "from_dict"]


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is prepared."""

    source: str = "phantom"  # "phantom" (generated) or a dataset folder
    layout: str = "auto"
    annotations: str | None = None
    phantom_n: int = 600
    phantom_size: int = 1024
    phantom_layout: str = "siim"
    phantom_seed: int = 0
    sizes: tuple[int, ...] = (256, 512, 1024)
    n_folds: int = 10
    split_seed: int = 0
    workers: int = 2


@dataclass(frozen=True)
class Experiment:
    """One experiment = one YAML file = one folder ``models/<name>/``."""

    name: str
    data: DataConfig = field(default_factory=DataConfig)
    output_root: str = "models"

    @property
    def folder(self) -> Path:
        return Path(self.output_root) / self.name


def from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``values``; unknown keys raise ``ValueError`` listing valid ones."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    kwargs = {}
    for key, value in values.items():
        factory = fields[key].default_factory
        if isinstance(factory, type) and dataclasses.is_dataclass(factory):
            kwargs[key] = from_dict(factory, value or {}, f"{where}.{key}")
        elif isinstance(value, list) and "tuple" in str(fields[key].type):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"experiment file not found: {path}")
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    base = values.pop("base", None)
    return _merge(_read_yaml(path.parent / base), values) if base else values


def load_experiment(path: str | Path) -> Experiment:
    """Load ``experiments/<name>.yaml`` (following ``base:``); the name defaults to the file stem."""
    path = Path(path)
    values = _read_yaml(path)
    values.setdefault("name", path.stem)
    return from_dict(Experiment, values, str(path))
