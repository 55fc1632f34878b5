"""``classify gate``: the classifier's presence decision empties masks; its threshold is chosen on oof.

Modes (pixel rule from ``operating_point.json``): ``classifier`` = the "threshold" rule gated by the
classifier; ``classifier_and_area`` = the "threshold_area" rule (also empty below min_area) gated.
An image's final mask is the pixel rule's mask when ``probability >= threshold``, else empty.

``fit_gate`` gets *out-of-fold* classifier probabilities on the oof set (``cross_val_predict`` with the
tuned params and the project's PredefinedSplit: the saved model was fit on all oof rows, so its own
oof probabilities would be in-sample), chooses the threshold maximising the challenge mean Dice
(ties -> the middle of the best plateau, :func:`dualstage.core.tolerance.plateau_middle`) and writes
``<exp>/classifier/gate.json`` (one entry per mode, plus ``oof_probabilities.csv`` and
``gate_curve_<mode>.csv``). ``apply_gate`` applies that threshold unchanged to any set (test, new
images without truth) and writes ``<exp>/final/<set>/<mode>/``::

    masks/<image_id>.png  final mask, uint8 0/255 on the image's own grid
    submission.csv        ImageId, EncodedPixels (challenge RLE, "-1" for empty), one row per image
    decisions.csv         image_id, probability, decision, mask_area_px, mask_area_1024
    summary.json          mode, threshold, counts; challenge metrics when the set has truth
    seg/<image_id>.dcm    DICOM SEG of each non-empty final mask whose source is a DICOM file
    rejected.csv          image_id, stage, reason: studies without features, SEGs not written

Studies that ``classify features`` rejected (``features/<set>/rejected.csv``) get no final mask;
the summary counts them (``n_no_features``) and leaves them out of the metrics.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import PredefinedSplit, cross_val_predict

from dualstage.artifacts.classifier_files import GATE_MODES, load_classifier, load_gate, read_params
from dualstage.artifacts.feature_set import (
    check_same_settings,
    labels_of,
    load_feature_table,
    rejected_ids,
)
from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.classify.dicom_seg import seg_sources, write_segs
from dualstage.classify.tune import estimator_from_params
from dualstage.core import gating, rle
from dualstage.core.io import sha256_file, write_csv_atomic, write_json_atomic, write_png_atomic
from dualstage.core.metrics import presence_report, roc_auc, summarize_counts
from dualstage.core.progress import progress as progress_iter
from dualstage.core.tolerance import GATE_TIE_RULE, plateau_middle
from dualstage.data.splits import read_folds

__all__ = ["GATE_MODES", "CANDIDATES", "gate_sweep", "choose_gate", "fit_gate", "load_gate", "apply_gate"]

CANDIDATES = np.linspace(0.0, 1.0, 101)
TIE_BREAK = GATE_TIE_RULE


def gate_sweep(probs, counts: Sequence, candidates=CANDIDATES) -> dict[str, np.ndarray]:
    """summarize_counts metrics, each (C,), of the masks gated at each candidate threshold.

    ``probs`` (N,); ``counts`` = (inter, pred_area, true_area, n_pixels), each (N,) (a (4, N) array).
    Image i keeps its mask at threshold t iff ``probs[i] >= t``.
    """
    p = np.asarray(probs, dtype=np.float64)
    c = np.asarray(counts, dtype=np.int64)
    if p.ndim != 1 or c.shape != (4, p.size):
        raise ValueError(f"need probs (N,) and 4 count arrays (N,), got {p.shape} and {c.shape}")
    t = np.atleast_1d(np.asarray(candidates, dtype=np.float64))
    keep = p[None, :] >= t[:, None]  # (C, N)
    return summarize_counts(np.where(keep, c[0], 0), np.where(keep, c[1], 0), c[2], c[3])


def _scalars(metrics: dict) -> dict:
    """(1,)-shaped summarize_counts values -> JSON scalars (NaN -> None)."""
    out = {}
    for k, v in metrics.items():
        x = np.asarray(v).ravel()[0].item()
        out[k] = None if isinstance(x, float) and np.isnan(x) else x
    return out


def choose_gate(probs, counts: Sequence, candidates=CANDIDATES) -> dict:
    """The candidate threshold maximising the gated mean Dice; ties -> the middle of the best plateau.

    Returns {threshold, mean_dice, metrics (summarize_counts at it), ungated_mean_dice, candidates,
    mean_dice_curve (C,), tie_break}.
    """
    t = np.sort(np.atleast_1d(np.asarray(candidates, dtype=np.float64)))
    if t.size == 0:
        raise ValueError("no candidate thresholds")
    curve = np.asarray(gate_sweep(probs, counts, t)["mean_dice"], dtype=np.float64)
    best = plateau_middle(curve)
    thr = float(t[best])
    return {
        "threshold": thr,
        "mean_dice": float(curve[best]),
        "metrics": _scalars(gate_sweep(probs, counts, [thr])),
        "ungated_mean_dice": float(gate_sweep(probs, counts, [-np.inf])["mean_dice"][0]),
        "candidates": t.tolist(),
        "mean_dice_curve": curve.tolist(),
        "tie_break": TIE_BREAK,
    }


def _modes(mode: str | Sequence[str]) -> list[str]:
    modes = list(GATE_MODES) if mode == "both" else [mode] if isinstance(mode, str) else list(mode)
    bad = [m for m in modes if m not in GATE_MODES]
    if bad or not modes:
        raise ValueError(f"unknown gate mode(s) {bad}; valid: {', '.join(GATE_MODES)} or 'both'")
    return modes


def _check_names(classifier_dir: Path, names: np.ndarray, source: str) -> None:
    path = classifier_dir / "feature_names.json"
    if path.is_file() and json.loads(path.read_text()) != names.tolist():
        raise ValueError(f"{source}: feature names differ from those the classifier was fit on ({path})")


def oof_probabilities(
    exp_dir: str | Path,
    classifier_dir: str | Path | None = None,
    threads: int | None = None,
    train_set: str = "val",
) -> pd.DataFrame:
    """Out-of-fold probabilities on the training set: cross_val_predict(tuned params, its folds)."""
    exp = ExperimentDir(exp_dir)
    cdir = Path(classifier_dir) if classifier_dir else exp.classifier
    params = read_params(cdir)
    ids, X, names, index = load_feature_table(exp.feature_set(train_set))
    _check_names(cdir, names, f"features/{train_set}")
    y, folds = labels_of(index, f"features/{train_set}"), read_folds(exp.splits_csv, ids)
    est = estimator_from_params(params, threads=threads)
    probs = cross_val_predict(est, X, y, cv=PredefinedSplit(folds), method="predict_proba")[:, 1]
    return pd.DataFrame({"image_id": ids, "fold": folds, "has_pneumothorax": y, "probability": probs})


def _gate_entry(mode: str, rule: dict, res: dict, y: pd.Series, probs: np.ndarray, cdir: Path) -> dict:
    return {
        "mode": mode,
        "threshold": res["threshold"],
        "chosen_on": "oof",
        "pixel_rule": rule,
        "mean_dice_oof": res["mean_dice"],
        "ungated_mean_dice_oof": res["ungated_mean_dice"],
        "metrics_oof": res["metrics"],
        "n": int(y.size),
        "n_pos": int(y.sum()),
        "classifier_auc_oof": roc_auc(probs, y),
        "probabilities": "out-of-fold: cross_val_predict(best params, splits.csv folds)",
        "candidates": {
            "start": min(res["candidates"]),
            "stop": max(res["candidates"]),
            "n": len(res["candidates"]),
        },
        "tie_break": TIE_BREAK,
        "decision": "mask kept iff probability >= threshold, else empty",
        "model_sha256": sha256_file(cdir / "model.ubj"),
    }


def fit_gate(
    exp_dir: str | Path,
    mode: str | Sequence[str] = "classifier",
    out: str | Path | None = None,
    classifier_dir: str | Path | None = None,
    candidates=CANDIDATES,
    threads: int | None = None,
    train_set: str = "val",
) -> dict:
    """Choose the gate threshold(s) on the classifier's training set (out-of-fold probabilities),
    merge them into gate.json (keyed by mode); returns gate.json.

    ``mode``: "classifier", "classifier_and_area", "both" or a list; ``out``: gate.json path
    (default ``<classifier_dir>/gate.json``, classifier_dir default ``<exp>/classifier``).
    """
    exp = ExperimentDir(exp_dir)
    cdir = Path(classifier_dir) if classifier_dir else exp.classifier
    out = Path(out) if out else cdir / "gate.json"
    modes = _modes(mode)
    oof = oof_probabilities(exp.root, cdir, threads, train_set)
    write_csv_atomic(oof, cdir / "oof_probabilities.csv")
    ids, probs, y = oof["image_id"].to_numpy(str), oof["probability"].to_numpy(), oof["has_pneumothorax"]
    points = OperatingPoints.read(exp.operating_point)
    oof_set = PredictionSet(exp.prediction_set(train_set))
    gate = load_gate(out)
    for m in modes:
        rule = points.rule(GATE_MODES[m])
        counts = oof_set.rule_counts(ids, rule).T
        res = choose_gate(probs, counts, candidates)
        curve = pd.DataFrame({"threshold": res["candidates"], **gate_sweep(probs, counts, res["candidates"])})
        write_csv_atomic(curve, cdir / f"gate_curve_{m}.csv")
        gate[m] = {**_gate_entry(m, rule, res, y, probs, cdir), "chosen_on": train_set}
    fitted = [m for m in GATE_MODES if m in gate]
    gate["best_mode"] = max(fitted, key=lambda m: (gate[m]["mean_dice_oof"], -fitted.index(m)))
    write_json_atomic(out, gate)
    return gate


def _gate_context(exp: ExperimentDir, cdir: Path, gate_file: Path, mode: str) -> tuple[float, dict, str]:
    """(threshold, pixel rule) of a fitted mode, after checking the classifier and rules did not change."""
    gate = load_gate(gate_file)
    if mode not in gate:
        raise ValueError(
            f"{gate_file}: mode {mode!r} not fitted (fitted: {[m for m in GATE_MODES if m in gate]})"
        )
    entry = gate[mode]
    if entry.get("model_sha256") not in (None, sha256_file(cdir / "model.ubj")):
        raise ValueError(f"{cdir / 'model.ubj'} changed since the gate was fit: re-run `classify gate fit`")
    points = OperatingPoints.read_or_none(exp.operating_point)
    if points is not None and points.rule(GATE_MODES[mode]) != entry["pixel_rule"]:
        raise ValueError(f"{exp.operating_point} changed since the gate was fit: re-run `classify gate fit`")
    return float(entry["threshold"]), entry["pixel_rule"], str(entry.get("chosen_on", "?"))


def _write_masks(
    pset: PredictionSet, ids: np.ndarray, keep: np.ndarray, rule: dict, dst: Path, progress: bool
):
    """Final masks (PNG 0/255) and submission.csv; returns (areas (N,) px, areas at 1024^2 (N,))."""
    areas, scaled, rles = np.zeros(ids.size, np.int64), np.zeros(ids.size), []
    for i, image_id in enumerate(progress_iter(ids, desc=f"gate {pset.name}", enabled=progress)):
        q = pset.read_map(image_id)
        mask = gating.apply_rule(q, rule) if keep[i] else np.zeros(q.shape, dtype=bool)
        write_png_atomic(dst / "masks" / f"{image_id}.png", mask.astype(np.uint8) * 255)
        areas[i], scaled[i] = np.count_nonzero(mask), np.count_nonzero(mask) * gating.REF_PIXELS / q.size
        rles.append(rle.encode(mask))
    write_csv_atomic(pd.DataFrame({"ImageId": ids, "EncodedPixels": rles}), dst / "submission.csv")
    return areas, scaled


def _truth_metrics(pset: PredictionSet, ids, keep, probs, areas, rule, fset: str, skipped: set) -> dict:
    """Gated and ungated challenge metrics and presence metrics on the set's images with truth
    (but those in ``skipped``: rejected by ``classify features``)."""
    hist_ids = np.array([i for i in pset.histograms().image_id if i not in skipped], dtype=str)
    pos = pd.Series(np.arange(ids.size), index=ids).reindex(hist_ids)
    if pos.isna().any():
        raise ValueError(
            f"{pset.folder}: {pos.isna().sum()} truth images have no features in features/{fset}"
        )
    rows = pos.to_numpy(np.int64)
    c = pset.rule_counts(hist_ids, rule).T
    if not np.array_equal(c[1] * keep[rows], areas[rows]):
        raise ValueError(f"{pset.folder}: maps disagree with histograms.npz (stale files?)")
    present = (c[2] > 0).astype(np.int64)
    return {
        "metrics": summarize_counts(c[0] * keep[rows], c[1] * keep[rows], c[2], c[3]),
        "metrics_ungated": summarize_counts(*c),
        "presence": {**presence_report(keep[rows], present), "roc_auc": roc_auc(probs[rows], present)},
    }


def _no_feature_rows(no_features: dict[str, str], fset: str) -> list[dict]:
    """rejected.csv rows of the studies ``classify features`` rejected (no final mask)."""
    return [
        {"image_id": i, "stage": "features", "reason": f"no features (features/{fset}/rejected.csv): {r}"}
        for i, r in no_features.items()
    ]


def apply_gate(
    exp_dir: str | Path,
    pred_set: str = "test",
    features_set: str | None = None,
    mode: str = "classifier",
    out: str | Path | None = None,
    classifier_dir: str | Path | None = None,
    gate_path: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """Gate the maps of ``predictions/<pred_set>`` with the oof-chosen threshold; write final masks.

    Output: ``out`` (default ``final/<pred_set>/<mode>/``). Returns {set, mode, threshold, pixel_rule,
    n, n_present, n_nonempty, n_no_features, n_seg, n_seg_rejected, out_dir} plus, when the set has
    truth histograms, ``metrics`` (gated), ``metrics_ungated`` (pixel rule alone), ``presence``.
    """
    exp = ExperimentDir(exp_dir)
    _modes(mode)
    cdir = Path(classifier_dir) if classifier_dir else exp.classifier
    thr, rule, chosen_on = _gate_context(
        exp, cdir, Path(gate_path) if gate_path else cdir / "gate.json", mode
    )
    fset = features_set or pred_set
    fdir = exp.feature_set(fset)
    check_same_settings(read_params(cdir).get("features") or {}, fdir, f"the classifier in {cdir}")
    ids, X, names, _ = load_feature_table(fdir)
    _check_names(cdir, names, f"features/{fset}")
    probs = load_classifier(cdir).predict_proba(X)[:, 1].astype(np.float64)
    keep = probs >= thr
    pset, dst = PredictionSet(exp.prediction_set(pred_set)), Path(out) if out else exp.final(pred_set, mode)
    areas, scaled = _write_masks(pset, ids, keep, rule, dst, progress)
    no_features = rejected_ids(fdir, exclude=ids)
    segs = write_segs(dst, ids, seg_sources(exp.root, pset), _no_feature_rows(no_features, fset), progress)
    decisions = {"image_id": ids, "probability": probs, "decision": keep.astype(np.int64)}
    write_csv_atomic(
        pd.DataFrame({**decisions, "mask_area_px": areas, "mask_area_1024": scaled}), dst / "decisions.csv"
    )
    summary = {
        "set": pred_set,
        "features_set": fset,
        "mode": mode,
        "threshold": thr,
        "chosen_on": chosen_on,
        "pixel_rule": rule,
        "n": int(ids.size),
        "n_present": int(keep.sum()),
        "n_nonempty": int((areas > 0).sum()),
        "n_no_features": len(no_features),
        **segs,
        "out_dir": str(dst),
    }
    if pset.has_truth():
        summary.update(_truth_metrics(pset, ids, keep, probs, areas, rule, fset, set(no_features)))
    write_json_atomic(dst / "summary.json", summary)
    return summary
