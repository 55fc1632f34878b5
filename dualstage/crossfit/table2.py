"""The dual-stage paper's Table 2, cross-fitted over every study.

Four presence classifiers per fold, each fitted on the other folds' out-of-fold rows only:
``paper`` features (DenseNet of image and mask, the paper's [phi(I); phi(M)]) and ``ours``
(plus the map statistics), each ``default`` (XGBoost's default hyper-parameters) and ``tuned``
(the same search as the gate's classifier, ``tune.search``, on the same inner folds). Like with
like: all four share one XGBoost configuration, the gate classifier's (``base_settings``: tree
method hist, ``tune.max_bin``, logloss, ``tune.seed``, device, threads), so a column varies only the
feature set and a row only the hyper-parameters; ``ours, tuned`` is the gate's classifier itself. Off with
``tune.table2: false`` (at full size its 4 models per fold cost more than the gate's classifier).
Each one's decision threshold is the one maximising presence F1 on its inner out-of-fold
probabilities (not 0.5). Table 2 then pools fold k's decisions on its own studies: precision /
recall / F1 / support per class, and ROC AUC with a 95 % bootstrap interval over studies.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.model_selection import PredefinedSplit, cross_val_predict
from xgboost import XGBClassifier

from dualstage.classify.xgb import make_classifier
from dualstage.config import Experiment
from dualstage.core.io import write_csv_atomic, write_json_atomic
from dualstage.core.metrics import f1_by_threshold, presence_report, roc_auc, roc_auc_resampled
from dualstage.crossfit.search import base_settings, search_rows

__all__ = ["fold_table2_models", "shared_settings", "table2_rows", "MODELS"]

MODELS = ("paper_default", "paper_tuned", "ours_default", "ours_tuned")


def _f1_threshold(probs: np.ndarray, y: np.ndarray) -> float:
    """Threshold in 0.01 steps maximising presence F1 (ties: the lowest)."""
    grid = np.round(np.arange(1, 100) / 100, 2)
    return float(grid[int(np.argmax(f1_by_threshold(probs, y, grid)))])


def shared_settings(base: dict) -> dict:
    """The XGBoost configuration every Table 2 cell shares (``base``: :func:`base_settings`)."""
    return {
        "tree_method": "hist",
        "max_bin": base["max_bin"],
        "eval_metric": "logloss",
        "device": base["device"],
        "seed": base["seed"],
        "threads": base["threads"],
    }


def fold_table2_models(
    exp: Experiment, k: int, data: dict, parts, ours_tuned: tuple, inner: np.ndarray, base: dict
) -> pd.DataFrame:
    """Probabilities of fold k's studies (M models) and each model's inner-OOF threshold.

    ``ours_tuned``: (estimator, inner OOF probabilities) of the gate's classifier, reused;
    ``inner`` (rows of folds != k,): their inner folds (the gate classifier's); ``base``: the gate
    classifier's :func:`base_settings`, shared by every model. Returns image_id, fold,
    has_pneumothorax, ``<model>`` probability and ``<model>_threshold``.
    """
    t = exp.tune
    X, y, folds, names = data["X"], data["y"], data["folds"], data["names"]
    rows, paper = folds != k, ~np.char.startswith(names.astype(str), "stat_")
    cv = PredefinedSplit(inner)
    frame = pd.DataFrame({"image_id": data["ids"][~rows], "fold": k, "has_pneumothorax": y[~rows]})

    def default() -> XGBClassifier:  # XGBoost's default hyper-parameters, the shared configuration
        return make_classifier(base["seed"], base["max_bin"], base["device"], n_jobs=base["threads"])

    for model in MODELS:
        cols = paper if model.startswith("paper") else np.ones(names.size, bool)
        Xr = X[rows][:, cols]
        if model == "ours_tuned":
            est, probs = ours_tuned
        elif model.endswith("tuned"):  # the gate classifier's search, with its configuration
            res = search_rows(t, Xr, y[rows], inner, base, parts)
            est, probs = res["estimator"], res["inner"]
        else:
            est = default().fit(Xr, y[rows])
            probs = cross_val_predict(default(), Xr, y[rows], cv=cv, method="predict_proba")[:, 1]
        frame[model] = est.predict_proba(X[~rows][:, cols])[:, 1].astype(np.float64)
        frame[f"{model}_threshold"] = _f1_threshold(probs, y[rows])
    return frame


def table2_rows(frame: pd.DataFrame, resamples: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Table 2 over every study: per model and class precision / recall / F1 / support, ROC AUC [CI]."""
    y = frame["has_pneumothorax"].to_numpy(np.int64)
    idx = np.random.default_rng(seed).integers(0, y.size, size=(resamples, y.size))
    rows = []
    for model in MODELS:
        p = frame[model].to_numpy(np.float64)
        report = presence_report(p >= frame[f"{model}_threshold"].to_numpy(), y)
        boot = roc_auc_resampled(p, y, idx)
        lo, hi = np.nanpercentile(boot, [2.5, 97.5])
        for cls in ("absent", "present"):
            rows.append(
                {
                    "model": model,
                    "class": cls,
                    **report[cls],
                    "roc_auc": roc_auc(p, y),
                    "roc_auc_lo": float(lo),
                    "roc_auc_hi": float(hi),
                    "threshold": "per fold, max F1 on inner out-of-fold probabilities",
                }
            )
    return pd.DataFrame(rows)


def write_table2(exp: Experiment, frames: list[pd.DataFrame]) -> pd.DataFrame:
    """``crossfit/table2_probabilities.csv``, ``crossfit/table2.csv`` and ``table2.json`` (models, n and
    the shared XGBoost configuration, ``xgboost``)."""
    frame = pd.concat(frames, ignore_index=True)
    write_csv_atomic(frame, exp.dir.crossfit / "table2_probabilities.csv")
    table = table2_rows(frame, exp.report.resamples, exp.report.seed)
    write_csv_atomic(table, exp.dir.crossfit / "table2.csv")
    shared = shared_settings(base_settings(exp.tune))
    write_json_atomic(
        exp.dir.crossfit / "table2.json", {"models": list(MODELS), "n": int(len(frame)), "xgboost": shared}
    )
    return table
