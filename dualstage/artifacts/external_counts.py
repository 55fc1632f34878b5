"""``external/<set>/counts.csv`` and ``external.json``: the typed hand-off of an external evaluation.

Written by :mod:`dualstage.crossfit.external_eval` (through :func:`write_counts` / :func:`write_record`),
read by the report (:mod:`dualstage.report.external`); nothing else parses them.

    counts.csv     image_id, fold (the external set's own), true_area, n_pixels and, per variant
                   (``frozen`` | ``rechosen``) and gate key, ``<variant>.<gate>.{inter,area,decision,digest}``
    external.json  set, n, pipelines, deployed, gates, skipped, area (mode, text, factor), external_folds,
                   frozen ({pipeline: {rules, thresholds}}), rechosen ({fold: {pipeline: ...}})
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dualstage.artifacts.layout import ExperimentDir
from dualstage.core.io import write_csv_atomic, write_json_atomic

__all__ = ["VARIANTS", "FIELDS", "write_counts", "read_counts", "write_record", "read_record", "gate_columns"]

VARIANTS = ("frozen", "rechosen")
FIELDS = ("inter", "area", "decision", "digest")


def write_counts(exp: ExperimentDir, name: str, rows: list[dict]) -> Path:
    """Write ``external/<name>/counts.csv`` from one dict per study."""
    path = exp.external(name) / "counts.csv"
    write_csv_atomic(pd.DataFrame(rows), path)
    return path


def read_counts(exp: ExperimentDir, name: str) -> pd.DataFrame:
    """``external/<name>/counts.csv``; FileNotFoundError naming the command that writes it."""
    path = exp.external(name) / "counts.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `python -m dualstage external` first")
    return pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False)


def gate_columns(counts: pd.DataFrame, variant: str, key: str) -> dict[str, np.ndarray]:
    """{field: (N,) array} of one gate in one variant (KeyError when the gate was not scored)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    out = {f: counts[f"{variant}.{key}.{f}"].to_numpy() for f in FIELDS}
    for f in ("inter", "area", "decision"):
        out[f] = out[f].astype(np.int64)
    out["digest"] = out["digest"].astype(str)
    return out


def write_record(exp: ExperimentDir, name: str, record: dict) -> Path:
    """Write ``external/<name>/external.json``."""
    return write_json_atomic(exp.external(name) / "external.json", record)


def read_record(exp: ExperimentDir, name: str) -> dict:
    """``external/<name>/external.json``; FileNotFoundError naming the command that writes it."""
    path = exp.external(name) / "external.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `python -m dualstage external` first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a valid external record ({exc})") from None
