"""A gate's records (``final/<set>/<mode>/``): the checked reader of what ``classify gate apply``
(and the cross-fitted final masks) write there and the report reads back.

    decisions.csv   image_id, [fold,] probability, [threshold,] decision (0 / 1), mask_area_px [, ...]
    summary.json    mode, threshold, pixel_rule, counts [, metrics]

A file that is there but malformed is a :class:`~dualstage.core.io.HandoffError` naming the file and the
column or field (``decision: expected 0 or 1, got 'abc'``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from dualstage.core import gating
from dualstage.core.io import HandoffError

__all__ = ["read_decisions", "read_gate_summary"]


def _column_problem(table: pd.DataFrame) -> str | None:
    """What is wrong with a decisions table ("column: ..."), or None."""
    for column in ("image_id", "decision"):
        if column not in table.columns:
            return f"no {column} column"
    if table["image_id"].isna().any() or table["image_id"].duplicated().any():
        return "image_id: empty or repeated ids"
    if not table["decision"].astype(str).isin(["0", "1"]).all():
        wrong = table["decision"][~table["decision"].astype(str).isin(["0", "1"])].iloc[0]
        return f"decision: expected 0 or 1, got {wrong!r}"
    checks = {"mask_area_px": (0, math.inf), "probability": (0, 1)}
    for column, (low, high) in checks.items():
        if column in table.columns:
            values = pd.to_numeric(table[column], errors="coerce")
            wrong = values.isna() | (values < low) | (values > high)
            if column == "mask_area_px":
                wrong |= values % 1 != 0
            if wrong.any():
                return f"{column}: expected a number in [{low}, {high}], got {table[column][wrong].iloc[0]!r}"
    return None


def read_decisions(folder: str | Path) -> pd.DataFrame:
    """``decisions.csv`` of a gate folder, checked (image_id str, decision int 0/1, areas >= 0)."""
    path = Path(folder) / "decisions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; run `classify gate apply`")
    try:
        table = pd.read_csv(path, dtype={"image_id": str})
    except (ValueError, UnicodeDecodeError) as exc:
        raise HandoffError(f"{path}: unreadable decisions ({' '.join(str(exc).split())})") from None
    problem = _column_problem(table)
    if problem:
        raise HandoffError(f"{path}: {problem}; re-run `classify gate apply`")
    table["decision"] = table["decision"].astype(int)
    return table


def read_gate_summary(folder: str | Path) -> dict:
    """``summary.json`` of a gate folder ({} when absent), checked: an object whose ``pixel_rule`` is
    a valid rule and whose ``threshold`` a number in [0, 1]."""
    path = Path(folder) / "summary.json"
    if not path.is_file():
        return {}
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise HandoffError(f"{path}: not valid JSON ({exc}); re-run `classify gate apply`") from None
    if not isinstance(summary, dict):
        raise HandoffError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    rule = summary.get("pixel_rule")
    if rule is not None:
        try:
            gating.check_rule(rule)
        except ValueError as exc:
            field = f"pixel_rule.{exc}" if ": " in str(exc) else f"pixel_rule: {exc}"
            raise HandoffError(f"{path}: {field}; re-run `classify gate apply`") from None
    thr = summary.get("threshold")
    if thr is not None and (isinstance(thr, bool) or not isinstance(thr, int | float) or not 0 <= thr <= 1):
        raise HandoffError(f"{path}: threshold: expected a number in [0, 1], got {thr!r}")
    return summary
