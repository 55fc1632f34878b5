"""``classify gate``: the classifier's presence decision empties masks; its threshold is chosen on oof.

Modes (pixel rule from ``operating_point.json``): ``classifier`` = the "threshold" rule gated by the
classifier; ``classifier_and_area`` = the "threshold_area" rule (also empty below min_area) gated.
An image's final mask is the pixel rule's mask when ``probability >= threshold``, else empty.

``fit_gate`` gets *out-of-fold* classifier probabilities on the oof set (``cross_val_predict`` with the
tuned params and the project's PredefinedSplit: the saved model was fit on all oof rows, so its own
oof probabilities would be in-sample), chooses the threshold maximising the challenge mean Dice
(ties -> the lowest threshold) and writes ``<exp>/classifier/gate.json`` (one entry per mode, plus
``oof_probabilities.csv`` and ``gate_curve_<mode>.csv``). ``apply_gate`` applies that threshold
unchanged to any set (test, new images without truth) and writes ``<exp>/final/<set>/``::

    masks/<image_id>.png  final mask, uint8 0/255 on the image's own grid
    submission.csv        ImageId, EncodedPixels (challenge RLE, "-1" for empty), one row per image
    decisions.csv         image_id, probability, decision, mask_area_px, mask_area_1024
    summary.json          mode, threshold, counts; challenge metrics when the set has truth
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.model_selection import PredefinedSplit, cross_val_predict

from dualstage import gating, rle
from dualstage.classify.tune import (
    cv_folds,
    estimator_from_params,
    labels_of,
    load_classifier,
    load_feature_table,
    load_rule,
    rule_counts_for,
)
from dualstage.io import atomic_write, write_csv_atomic, write_json_atomic
from dualstage.metrics import presence_report, roc_auc, summarize_counts
from dualstage.progress import progress as progress_iter

__all__ = ["GATE_MODES", "CANDIDATES", "gate_sweep", "choose_gate", "fit_gate", "load_gate", "apply_gate"]

GATE_MODES = {"classifier": "threshold", "classifier_and_area": "threshold_area"}
CANDIDATES = np.linspace(0.0, 1.0, 101)
TIE_BREAK = "highest mean Dice (within 1e-12); ties -> the lowest threshold"


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
    """The candidate threshold maximising the gated mean Dice; ties -> the lowest threshold.

    Returns {threshold, mean_dice, metrics (summarize_counts at it), ungated_mean_dice, candidates,
    mean_dice_curve (C,), tie_break}.
    """
    t = np.sort(np.atleast_1d(np.asarray(candidates, dtype=np.float64)))
    if t.size == 0:
        raise ValueError("no candidate thresholds")
    curve = np.asarray(gate_sweep(probs, counts, t)["mean_dice"], dtype=np.float64)
    best = int(np.flatnonzero(curve >= curve.max() - 1e-12)[0])
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


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


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
    exp_dir: str | Path, classifier_dir: str | Path | None = None, threads: int | None = None
) -> pd.DataFrame:
    """Out-of-fold probabilities on the oof set: cross_val_predict(tuned params, PredefinedSplit)."""
    exp = Path(exp_dir)
    cdir = Path(classifier_dir) if classifier_dir else exp / "classifier"
    path = cdir / "params.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no tuned parameters (run `classify tune` first)")
    params = json.loads(path.read_text())
    ids, X, names, index = load_feature_table(exp / "features" / "oof")
    _check_names(cdir, names, "features/oof")
    y, folds = labels_of(index, "features/oof"), cv_folds(exp, ids)
    est = estimator_from_params(params, threads=threads)
    probs = cross_val_predict(est, X, y, cv=PredefinedSplit(folds), method="predict_proba")[:, 1]
    return pd.DataFrame({"image_id": ids, "fold": folds, "has_pneumothorax": y, "probability": probs})


def load_gate(path: str | Path) -> dict:
    """gate.json as a dict ({} when the file does not exist)."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else {}


def fit_gate(
    exp_dir: str | Path,
    mode: str | Sequence[str] = "classifier",
    out: str | Path | None = None,
    classifier_dir: str | Path | None = None,
    candidates=CANDIDATES,
    threads: int | None = None,
) -> dict:
    """Choose the gate threshold(s) on oof, merge them into gate.json (keyed by mode); returns gate.json.

    ``mode``: "classifier", "classifier_and_area", "both" or a list; ``out``: gate.json path
    (default ``<classifier_dir>/gate.json``, classifier_dir default ``<exp>/classifier``).
    """
    exp = Path(exp_dir)
    cdir = Path(classifier_dir) if classifier_dir else exp / "classifier"
    out = Path(out) if out else cdir / "gate.json"
    modes = _modes(mode)
    oof = oof_probabilities(exp, cdir, threads)
    write_csv_atomic(oof, cdir / "oof_probabilities.csv")
    ids, probs, y = oof["image_id"].to_numpy(str), oof["probability"].to_numpy(), oof["has_pneumothorax"]
    gate = load_gate(out)
    for m in modes:
        rule = load_rule(exp, GATE_MODES[m])
        counts = rule_counts_for(exp, "oof", ids, rule).T
        res = choose_gate(probs, counts, candidates)
        curve = pd.DataFrame({"threshold": res["candidates"], **gate_sweep(probs, counts, res["candidates"])})
        write_csv_atomic(curve, cdir / f"gate_curve_{m}.csv")
        gate[m] = {
            "mode": m,
            "threshold": res["threshold"],
            "chosen_on": "oof",
            "pixel_rule": rule,
            "mean_dice_oof": res["mean_dice"],
            "ungated_mean_dice_oof": res["ungated_mean_dice"],
            "metrics_oof": res["metrics"],
            "n": int(ids.size),
            "n_pos": int(y.sum()),
            "classifier_auc_oof": roc_auc(probs, y),
            "probabilities": "out-of-fold: cross_val_predict(best params, splits.csv folds)",
            "candidates": {"start": min(res["candidates"]), "stop": max(res["candidates"]), "n": len(curve)},
            "tie_break": TIE_BREAK,
            "decision": "mask kept iff probability >= threshold, else empty",
            "model_sha256": _sha256(cdir / "model.ubj"),
        }
    fitted = [m for m in GATE_MODES if m in gate]
    gate["best_mode"] = max(fitted, key=lambda m: (gate[m]["mean_dice_oof"], -fitted.index(m)))
    write_json_atomic(out, gate)
    return gate


