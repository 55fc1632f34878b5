"""``report/summary.json``: the comparison in a fixed, machine-readable shape.

    {"protocol": "crossfit" | "holdout", "n_studies": N, "n_positive": P,
     "gates": {gate: {"mean_dice": [value, low, high], "delta_vs_threshold_area": [value, low, high],
                      "pos_dice": [...], "neg_dice": [...], "pos_accuracy": [...]}},
     "per_fold": {gate: {"mean": m, "sd": s, "n_folds": k}} (cross-fitting),
     "single_model_thresholds": {"0.1": {"mean_dice": v, "pos_dice": v, "neg_dice": v,
                                         "pos_accuracy": v}, ..., "0.9": {...}},
     "outcomes": [[gate, ...], ...] (gates with identical masks on every study share a group),
     "vacuous": [{"gate", "fold", "what"}] (folds where a gate empties or keeps every mask),
     "warnings": ["fold_1 collapsed on ...", ...] (fold models that failed; empty when none),
     "holdout": {... the same "gates" shape for the papers' holdout view, or null}}

Intervals: 95 % percentile bootstrap over studies, paired between gates.
"""

from __future__ import annotations

import pandas as pd

from dualstage.artifacts.gates import SUMMARY_NAMES

__all__ = ["summary_json", "gates_block", "threshold_table"]

KEYS = ("mean_dice", "pos_dice", "neg_dice", "pos_accuracy")


def gates_block(cmp: dict) -> dict:
    """{summary gate name: {metric: [value, lo, hi], delta_vs_threshold_area: [value, lo, hi]}}."""
    out = {}
    for key, g in cmp["gates"].items():
        entry = {m: [g["metrics"][m][x] for x in ("value", "lo", "hi")] for m in KEYS}
        d = g.get("diff_vs_reference") or {}
        entry["delta_vs_threshold_area"] = [d.get("value"), d.get("lo"), d.get("hi")]
        out[SUMMARY_NAMES.get(key, key)] = entry
    return out


def threshold_table(table3: pd.DataFrame) -> dict:
    """{"0.1": {mean_dice, pos_dice, neg_dice, pos_accuracy}, ..., "0.9": ...} from the sweep's
    ``table3_thresholds.csv`` of the single-model maps (0.1 .. 0.9)."""
    return {f"{float(r['threshold']):.1f}": {k: float(r[k]) for k in KEYS} for _, r in table3.iterrows()}


def summary_json(primary: dict, protocol: str, thresholds: dict | None, holdout: dict | None) -> dict:
    """The summary of the primary comparison, its single-model thresholds and the holdout view."""
    out = {
        "protocol": protocol,
        "n_studies": primary["n"],
        "n_positive": primary["n_pos"],
        "resamples": primary["resamples"],
        "confidence": primary["confidence"],
        "gates": gates_block(primary),
        "per_fold": {
            SUMMARY_NAMES.get(k, k): {x: v[x] for x in ("mean", "sd", "n_folds")}
            for k, v in (primary.get("per_fold") or {}).items()
        },
        "single_model_thresholds": thresholds,
        "outcomes": [[SUMMARY_NAMES.get(k, k) for k in grp] for grp in primary.get("outcomes", [])],
        "vacuous": [
            {**v, "gate": SUMMARY_NAMES.get(v["gate"], v["gate"])} for v in primary.get("vacuous", [])
        ],
        "warnings": list(primary.get("warnings", [])),
        "holdout": None,
    }
    if holdout is not None and protocol != "holdout":
        out["holdout"] = {
            "n_studies": holdout["n"],
            "n_positive": holdout["n_pos"],
            "gates": gates_block(holdout),
        }
    return out
