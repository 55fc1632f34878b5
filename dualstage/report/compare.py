"""The gate comparison on the held-out ``test`` split: per-image counts per gate and the bootstrap.

Every gate turns the same test probability maps into final masks with an operating point chosen
on out-of-fold / validation data (``operating_point.json``, ``classifier/gate.json``); counts come
from ``predictions/test/histograms.npz`` through :func:`dualstage.core.gating.rule_counts`, so no map is
loaded. The classifier gates empty an image's mask where ``final/<set>/decisions.csv`` says 0.

Intervals are 95 % percentile bootstrap intervals over images: one seeded index matrix (B, N) is
drawn once and shared by every gate, so the difference of two gates' mean Dice is a *paired*
bootstrap (the difference of a gate with itself is exactly 0 in every resample).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dualstage.artifacts.gate_records import read_decisions, read_gate_summary
from dualstage.artifacts.gate_table import BAD_INPUT, Gate, describe_rule, gate_table  # noqa: F401 (the comparison's input)
from dualstage.artifacts.gates import BASELINE, GATES, REFERENCE, GateSpec, gate_name
from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.operating_points import OperatingPoints, configured_threshold, default_rule
from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.core import gating
from dualstage.core.io import HandoffError
from dualstage.core.metrics import dice_from_counts, presence_report, summarize_counts
from dualstage.core.tolerance import TOL
from dualstage.report.outcomes import outcomes, vacuous_folds

__all__ = [
    "METRICS",
    "BAD_INPUT",
    "Gate",
    "bootstrap_indices",
    "compare",
    "compare_counts",
    "gate_table",
    "describe_rule",
    "interval",
    "load_gates",
    "point_metrics",
    "resampled_metrics",
]

METRICS = {  # key -> column label
    "mean_dice": "mean Dice",
    "pos_dice": "positive-case Dice",
    "neg_dice": "negative-case Dice",
    "pos_accuracy": "positive accuracy",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "specificity": "specificity",
    "iou_pos": "IoU (positives)",
}
CONFIDENCE = 0.95
CHUNK_CELLS = 2_000_000  # resamples x images evaluated at once (bounds memory for large N)


def _decisions(exp: ExperimentDir, spec: GateSpec, ids: np.ndarray, pixel_rule: dict, pred_area: np.ndarray):
    """(decision (N,) int or None, gate threshold or None, reason when unusable) of a classifier gate."""
    d = exp.final("test", spec.key)
    path, shown = d / "decisions.csv", f"final/test/{spec.key}/decisions.csv"
    if not path.is_file():
        return None, None, f"not run: {shown} missing (classify gate apply --mode {spec.key})"
    summary = read_gate_summary(d)
    used = summary.get("pixel_rule")
    if used is not None and {k: v for k, v in used.items() if k != "metrics"} != pixel_rule:
        return None, None, f"stale: {shown} used {describe_rule(used)}, not the chosen rule"
    table = read_decisions(d).set_index("image_id")
    rows = table.reindex(ids)
    if rows["decision"].isna().any():
        missing = int(rows["decision"].isna().sum())
        return None, None, f"not run: {shown} lacks {missing} of {ids.size} test images"
    keep = rows["decision"].to_numpy(dtype=np.int64)
    if "mask_area_px" in rows and not np.array_equal(
        rows["mask_area_px"].to_numpy(np.int64), pred_area * keep
    ):
        return None, None, f"stale: {shown} mask areas disagree with predictions/test"
    return keep, summary.get("threshold"), None


def _rule_of(
    spec: GateSpec, op: OperatingPoints | None, exp: ExperimentDir
) -> tuple[dict | None, str | None]:
    """(the gate's pixel rule, reason when it cannot be scored); "no gate" is ``train.val_threshold``."""
    if spec.rule == "default":
        return default_rule(configured_threshold(exp.root)), None
    if op is None:
        return None, "not run: operating_point.json missing (run `segment sweep`)"
    if spec.rule not in op.rules:
        return None, f"not run: no {spec.rule!r} rule in operating_point.json (segment sweep)"
    return op.rule(spec.rule), None


def load_gates(exp_dir: str | Path) -> dict:
    """Per-image counts of every gate on the test split.

    Returns {image_id (N,), true_area (N,), n_pixels (N,), gates: [Gate], skipped: {name: reason},
    chosen_on, fold_model}. Raises FileNotFoundError without ``predictions/test/histograms.npz``.
    """
    exp = ExperimentDir(exp_dir)
    pset = PredictionSet(exp.prediction_set("test"))
    hist = pset.histograms()
    h, H, W = hist.hist, hist.height, hist.width
    op = OperatingPoints.read_or_none(exp.operating_point)
    gates: list[Gate] = []
    skipped: dict[str, str] = {}
    for spec in GATES:
        rule, why = _rule_of(spec, op, exp)
        if rule is None:
            skipped[spec.label] = why
            continue
        inter, area, true_area, n_pix = gating.rule_counts(h, H, W, rule)
        text, decision = describe_rule(rule), None
        if spec.classifier:
            try:
                decision, thr, reason = _decisions(exp, spec, hist.image_id, rule, area)
            except HandoffError as exc:
                decision, thr, reason = None, None, f"{BAD_INPUT}{exc}"
            if reason:
                skipped[spec.label] = reason
                continue
            text += f"; classifier p >= {thr:g}" if thr is not None else "; classifier decision"
            inter, area = inter * decision, area * decision
        gates.append(Gate(spec.key, gate_name(spec, rule), text, rule, inter, area, decision))
    frame = pset.index() if pset.exists() else pd.DataFrame()
    fold_model = sorted(frame["fold_model"].astype(str).unique().tolist()) if "fold_model" in frame else []
    return gate_table(
        hist.image_id,
        true_area,
        n_pix,
        gates,
        skipped,
        op.chosen_on if op else None,
        fold_model,
        pred_set="test",
    )


def point_metrics(inter, pred_area, true_area, n_pixels) -> dict[str, float]:
    """The table's metrics (METRICS keys) of per-image counts (N,): summarize_counts + presence_report."""
    s = summarize_counts(inter, pred_area, true_area, n_pixels)
    p = presence_report(np.asarray(pred_area) > 0, np.asarray(true_area) > 0)
    return {
        **{k: float(s[k]) for k in ("mean_dice", "pos_dice", "neg_dice", "pos_accuracy", "iou_pos")},
        "precision": p["present"]["precision"],
        "recall": p["present"]["recall"],
        "f1": p["present"]["f1"],
        "specificity": p["specificity"],
    }


def bootstrap_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) int64 image indices drawn with replacement (numpy default_rng(seed))."""
    if n < 1 or resamples < 1:
        raise ValueError(f"need n >= 1 images and resamples >= 1, got n={n}, resamples={resamples}")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _div(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    return np.divide(num, den, out=np.full(np.shape(num), empty, dtype=np.float64), where=den > 0)


def resampled_metrics(inter, pred_area, true_area, idx: np.ndarray) -> dict[str, np.ndarray]:
    """METRICS of every resample: counts (N,), ``idx`` (B, N) -> {key: (B,) float64}.

    The challenge metrics come from :func:`dualstage.core.metrics.summarize_counts` on the (B, N)
    resampled counts (in chunks of CHUNK_CELLS cells); undefined ratios follow the point estimates:
    NaN for Dice / accuracy / IoU over an empty class, 0 for precision / recall / F1 / specificity
    (presence_report's zero_division=0).
    """
    i, p, t = (np.asarray(a) for a in (inter, pred_area, true_area))
    out: dict[str, list[np.ndarray]] = {k: [] for k in METRICS}
    step = max(1, CHUNK_CELLS // max(1, idx.shape[1]))
    for s in range(0, idx.shape[0], step):  # chunks of resamples, not single resamples
        j = idx[s : s + step]
        m = summarize_counts(i[j], p[j], t[j], 1)
        for k in ("mean_dice", "pos_dice", "neg_dice", "pos_accuracy", "iou_pos"):
            out[k].append(np.asarray(m[k], dtype=np.float64))
        n_pos = np.asarray(m["n_pos"], dtype=np.float64)
        tp = ((p[j] > 0) & (t[j] > 0)).sum(axis=1)
        fp = ((p[j] > 0) & (t[j] == 0)).sum(axis=1)
        out["precision"].append(_div(tp, tp + fp, 0.0))
        out["recall"].append(np.nan_to_num(np.asarray(m["pos_accuracy"], dtype=np.float64), nan=0.0))
        out["f1"].append(_div(2.0 * tp, 2 * tp + fp + (n_pos - tp), 0.0))
        out["specificity"].append(np.nan_to_num(np.asarray(m["neg_accuracy"], dtype=np.float64), nan=0.0))
    return {k: np.concatenate(v) for k, v in out.items()}


def interval(values: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile interval of (B,) bootstrap values, NaNs ignored; (nan, nan) when all are NaN."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(v, [alpha, 100.0 - alpha])
    return float(lo), float(hi)


def _paired(a: np.ndarray, b: np.ndarray, point: float) -> dict:
    """Paired difference a - b of (B,) resampled mean Dice values with its point value."""
    d = a - b
    lo, hi = interval(d)
    return {"value": point, "lo": lo, "hi": hi, "share_above_zero": float(np.mean(d > 0))}


def compare(exp_dir: str | Path, resamples: int = 2000, seed: int = 0) -> dict:
    """The comparison: point metrics, 95 % bootstrap intervals, paired differences, per-image frame.

    Returns {n, n_pos, n_neg, resamples, seed, confidence, reference, chosen_on, fold_model,
    gates: {key: {name, rule, params, metrics: {m: {value, lo, hi}}, diff_vs_reference}}, order, skipped,
    best, tied (distinct outcomes with the best mean Dice), winner (best vs the best distinct outcome
    below it), baseline (best vs all empty), outcomes (groups of gates with identical masks on every
    study), same_masks ({"a|b": [n same, n]}), vacuous (folds where a gate does nothing), per_image
    (DataFrame)}. Differences carry ``share_above_zero`` of the resamples; the ranking is over
    distinct outcomes (see :mod:`dualstage.report.outcomes`).
    """
    return compare_counts(load_gates(exp_dir), resamples, seed, split="test")


def _per_fold(per_image: pd.DataFrame, keys: list[str]) -> dict:
    """{gate: {mean, sd, n_folds, folds: {k: mean Dice}}} of mean Dice per fold (cross-fitting)."""
    out = {}
    for key in keys:
        by = per_image.groupby("fold")[f"{key}_dice"].mean()
        out[key] = {
            "mean": float(by.mean()),
            "sd": float(by.std(ddof=1)) if len(by) > 1 else float("nan"),
            "n_folds": int(len(by)),
            "folds": {str(k): float(v) for k, v in by.items()},
        }
    return out


def compare_counts(g: dict, resamples: int = 2000, seed: int = 0, split: str = "test") -> dict:
    """The comparison of per-image gate counts ``g`` (as :func:`load_gates` returns them)."""
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    true_area, n_pix = g["true_area"], g["n_pixels"]
    idx = bootstrap_indices(true_area.size, resamples, seed)
    gates, boot = {}, {}
    per_image = {"image_id": g["image_id"], "true_area": true_area, "has_pneumothorax": (true_area > 0) * 1}
    if g.get("fold") is not None:
        per_image["fold"] = g["fold"]
    for gate in g["gates"]:
        point = point_metrics(gate.inter, gate.pred_area, true_area, n_pix)
        boot[gate.key] = resampled_metrics(gate.inter, gate.pred_area, true_area, idx)
        gates[gate.key] = {
            "name": gate.name,
            "rule": gate.rule,
            "params": gate.params,
            "metrics": {
                m: dict(zip(("value", "lo", "hi"), (point[m], *interval(boot[gate.key][m])), strict=True))
                for m in METRICS
            },
        }
        per_image[f"{gate.key}_pred_area"] = gate.pred_area
        per_image[f"{gate.key}_dice"] = dice_from_counts(gate.inter, gate.pred_area, true_area)
        if gate.decision is not None:
            per_image[f"{gate.key}_decision"] = gate.decision
    ref = REFERENCE if REFERENCE in gates else None
    for key, entry in gates.items():
        entry["diff_vs_reference"] = (
            _paired(
                boot[key]["mean_dice"],
                boot[ref]["mean_dice"],
                entry["metrics"]["mean_dice"]["value"] - gates[ref]["metrics"]["mean_dice"]["value"],
            )
            if ref
            else None
        )
    same = outcomes(g["gates"], g.get("fold"))
    distinct = [grp[0] for grp in same["groups"] if grp[0] != BASELINE.key]
    score = {k: gates[k]["metrics"]["mean_dice"]["value"] for k in distinct}
    ranked = sorted(distinct, key=lambda k: (-score[k], distinct.index(k)))
    tied = [k for k in ranked if ranked and score[k] >= score[ranked[0]] - TOL]
    behind = [k for k in ranked if k not in tied]

    def vs(a: str, b: str) -> dict:
        value = gates[a]["metrics"]["mean_dice"]["value"] - gates[b]["metrics"]["mean_dice"]["value"]
        return {"gate": a, "other": b, **_paired(boot[a]["mean_dice"], boot[b]["mean_dice"], value)}

    frame = pd.DataFrame(per_image)
    return {
        "split": split,
        "n": int(true_area.size),
        "n_pos": int((true_area > 0).sum()),
        "n_neg": int((true_area == 0).sum()),
        "resamples": int(resamples),
        "seed": int(seed),
        "confidence": CONFIDENCE,
        "reference": ref,
        "chosen_on": g["chosen_on"],
        "fold_model": g["fold_model"],
        "gates": gates,
        "order": list(gates),
        "skipped": g["skipped"],
        "best": ranked[0] if ranked else None,
        "outcomes": same["groups"],
        "same_masks": same["same"],
        "vacuous": vacuous_folds(g["gates"], g.get("fold")),
        "collapse": g.get("collapse") or [],
        "warnings": [
            f"{c['model']} collapsed on its {c.get('on', 'out-of-fold studies')}: {c['why']}"
            for c in g.get("collapse") or []
            if c["collapsed"]
        ],
        "tied": tied,
        "winner": vs(ranked[0], behind[0]) if ranked and behind else None,
        "baseline": vs(ranked[0], BASELINE.key) if ranked else None,
        "per_fold": _per_fold(frame, list(gates)) if "fold" in frame else None,
        "pred_set": g.get("pred_set", "test"),
        "per_image": frame,
    }
