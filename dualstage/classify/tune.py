"""``classify tune``: random-search-tuned XGBoost presence classifier, and the paper's Table 2.

Trains on the ``oof`` feature set (train + val images, out-of-fold maps) with the project's own
patient-grouped folds (``prepared/splits.csv`` column ``fold`` -> ``PredefinedSplit``), never a
fresh random CV. Table 2 (precision / recall / F1 / support per class, before and after tuning,
at probability 0.5) is measured on the held-out ``test`` feature set only. Writes to
``<exp>/classifier/``::

    model.ubj, default_model.ubj  tuned / default-parameter models (XGBoost's own UBJSON format)
    params.json                   best params, search space, scoring, CV folds, timing, versions
    feature_names.json            the F feature names the models were fit on (column order)
    cv_results.csv                RandomizedSearchCV.cv_results_ (params as JSON strings)
    table2.csv                    model (default|tuned), class, precision, recall, f1, support
    test_probabilities.csv        image_id, has_pneumothorax, default, tuned (test rows)
    metrics.json                  Table 2 reports + ROC AUC on test, CV scores, the paper's values

Scoring ``"dice"`` is the challenge mean Dice of the oof masks (operating point's pixel rule,
counts from ``predictions/oof/histograms.npz``) gated at probability 0.5; each CV fold gets its
rows' counts through scikit-learn metadata routing (sample-aligned, split like ``X``).
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
import xgboost
from scipy import stats
from sklearn.metrics import make_scorer
from sklearn.model_selection import PredefinedSplit, RandomizedSearchCV, cross_val_score
from xgboost import XGBClassifier

from dualstage import gating
from dualstage.io import atomic_write, write_csv_atomic, write_json_atomic
from dualstage.metrics import presence_report, roc_auc, summarize_counts

__all__ = [
    "PAPER_TABLE2",
    "SEARCH_SPACE_DOC",
    "cv_folds",
    "estimator_from_params",
    "load_classifier",
    "load_feature_table",
    "load_rule",
    "make_classifier",
    "rule_counts_for",
    "search_space",
    "tune",
]

SEARCH_SPACE_DOC = {
    "n_estimators": "integers 100..600 (uniform)",
    "max_depth": "integers 2..8 (uniform)",
    "learning_rate": "log-uniform [0.01, 0.3]",
    "subsample": "uniform [0.6, 1.0]",
    "colsample_bytree": "uniform [0.3, 1.0] (features are 2,000+ wide)",
    "min_child_weight": "integers 1..10 (uniform)",
    "gamma": "uniform [0, 5]",
    "reg_lambda": "log-uniform [0.1, 10]",
    "scale_pos_weight": "uniform [1, n_neg / n_pos] of the oof labels",
}
PAPER_TABLE2 = {  # dual-stage paper, Table 2 (test set, probability 0.5)
    "default": {"absent": (0.90, 0.97, 0.93), "present": (0.85, 0.64, 0.73)},
    "tuned": {"absent": (0.93, 0.95, 0.94), "present": (0.81, 0.76, 0.78)},
}
SCORINGS = ("roc_auc", "f1", "dice")


def search_space(neg_pos_ratio: float) -> dict:
    """The random-search distributions (scipy.stats; see ``SEARCH_SPACE_DOC``)."""
    lo, hi = sorted((1.0, float(neg_pos_ratio)))
    return {
        "n_estimators": stats.randint(100, 601),
        "max_depth": stats.randint(2, 9),
        "learning_rate": stats.loguniform(0.01, 0.3),
        "subsample": stats.uniform(0.6, 0.4),
        "colsample_bytree": stats.uniform(0.3, 0.7),
        "min_child_weight": stats.randint(1, 11),
        "gamma": stats.uniform(0.0, 5.0),
        "reg_lambda": stats.loguniform(0.1, 10.0),
        "scale_pos_weight": stats.uniform(lo, hi - lo) if hi - lo > 1e-9 else [lo],
    }


def _describe(dist) -> str | list:
    """JSON description of one search dimension."""
    if isinstance(dist, list | tuple):
        return [_py(v) for v in dist]
    name = dist.dist.name
    lo, hi = (float(v) for v in dist.support())
    if name == "randint":
        return f"randint: integers {int(lo)}..{int(hi)}"
    if name == "uniform":
        return f"uniform [{lo:g}, {hi:g}]"
    if name in ("loguniform", "reciprocal"):
        return f"log-uniform [{lo:g}, {hi:g}]"
    return f"{name} on [{lo:g}, {hi:g}] {dist.args} {dist.kwds}"


def _py(value):
    """numpy scalars -> Python (JSON friendly)."""
    return value.item() if isinstance(value, np.generic) else value


def resolve_device(device: str = "auto") -> str:
    """Device for XGBoost: "auto" is "cuda" when torch sees a GPU and this XGBoost build has CUDA
    (the default ``xgboost-cpu`` has not), else "cpu"; others pass through."""
    if device != "auto":
        return device
    if not xgboost.build_info().get("USE_CUDA", False):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_classifier(
    seed: int = 0, max_bin: int = 64, device: str = "auto", n_jobs: int | None = None, **params
) -> XGBClassifier:
    """XGBClassifier(tree_method="hist", logloss) with the project's fixed settings + ``params``."""
    return XGBClassifier(
        tree_method="hist",
        max_bin=max_bin,
        device=resolve_device(device),
        eval_metric="logloss",
        random_state=seed,
        n_jobs=n_jobs,
        **params,
    )


