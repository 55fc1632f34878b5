"""One fold's tuned classifier: search on the other folds (grouped into inner folds), refit, predict.

``tune.search`` picks successive halving (:mod:`dualstage.classify.halving`, the default) or the
plain ``RandomizedSearchCV``; both draw the same candidates and use the same inner folds: the
other K-1 outer folds grouped into at most ``tune.inner_folds`` (fold index mod n), so K = 10
costs a 3-fold inner CV, not a 9-fold one. Outer folds are patient-grouped, so inner ones are.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import PredefinedSplit, cross_val_predict
from xgboost import XGBClassifier

from dualstage.classify.halving import group_inner_folds, halving_search, sample_candidates, score_function
from dualstage.classify.tune import random_search, search_space
from dualstage.classify.xgb import make_classifier, resolve_device
from dualstage.config import TuneConfig

__all__ = ["base_settings", "search_rows", "tune_fold"]


def base_settings(t: TuneConfig, max_bin: int | None = None, device: str = "auto") -> dict:
    """{seed, max_bin, device, threads} every candidate shares (device resolved on this machine)."""
    return {
        "seed": t.seed,
        "max_bin": t.max_bin if max_bin is None else max_bin,
        "device": resolve_device(device),
        "threads": t.threads,
    }


def _classifier(base: dict, **params) -> XGBClassifier:
    """:func:`~dualstage.classify.xgb.make_classifier` with ``base`` (device already resolved)."""
    return make_classifier(base["seed"], base["max_bin"], base["device"], n_jobs=base["threads"], **params)


def search_rows(t: TuneConfig, X: np.ndarray, y: np.ndarray, inner: np.ndarray, base: dict, parts) -> dict:
    """Tune on X (n, F), y (n,) with inner folds ``inner`` (n,); refit the winner on all n rows.

    ``parts``: ``scorer_for``'s tuple (the random search's scorer). Returns {estimator, best_params,
    best_cv_score, default_cv_score (random search only), inner (n,) the winner's inner out-of-fold
    probabilities, cv_results, search_seconds}.
    """
    n_pos = int(y.sum())
    dims = search_space((y.size - n_pos) / n_pos)
    t0 = time.perf_counter()
    if t.search == "halving":
        res = halving_search(
            X,
            y,
            inner,
            sample_candidates(dims, t.n_iter, t.seed),
            base,
            score_function(t.scoring),
            t.halving_eta,
            t.halving_min_rounds,
        )
        return {
            "estimator": res.best_estimator_,
            "best_params": res.best_params_,
            "best_cv_score": res.best_score_,
            "default_cv_score": None,
            "inner": res.inner_oof_,
            "cv_results": res.cv_results_,
            "search_seconds": time.perf_counter() - t0,
            "timing": res.seconds,
        }
    search, default_cv, _ = random_search(
        X, y, inner, dims, parts, lambda: _classifier(base), t.n_iter, t.n_jobs, t.seed, False
    )
    best = {k: v.item() if hasattr(v, "item") else v for k, v in search.best_params_.items()}
    probs = cross_val_predict(
        clone(_classifier(base, **best)), X, y, cv=PredefinedSplit(inner), method="predict_proba"
    )[:, 1]
    return {
        "estimator": search.best_estimator_,
        "best_params": best,
        "best_cv_score": float(search.best_score_),
        "default_cv_score": float(np.mean(default_cv)),
        "inner": probs,
        "cv_results": search.cv_results_,
        "search_seconds": time.perf_counter() - t0,
    }


def tune_fold(t: TuneConfig, X: np.ndarray, y: np.ndarray, folds: np.ndarray, k: int, parts) -> dict:
    """Fold k's classifier: ``search_rows`` on the rows of folds != k, then fold k's probabilities.

    Returns search_rows' dict plus ``rows`` (n,) bool (folds != k), ``inner_folds`` (rows.sum(),)
    and ``probabilities`` (fold k's rows,) float64.
    """
    rows = folds != k
    inner = group_inner_folds(folds[rows], t.inner_folds)
    out = search_rows(t, X[rows], y[rows], inner, base_settings(t), parts)
    out["probabilities"] = out["estimator"].predict_proba(X[~rows])[:, 1].astype(np.float64)
    return {**out, "rows": rows, "inner_folds": inner}
