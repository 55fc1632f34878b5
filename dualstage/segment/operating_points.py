"""``operating_point.json``: the typed hand-off of ``segment sweep`` (its only writer).

The file holds one entry per rule name (``default``, ``threshold``, ``threshold_area``,
``triplet`` and, with ``--lcc``, ``lcc``): the rule dict of :mod:`dualstage.gating` plus its
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

from dualstage.io import write_json_atomic
from dualstage.layout import ExperimentDir

__all__ = ["OperatingPoints", "RULE_KEYS", "configured_threshold", "default_rule", "read_chosen_table"]

RULE_KEYS = ("default", "threshold", "threshold_area", "triplet", "lcc")


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
        """Read ``operating_point.json``; FileNotFoundError naming the step, ValueError when malformed."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no operating points; run `segment sweep` first")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            rules = {
                k: {p: v for p, v in raw[k].items() if p != "metrics"}
                for k in RULE_KEYS
                if isinstance(raw.get(k), dict) and "rule" in raw[k]
            }
            metrics = {k: dict(raw[k].get("metrics", {})) for k in rules}
            return cls(
                chosen_on=str(raw["chosen_on"]),
                n_images=int(raw["n_images"]),
                best_rule=str(raw["best_rule"]),
                rules=rules,
                metrics=metrics,
                grid=dict(raw.get("grid", {})),
                fitted_ids=tuple(map(str, raw["fitted_ids"])) if raw.get("fitted_ids") is not None else None,
                path=path,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not a valid operating_point.json ({exc!r})") from None

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