def estimator_from_params(
    params: dict, device: str | None = None, threads: int | None = None
) -> XGBClassifier:
    """Unfitted tuned classifier from a ``params.json`` dict (device re-resolved on this machine).

    ``threads``: XGBoost threads per fit (default: as in the tune run; None = all cores).
    """
    base = params["base"]
    return make_classifier(
        base["seed"],
        base["max_bin"],
        device or params.get("device_requested", "auto"),
        n_jobs=threads if threads is not None else params.get("threads"),
        **params["best_params"],
    )


def load_classifier(directory: str | Path, name: str = "model.ubj") -> XGBClassifier:
    """Load a saved classifier (``model.ubj`` or ``default_model.ubj``) from ``directory``."""
    path = Path(directory) / name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no classifier model (run `classify tune` first)")
    clf = XGBClassifier()
    clf.load_model(path)
    return clf


def _save_model(clf: XGBClassifier, path: Path) -> None:
    """save_model picks the format from the extension: write ``<tmp>.ubj``, then move atomically."""

    def _write(tmp: str) -> None:
        side = tmp + ".ubj"
        try:
            clf.save_model(side)
            os.replace(side, tmp)
        finally:
            if os.path.exists(side):
                os.unlink(side)

    atomic_write(path, _write)


def load_feature_table(features_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """(ids (N,) str, X (N, F) float32, names (F,) str, index rows aligned to ids) of a feature set."""
    d = Path(features_dir)
    npz, csv = d / "features.npz", d / "index.csv"
    for p in (npz, csv):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: missing (written by `classify features`)")
    with np.load(npz, allow_pickle=False) as z:
        missing = [k for k in ("image_id", "X", "feature_names") if k not in z.files]
        if missing:
            raise ValueError(f"{npz}: missing arrays {missing}")
        ids, X, names = z["image_id"].astype(str), z["X"].astype(np.float32), z["feature_names"].astype(str)
    if X.ndim != 2 or X.shape != (ids.size, names.size):
        raise ValueError(
            f"{npz}: X {X.shape} must be (len(image_id)={ids.size}, len(feature_names)={names.size})"
        )
    if len(set(ids.tolist())) != ids.size:
        raise ValueError(f"{npz}: duplicate image ids")
    index = pd.read_csv(csv, dtype={"image_id": str}).drop_duplicates("image_id").set_index("image_id")
    absent = np.setdiff1d(ids, index.index.to_numpy(dtype=str))
    if absent.size:
        raise ValueError(f"{csv}: {absent.size} feature rows have no index row (e.g. {absent[0]})")
    return ids, X, names, index.loc[ids].reset_index()


def truthy(values) -> np.ndarray:
    """(N,) bool of a 0/1, True/False or "1"/"true" column."""
    return pd.Series(values).astype(str).str.strip().str.lower().isin(("1", "1.0", "true")).to_numpy()


def labels_of(index: pd.DataFrame, source: str) -> np.ndarray:
    """(N,) int 0/1 presence labels from an index frame; ValueError when missing."""
    if "has_pneumothorax" not in index or index["has_pneumothorax"].isna().any():
        raise ValueError(f"{source}: has_pneumothorax labels missing for some rows")
    return truthy(index["has_pneumothorax"]).astype(np.int64)


def cv_folds(exp_dir: str | Path, ids: np.ndarray, splits: str | Path | None = None) -> np.ndarray:
    """(N,) int fold of each id from ``prepared/splits.csv``; ValueError for test or fold-less rows."""
    path = Path(splits) if splits else Path(exp_dir) / "prepared" / "splits.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: splits file not found (written by `segment prepare`)")
    table = pd.read_csv(path, dtype={"image_id": str}).set_index("image_id")
    if "fold" not in table:
        raise ValueError(f"{path}: no 'fold' column")
    rows = table.reindex(ids)
    test = rows["split"].astype(str).eq("test").to_numpy() if "split" in rows else np.zeros(ids.size, bool)
    if test.any():
        raise ValueError(f"{path}: {test.sum()} oof rows are test-split images (e.g. {ids[test][0]})")
    fold = rows["fold"].to_numpy(dtype=np.float64)
    bad = np.isnan(fold) | (fold < 0)
    if bad.any():
        raise ValueError(
            f"{path}: {bad.sum()} of {ids.size} rows lack a fold (e.g. {ids[bad][0]}); the classifier is "
            "cross-validated on the project's own folds only"
        )
    return fold.astype(np.int64)


