"""Table 2 of the dual-stage paper: presence precision / recall / F1 per class on the test set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from xgboost import XGBClassifier

from dualstage.artifacts.feature_set import labels_of, load_feature_table, truthy
from dualstage.artifacts.layout import ExperimentDir
from dualstage.core.io import write_csv_atomic
from dualstage.core.metrics import presence_report, roc_auc

__all__ = ["table2"]


def table2(exp: ExperimentDir, out: Path, names: np.ndarray, models: dict[str, XGBClassifier]) -> dict | str:
    """Table 2 (table2.csv) + test_probabilities.csv on the test set's truth rows; its metrics dict."""
    test_dir = exp.feature_set("test")
    metrics: dict | str = "no test set"
    if (test_dir / "features.npz").is_file():
        t_ids, t_X, t_names, t_index = load_feature_table(test_dir)
        if t_names.tolist() != names.tolist():
            raise ValueError(f"{test_dir}: feature names differ from the oof set's")
        truth = truthy(t_index["has_truth"]) if "has_truth" in t_index else np.ones(t_ids.size, bool)
        if truth.any():
            t_y = labels_of(t_index[truth], "features/test")
            probs = {k: m.predict_proba(t_X[truth])[:, 1] for k, m in models.items()}
            frame = pd.DataFrame({"image_id": t_ids[truth], "has_pneumothorax": t_y, **probs})
            write_csv_atomic(frame, out / "test_probabilities.csv")
            metrics = {
                k: {**presence_report(p >= 0.5, t_y), "roc_auc": roc_auc(p, t_y)} for k, p in probs.items()
            }
        else:
            metrics = "no test set (test images have no truth)"
    cols = ("precision", "recall", "f1", "support")
    if isinstance(metrics, dict):
        rows = [
            {"model": k, "class": c, **{m: metrics[k][c][m] for m in cols}}
            for k in models
            for c in ("absent", "present")
        ]
    else:
        empty = {"precision": np.nan, "recall": np.nan, "f1": np.nan, "support": 0}
        rows = [{"model": k, "class": "no test set", **empty} for k in models]
    write_csv_atomic(pd.DataFrame(rows), out / "table2.csv")
    return metrics