def _save_png(path: Path, mask: np.ndarray) -> None:
    atomic_write(path, lambda tmp: Image.fromarray(mask).save(tmp, format="PNG"))


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

    Returns {set, mode, threshold, pixel_rule, n, n_present, n_nonempty, out_dir} plus, when the set
    has truth histograms, ``metrics`` (gated), ``metrics_ungated`` (pixel rule alone), ``presence``.
    """
    exp = Path(exp_dir)
    cdir = Path(classifier_dir) if classifier_dir else exp / "classifier"
    gate_file = Path(gate_path) if gate_path else cdir / "gate.json"
    gate = load_gate(gate_file)
    if mode not in gate:
        raise ValueError(
            f"{gate_file}: mode {mode!r} not fitted (fitted: {[m for m in GATE_MODES if m in gate]})"
        )
    entry = gate[mode]
    thr, rule = float(entry["threshold"]), entry["pixel_rule"]
    if entry.get("model_sha256") not in (None, _sha256(cdir / "model.ubj")):
        raise ValueError(f"{cdir / 'model.ubj'} changed since the gate was fit: re-run fit_gate")
    if (exp / "operating_point.json").is_file() and load_rule(exp, GATE_MODES[mode]) != rule:
        raise ValueError(f"{exp / 'operating_point.json'} changed since the gate was fit: re-run fit_gate")
    fset = features_set or pred_set
    ids, X, names, _ = load_feature_table(exp / "features" / fset)
    _check_names(cdir, names, f"features/{fset}")
    probs = load_classifier(cdir).predict_proba(X)[:, 1].astype(np.float64)
    keep = probs >= thr
    pred_dir, dst = exp / "predictions" / pred_set, Path(out) if out else exp / "final" / pred_set
    areas, scaled, rles = np.zeros(ids.size, np.int64), np.zeros(ids.size), []
    for i, image_id in enumerate(progress_iter(ids, desc=f"gate {pred_set}", enabled=progress)):
        path = pred_dir / "maps" / f"{image_id}.png"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no probability map for {image_id}")
        with Image.open(path) as im:
            q = np.asarray(im)
        mask = gating.apply_rule(q, rule) if keep[i] else np.zeros(q.shape, dtype=bool)
        _save_png(dst / "masks" / f"{image_id}.png", mask.astype(np.uint8) * 255)
        areas[i], scaled[i] = np.count_nonzero(mask), np.count_nonzero(mask) * gating.REF_PIXELS / q.size
        rles.append(rle.encode(mask))
    write_csv_atomic(pd.DataFrame({"ImageId": ids, "EncodedPixels": rles}), dst / "submission.csv")
    decisions = {"image_id": ids, "probability": probs, "decision": keep.astype(np.int64)}
    write_csv_atomic(
        pd.DataFrame({**decisions, "mask_area_px": areas, "mask_area_1024": scaled}), dst / "decisions.csv"
    )
    summary = {
        "set": pred_set,
        "features_set": fset,
        "mode": mode,
        "threshold": thr,
        "chosen_on": entry["chosen_on"],
        "pixel_rule": rule,
        "n": int(ids.size),
        "n_present": int(keep.sum()),
        "n_nonempty": int((areas > 0).sum()),
        "out_dir": str(dst),
    }
    if (pred_dir / "histograms.npz").is_file():
        hist_ids = gating.load_histograms(pred_dir).image_id
        pos = pd.Series(np.arange(ids.size), index=ids).reindex(hist_ids)
        if pos.isna().any():
            raise ValueError(
                f"{pred_dir}: {pos.isna().sum()} truth images have no features in features/{fset}"
            )
        rows = pos.to_numpy(np.int64)
        c = rule_counts_for(exp, pred_set, hist_ids, rule).T
        if not np.array_equal(c[1] * keep[rows], areas[rows]):
            raise ValueError(f"{pred_dir}: maps disagree with histograms.npz (stale files?)")
        summary["metrics"] = summarize_counts(c[0] * keep[rows], c[1] * keep[rows], c[2], c[3])
        summary["metrics_ungated"] = summarize_counts(*c)
        present = (c[2] > 0).astype(np.int64)
        summary["presence"] = {
            **presence_report(keep[rows], present),
            "roc_auc": roc_auc(probs[rows], present),
        }
    write_json_atomic(dst / "summary.json", summary)
    return summary