def load_rule(exp_dir: str | Path, key: str) -> dict:
    """Rule ``key`` ("threshold", "threshold_area", ...) of ``operating_point.json``, without metrics."""
    path = Path(exp_dir) / "operating_point.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no operating point (run `segment sweep` first)")
    op = json.loads(path.read_text())
    if not isinstance(op.get(key), dict) or "rule" not in op[key]:
        raise ValueError(f"{path}: no rule {key!r}; has {[k for k, v in op.items() if isinstance(v, dict)]}")
    return {k: v for k, v in op[key].items() if k != "metrics"}


def rule_counts_for(exp_dir: str | Path, pred_set: str, ids: np.ndarray, rule: dict) -> np.ndarray:
    """(N, 4) int64 (inter, pred_area, true_area, n_pixels) of ``rule`` for ``ids``, from histograms."""
    hist = gating.load_histograms(Path(exp_dir) / "predictions" / pred_set)
    pos = pd.Series(np.arange(hist.image_id.size), index=hist.image_id).reindex(ids)
    if pos.isna().any():
        raise ValueError(
            f"predictions/{pred_set}: no histogram for {pos.isna().sum()} rows (e.g. {ids[pos.isna()][0]})"
        )
    counts = np.stack(gating.rule_counts(hist.hist, hist.height, hist.width, rule), axis=1)
    return counts[pos.to_numpy(dtype=np.int64)]


def _gated_dice(y_true, prob, counts) -> float:
    """Challenge mean Dice of masks (counts (n, 4)) emptied where prob < 0.5."""
    keep = np.asarray(prob) >= 0.5
    c = np.asarray(counts)
    return float(summarize_counts(c[:, 0] * keep, c[:, 1] * keep, c[:, 2], c[:, 3])["mean_dice"])


def _scorer(scoring: str, exp_dir: Path, ids: np.ndarray, dice_rule: str):
    """(scorer, fit params, context, rule) for ``scoring``; dice routes per-row counts to the scorer."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; valid: {', '.join(SCORINGS)}")
    if scoring != "dice":
        return scoring, {}, nullcontext(), None
    rule = load_rule(exp_dir, dice_rule)
    counts = rule_counts_for(exp_dir, "oof", ids, rule)
    ctx = sklearn.config_context(enable_metadata_routing=True)
    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_scorer(_gated_dice, response_method="predict_proba").set_score_request(counts=True)
    return scorer, {"counts": counts}, ctx, rule


def _table2(exp: Path, out: Path, names: np.ndarray, models: dict[str, XGBClassifier]) -> dict | str:
    """Table 2 (table2.csv) + test_probabilities.csv on the test set's truth rows; its metrics dict."""
    test_dir = exp / "features" / "test"
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


