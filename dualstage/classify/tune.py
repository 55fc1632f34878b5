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

from dualstage.artifacts.classifier_files import PAPER_TABLE2, load_classifier, not_json, read_params  # noqa: F401 (re-exported)
from dualstage.artifacts.feature_set import labels_of, load_feature_table, read_settings
from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.classify.halving import halving_like_random
from dualstage.classify.table2 import table2
from dualstage.classify.xgb import gated_dice, make_classifier
from dualstage.core.io import atomic_write, write_csv_atomic, write_json_atomic
from dualstage.data.splits import read_folds

__all__ = [
    "SEARCH_SPACE_DOC",
    "estimator_from_params",
    "load_classifier",
    "random_search",
    "check_labels",
    "save_model",
    "scorer_for",
    "read_params",
    "make_classifier",
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


def save_model(clf: XGBClassifier, path: Path) -> None:
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


def scorer_for(scoring: str, exp_dir: Path, ids: np.ndarray, dice_rule: str, train_set: str = "oof"):
    """(scorer, fit params, context, rule) for ``scoring``; dice routes per-row counts to the scorer."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; valid: {', '.join(SCORINGS)}")
    if scoring != "dice":
        return scoring, {}, nullcontext(), None
    rule = OperatingPoints.read(ExperimentDir(exp_dir).operating_point).rule(dice_rule)
    counts = PredictionSet(ExperimentDir(exp_dir).prediction_set(train_set)).rule_counts(ids, rule)
    ctx = sklearn.config_context(enable_metadata_routing=True)
    with sklearn.config_context(enable_metadata_routing=True):
        scorer = make_scorer(gated_dice, response_method="predict_proba").set_score_request(counts=True)
    return scorer, {"counts": counts}, ctx, rule


def random_search(
    X, y, folds, dims, scoring_parts, make, n_iter, n_jobs, seed, progress, kind="random", halving=(3, 10)
):
    """(fitted RandomizedSearchCV, default-parameter CV scores, search seconds); ``kind="halving"``:
    the same candidates by successive halving (``halving`` = (eta, min rounds); a ``HalvingResult``)."""
    if kind == "halving":
        return halving_like_random(X, y, folds, dims, scoring_parts, make, n_iter, seed, *halving)
    scorer, fit_params, ctx, _ = scoring_parts
    cv = PredefinedSplit(folds)
    search = RandomizedSearchCV(
        make(),
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
        seconds = time.perf_counter() - t0
        default_cv = cross_val_score(make(), X, y, cv=cv, scoring=scorer, params=fit_params or None)
    return search, default_cv, seconds


def _save_search(out: Path, cv_results: dict, dims: dict) -> None:
    """cv_results.csv (a search's ``cv_results_``) with one column per searched parameter and the
    params as JSON."""
    results = pd.DataFrame({k: v for k, v in cv_results.items() if not k.startswith("param")})
    params_list = [{k: _py(v) for k, v in p.items()} for p in cv_results["params"]]
    for k in dims:
        results[f"param_{k}"] = [p.get(k) for p in params_list]
    results["params"] = [json.dumps(p, sort_keys=True) for p in params_list]
    write_csv_atomic(results, out / "cv_results.csv")


def check_labels(y: np.ndarray, folds: np.ndarray, source: str) -> tuple[int, int]:
    """(n_pos, n_neg); ValueError when a class is missing or there are fewer positives than folds."""
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"{source}: labels hold a single class ({n_pos} present, {n_neg} absent); cannot train"
        )
    n_folds = int(np.unique(folds).size)
    if n_pos < n_folds:
        raise ValueError(
            f"{source}: {n_pos} positive studies for {n_folds} folds; the cross-validated search needs "
            "at least one positive per fold (more data, or fewer folds)"
        )
    return n_pos, n_neg


def _data_record(y: np.ndarray, folds: np.ndarray, names: np.ndarray, n_pos: int, n_neg: int) -> dict:
    """The training rows in numbers: per-fold sizes and positives, rows, classes, features."""
    sizes = [
        {"fold": int(f), "n": int((folds == f).sum()), "n_pos": int(y[folds == f].sum())}
        for f in np.unique(folds)
    ]
    return {
        "fold_sizes": sizes,
        "n_rows": int(y.size),
        "n_pos": n_pos,
        "n_neg": n_neg,
        "n_features": int(names.size),
    }


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
    train_set: str = "val",
    search: str = "random",
    halving: tuple[int, int] = (3, 10),
) -> dict:
    """Random search on ``train_set``, refit on all its rows, Table 2 on test; returns a summary.

    The holdout view trains on ``val`` (the main model's maps, the kind its test maps are); the
    cross-fitted view has its own per-fold classifiers (:mod:`dualstage.crossfit.classifier`).

    ``space`` overrides / adds search dimensions (name -> scipy distribution or list);
    ``dice_rule`` is the operating-point rule behind ``scoring="dice"``; ``threads``: XGBoost threads
    per fit (default: all cores when ``n_jobs == 1``, else 1; pass 1 on a crowded machine).
    ``search``: "random" or "halving" (``halving`` = (eta, min rounds); see ``random_search``).
    """
    start = time.perf_counter()
    exp = ExperimentDir(exp_dir)
    out = Path(out_dir) if out_dir else exp.classifier
    oof_dir = exp.feature_set(train_set)
    ids, X, names, index = load_feature_table(oof_dir)
    y = labels_of(index, f"features/{train_set}")
    folds = read_folds(exp.splits_csv, ids)
    n_pos, n_neg = check_labels(y, folds, str(oof_dir))
    dims = {**search_space(n_neg / n_pos), **(space or {})}
    scoring_parts = scorer_for(scoring, exp.root, ids, dice_rule, train_set)
    xgb_jobs = threads if threads is not None else None if n_jobs == 1 else 1  # no oversubscription

    def make() -> XGBClassifier:
        return make_classifier(seed, max_bin, device, n_jobs=xgb_jobs)

    kind, (search, default_cv, search_seconds) = (
        search,
        random_search(
            X, y, folds, dims, scoring_parts, make, n_iter, n_jobs, seed, progress, search, halving
        ),
    )
    default, tuned = make().fit(X, y), search.best_estimator_
    save_model(tuned, out / "model.ubj")
    save_model(default, out / "default_model.ubj")
    write_json_atomic(out / "feature_names.json", names.tolist())
    _save_search(out, search.cv_results_, dims)
    test_metrics = table2(exp, out, names, {"default": default, "tuned": tuned})
    settings = {"scoring": scoring, "rule": scoring_parts[3], "n_iter": n_iter, "seed": seed}
    settings.update(n_jobs=n_jobs, threads=xgb_jobs, device=device, max_bin=max_bin)
    run = {
        **settings,
        **_data_record(y, folds, names, n_pos, n_neg),
        "base_device": make().device,
        "search": kind,
        "features": read_settings(oof_dir),
        "search_seconds": search_seconds,
        "start": start,
    }
    params = _params_record(search, default_cv, dims, run)
    write_json_atomic(out / "params.json", params)
    cv = {"scoring": scoring, "default": params["default_cv_score"], "tuned": params["best_cv_score"]}
    metrics = {"threshold": 0.5, "test": test_metrics, "cv": cv, "paper_table2": PAPER_TABLE2}
    write_json_atomic(
        out / "metrics.json", {**metrics, "paper_table2_columns": ["precision", "recall", "f1"]}
    )
    keys = ("best_params", "best_cv_score", "default_cv_score", "search_seconds", "seconds")
    aucs = (
        test_metrics if isinstance(test_metrics, str) else {k: v["roc_auc"] for k, v in test_metrics.items()}
    )
    return {"out_dir": str(out), **{k: params[k] for k in keys}, "test": aucs}


def _params_record(search, default_cv, dims: dict, run: dict) -> dict:
    """params.json: best params, scores, search space, folds, the features' settings, timing, versions."""
    return {
        "best_params": {k: _py(v) for k, v in search.best_params_.items()},
        "best_cv_score": float(search.best_score_),
        "default_cv_score": float(np.mean(default_cv)),
        "scoring": run["scoring"],
        "dice_rule": run["rule"],
        "n_iter": run["n_iter"],
        "search": run["search"],
        "seed": run["seed"],
        "n_jobs": run["n_jobs"],
        "threads": run["threads"],
        "device_requested": run["device"],
        "base": {
            "seed": run["seed"],
            "max_bin": run["max_bin"],
            "device": run["base_device"],
            "tree_method": "hist",
            "eval_metric": "logloss",
        },
        "search_space": {k: _describe(v) for k, v in dims.items()},
        "search_space_doc": SEARCH_SPACE_DOC,
        "cv": {
            "kind": "PredefinedSplit(test_fold=splits.csv fold): the project's patient-grouped folds",
            "n_folds": len(run["fold_sizes"]),
            "folds": run["fold_sizes"],
        },
        "features": run["features"],
        "n_rows": run["n_rows"],
        "n_pos": run["n_pos"],
        "n_neg": run["n_neg"],
        "n_features": run["n_features"],
        "feature_names": "feature_names.json",
        "search_seconds": round(run["search_seconds"], 3),
        "seconds": round(time.perf_counter() - run["start"], 3),
        "versions": {"xgboost": xgboost.__version__, "scikit-learn": sklearn.__version__},
    }
