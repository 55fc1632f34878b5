"""``operating_point.json``: the typed hand-off of ``segment sweep`` (its only writer).

The file holds one entry per rule name (``default``, ``threshold``, ``threshold_area``,
``triplet`` and, with ``--lcc``, ``lcc``): the rule dict of :mod:`dualstage.core.gating` plus its
``metrics`` on the selection set, and ``chosen_on``, ``n_images``, ``best_rule``, ``grid``.
Readers get rules without their metrics through :class:`OperatingPoints`; nothing else parses
the file.

The un-tuned rule ("no gate") is ``train.val_threshold``, one key: :func:`configured_threshold` is
its only reader from an experiment folder, :func:`default_rule` its only rule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from dualstage.artifacts.layout import ExperimentDir
from dualstage.core import gating
from dualstage.core.io import HandoffError, write_json_atomic

__all__ = ["OperatingPoints", "RULE_KEYS", "configured_threshold", "default_rule", "read_chosen_table"]

RULE_KEYS = ("default", "threshold", "threshold_area", "triplet", "lcc")
_MISSING = object()


class _FieldError(ValueError):
    """A field of the file with the wrong type or value (the message starts with the field)."""


def _typed(raw: dict, key: str, kind: type, where: str = "", default: object = _MISSING) -> object:
    """``raw[key]`` when it is a ``kind`` (bools are not numbers); _FieldError naming the field."""
    field_name = f"{where}.{key}" if where else key
    if key not in raw:
        if default is _MISSING:
            raise _FieldError(f"{field_name}: missing")
        return default
    value = raw[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _FieldError(f"{field_name}: expected {kind.__name__}, got {value!r}")
    return value


def default_rule(threshold: float) -> dict:
    """The un-tuned operating point (``train.val_threshold``): threshold only."""
    return {"rule": "threshold", "threshold": float(threshold)}


def configured_threshold(exp_dir: str | Path) -> float:
    """``train.val_threshold`` of an experiment folder: its saved resolved config (experiment.json),
    else a segmenter's ``config.json`` (``main`` first); FileNotFoundError when neither was saved."""
    exp = ExperimentDir(exp_dir)
    configs = [exp.read_config()]
    models = sorted(exp.segmenter.glob("*/config.json"), key=lambda p: (p.parent.name != "main", p))
    for path in models:
        try:
            configs.append(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path}: not a valid config ({exc})") from None
    for config in configs:
        value = (config.get("train") or {}).get("val_threshold") if isinstance(config, dict) else None
        if value is not None:
            return float(value)
    raise FileNotFoundError(
        f"{exp.root}: no saved config with train.val_threshold ({exp.experiment_file.name} or "
        "segmenter/*/config.json); run the experiment's steps through `python -m dualstage`"
    )


@dataclass(frozen=True)
class OperatingPoints:
    """The rules chosen by ``segment sweep`` on one selection set."""

    chosen_on: str
    n_images: int
    best_rule: str
    rules: dict[str, dict]  # name -> gating rule dict (no metrics)
    metrics: dict[str, dict] = field(default_factory=dict)  # name -> metrics on ``chosen_on``
    grid: dict = field(default_factory=dict)
    fitted_ids: tuple[str, ...] | None = None  # the studies the rules were chosen on (cross-fitting)
    path: Path | None = None

    def rule(self, key: str) -> dict:
        """Rule ``key`` as a gating rule dict; ValueError naming the valid keys."""
        if key == "best":
            key = self.best_rule
        if key not in self.rules:
            where = self.path or "operating points"
            raise ValueError(f"{where}: no rule {key!r}; available: {', '.join(self.rules)}")
        return dict(self.rules[key])

    @classmethod
    def read(cls, path: str | Path) -> OperatingPoints:
        """Read ``operating_point.json``, every value checked; FileNotFoundError naming the step,
        ValueError naming the file and the field (``threshold.threshold: expected a number in [0, 1]``)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no operating points; run `segment sweep` first")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise HandoffError(f"{path}: not valid JSON ({exc}); re-run `segment sweep`") from None
        try:
            return cls._checked(raw, path)
        except _FieldError as exc:
            raise HandoffError(f"{path}: {exc}; re-run `segment sweep`") from None

    @classmethod
    def _checked(cls, raw: object, path: Path) -> OperatingPoints:
        """The fields of a parsed file, each type- and range-checked (_FieldError naming the field)."""
        if not isinstance(raw, dict):
            raise _FieldError(f"expected a JSON object, got {type(raw).__name__}")
        rules, metrics = {}, {}
        for key in RULE_KEYS:
            entry = raw.get(key)
            if entry is None:
                continue
            if not isinstance(entry, dict) or "rule" not in entry:
                raise _FieldError(f"{key}: expected a rule (an object with a 'rule' key), got {entry!r}")
            rule = {p: v for p, v in entry.items() if p != "metrics"}
            try:
                gating.check_rule(rule)
            except ValueError as exc:
                raise _FieldError(f"{key}.{exc}" if ": " in str(exc) else f"{key}: {exc}") from None
            rules[key] = rule
            metrics[key] = _typed(entry, "metrics", dict, key, {})
        chosen_on, n_images = _typed(raw, "chosen_on", str), _typed(raw, "n_images", int)
        best = _typed(raw, "best_rule", str)
        if n_images < 0:
            raise _FieldError(f"n_images: expected a count >= 0, got {n_images}")
        if best not in rules:
            raise _FieldError(f"best_rule: {best!r} is not one of the file's rules ({', '.join(rules)})")
        fitted = raw.get("fitted_ids")
        if fitted is not None and (
            not isinstance(fitted, list) or not all(isinstance(i, str) for i in fitted)
        ):
            raise _FieldError("fitted_ids: expected a list of image ids (strings)")
        return cls(
            chosen_on=chosen_on,
            n_images=n_images,
            best_rule=best,
            rules=rules,
            metrics=metrics,
            grid=_typed(raw, "grid", dict, default={}),
            fitted_ids=tuple(fitted) if fitted is not None else None,
            path=path,
        )

    @classmethod
    def read_or_none(cls, path: str | Path) -> OperatingPoints | None:
        """As :meth:`read`, None when the file does not exist."""
        return cls.read(path) if Path(path).is_file() else None

    def write(self, path: str | Path) -> Path:
        """Write the file (the sweep's only writer)."""
        body: dict = {"chosen_on": self.chosen_on, "n_images": self.n_images}
        for k, r in self.rules.items():
            body[k] = {**r, "metrics": self.metrics.get(k, {})}
        body["best_rule"] = self.best_rule
        body["grid"] = self.grid
        if self.fitted_ids is not None:
            body["fitted_ids"] = list(self.fitted_ids)
        return write_json_atomic(path, body)


def read_chosen_table(sweep_set_dir: str | Path) -> pd.DataFrame:
    """``sweep/<set>/chosen.csv``: every chosen rule scored on that set (lcc rules included)."""
    path = Path(sweep_set_dir) / "chosen.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `segment sweep` first")
    return pd.read_csv(path).set_index("name")