def tune(
    exp_dir: str | Path,
    out_dir: str | Path | None = None,
    n_iter: int = 20,
    scoring: str = "roc_auc",
    seed: int = 0,
    n_jobs: int = 1,
    max_bin: int = 64,
    device: str = "auto",
    progress: bool = True,
    space: dict | None = None,
    dice_rule: str = "threshold",
    threads: int | None = None,
) -> dict:
    """Random search on oof, refit on all oof rows, Table 2 on test; returns a JSON-able summary.

    ``space`` overrides / adds search dimensions (name -> scipy distribution or list);
    ``dice_rule`` is the operating-point rule behind ``scoring="dice"``; ``threads``: XGBoost threads
    per fit (default: all cores when ``n_jobs == 1``, else 1; pass 1 on a crowded machine).
    """
    start = time.perf_counter()
    exp = Path(exp_dir)
    out = Path(out_dir) if out_dir else exp / "classifier"
    ids, X, names, index = load_feature_table(exp / "features" / "oof")
    y = labels_of(index, "features/oof")
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"features/oof: labels hold a single class ({n_pos} present, {n_neg} absent); cannot train"
        )
    folds = cv_folds(exp, ids)
    cv = PredefinedSplit(folds)
    dims = {**search_space(n_neg / n_pos), **(space or {})}
    scorer, fit_params, ctx, rule = _scorer(scoring, exp, ids, dice_rule)
    xgb_jobs = threads if threads is not None else None if n_jobs == 1 else 1  # no oversubscription
    base = make_classifier(seed, max_bin, device, n_jobs=xgb_jobs)
    search = RandomizedSearchCV(
        base,
        dims,
        n_iter=n_iter,
        scoring=scorer,
        n_jobs=n_jobs,
        cv=cv,
        refit=True,
        random_state=seed,
        return_train_score=False,
        verbose=2 if progress else 0,
        error_score="raise",
    )
    with ctx:
        t0 = time.perf_counter()
        search.fit(X, y, **fit_params)
        search_seconds = time.perf_counter() - t0
        default_cv = cross_val_score(base, X, y, cv=cv, scoring=scorer, params=fit_params or None)
    default = make_classifier(seed, max_bin, device, n_jobs=xgb_jobs).fit(X, y)
    tuned = search.best_estimator_
    _save_model(tuned, out / "model.ubj")
    _save_model(default, out / "default_model.ubj")
    write_json_atomic(out / "feature_names.json", names.tolist())

    results = pd.DataFrame({k: v for k, v in search.cv_results_.items() if not k.startswith("param")})
    params_list = [{k: _py(v) for k, v in p.items()} for p in search.cv_results_["params"]]
    for k in dims:
        results[f"param_{k}"] = [p.get(k) for p in params_list]
    results["params"] = [json.dumps(p, sort_keys=True) for p in params_list]
    write_csv_atomic(results, out / "cv_results.csv")

    test_metrics = _table2(exp, out, names, {"default": default, "tuned": tuned})

    fold_sizes = [
        {"fold": int(f), "n": int((folds == f).sum()), "n_pos": int(y[folds == f].sum())}
        for f in np.unique(folds)
    ]
    params = {
        "best_params": {k: _py(v) for k, v in search.best_params_.items()},
        "best_cv_score": float(search.best_score_),
        "default_cv_score": float(np.mean(default_cv)),
        "scoring": scoring,
        "dice_rule": rule,
        "n_iter": n_iter,
        "seed": seed,
        "n_jobs": n_jobs,
        "threads": xgb_jobs,
        "device_requested": device,
        "base": {
            "seed": seed,
            "max_bin": max_bin,
            "device": base.device,
            "tree_method": "hist",
            "eval_metric": "logloss",
        },
        "search_space": {k: _describe(v) for k, v in dims.items()},
        "search_space_doc": SEARCH_SPACE_DOC,
        "cv": {
            "kind": "PredefinedSplit(test_fold=splits.csv fold): the project's patient-grouped folds",
            "n_folds": len(fold_sizes),
            "folds": fold_sizes,
        },
        "n_rows": int(y.size),
        "n_pos": n_pos,
        "n_neg": n_neg,
        "n_features": int(names.size),
        "feature_names": "feature_names.json",
        "search_seconds": round(search_seconds, 3),
        "seconds": round(time.perf_counter() - start, 3),
        "versions": {"xgboost": xgboost.__version__, "scikit-learn": sklearn.__version__},
    }
    write_json_atomic(out / "params.json", params)
    metrics = {
        "threshold": 0.5,
        "test": test_metrics,
        "cv": {"scoring": scoring, "default": params["default_cv_score"], "tuned": params["best_cv_score"]},
        "paper_table2": PAPER_TABLE2,
        "paper_table2_columns": ["precision", "recall", "f1"],
    }
    write_json_atomic(out / "metrics.json", metrics)
    return {
        "out_dir": str(out),
        "best_params": params["best_params"],
        "best_cv_score": params["best_cv_score"],
        "default_cv_score": params["default_cv_score"],
        "test": test_metrics
        if isinstance(test_metrics, str)
        else {k: v["roc_auc"] for k, v in test_metrics.items()},
        "search_seconds": params["search_seconds"],
        "seconds": params["seconds"],
    }
