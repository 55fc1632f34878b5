"""The gate table: each gate's per-image counts over one set of studies, as the comparison reads them.

Built by :mod:`dualstage.crossfit.compare` (cross-fitted, every study) and
:mod:`dualstage.report.compare` (the holdout view); compared by
:func:`dualstage.report.compare.compare_counts`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from dualstage.artifacts.gates import BASELINE

__all__ = ["BAD_INPUT", "Gate", "describe_rule", "gate_table"]

BAD_INPUT = "bad input: "  # a skipped gate whose input file is malformed (the report stops, or is partial)


class Gate(NamedTuple):
    """One gate's per-image counts on the test split (arrays (N,), aligned to the histograms)."""

    key: str
    name: str
    rule: str  # the operating point in words
    params: dict | None  # the pixel rule (gating rule dict); None for the all-empty baseline
    inter: np.ndarray
    pred_area: np.ndarray
    decision: np.ndarray | None  # classifier keep (1) / empty (0), or None


def describe_rule(rule: Mapping) -> str:
    """A rule dict in words, e.g. ``threshold 0.55, min area 2000 px`` (areas at 1024 x 1024)."""
    name = rule.get("rule")
    if name == "triplet":
        text = f"triplet top {rule['top']:g}, min area {rule['min_area']:g} px, bottom {rule['bottom']:g}"
    elif name == "threshold_area":
        text = f"threshold {rule['threshold']:g}, min area {rule['min_area']:g} px"
    else:
        text = f"threshold {rule['threshold']:g}"
    return text + (" + largest component" if rule.get("lcc") else "")


def gate_table(ids, true_area, n_pix, gates: list, skipped: dict, chosen_on, fold_model, **extra) -> dict:
    """The per-image counts of ``gates`` (N,) plus the all-empty baseline, as :func:`compare_counts` takes."""
    zero = np.zeros_like(np.asarray(true_area))
    gates = [*gates, Gate(BASELINE.key, BASELINE.label, "every mask empty", None, zero, zero, None)]
    return {
        "image_id": ids,
        "true_area": np.asarray(true_area),
        "n_pixels": np.asarray(n_pix),
        "gates": gates,
        "skipped": skipped,
        "chosen_on": chosen_on,
        "fold_model": fold_model,
        **extra,
    }
