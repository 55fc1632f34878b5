"""Successive halving (classify.halving) and the cross-fitting inner folds (crossfit.search):
hand-checkable schedules, survivors, the winner's inner out-of-fold probabilities against an
independent fold-by-fold refit, and nothing of outer fold k in fold k's classifier."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import PredefinedSplit, RandomizedSearchCV
from xgboost import XGBClassifier

from dualstage.classify.halving import (
    group_inner_folds,
    halving_search,
    rung_rounds,
    rung_sizes,
    sample_candidates,
    score_function,
)
from dualstage.classify.tune import search_space
from dualstage.config import ConfigError, TuneConfig, from_dict
from dualstage.crossfit.search import tune_fold

BASE = {"seed": 0, "max_bin": 32, "device": "cpu", "threads": 1}


def _data(n: int = 160, width: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    X = rng.normal(size=(n, width)).astype(np.float32)
    X[:, :3] += 0.9 * y[:, None]
    return X, y


def _small_candidates(n: int, seed: int = 0) -> list[dict]:
    """The real search space's candidates with few rounds (fast), subsampling kept (< 1)."""
    cands = sample_candidates(search_space(2.3), n, seed)
    return [{**c, "n_estimators": 8 + 3 * i} for i, c in enumerate(cands)]


def _classifier(params: dict) -> XGBClassifier:
    return XGBClassifier(
        tree_method="hist",
        max_bin=32,
        device="cpu",
        eval_metric="logloss",
        random_state=0,
        n_jobs=1,
        **params,
    )


def test_rung_schedule_by_hand() -> None:
    assert rung_sizes(20, 3) == [20, 7, 3, 1]
    assert rung_sizes(9, 3) == [9, 3, 1] and rung_sizes(1, 3) == [1] and rung_sizes(2, 2) == [2, 1]
    assert [rung_rounds(270, r, 3, 3) for r in range(4)] == [10, 30, 90, 270]
    assert rung_rounds(100, 0, 3, 3, min_rounds=10) == 10  # 100 / 27 = 3.7 -> the floor
    assert rung_rounds(100, 1, 3, 3, min_rounds=10) == 11  # 100 / 9 = 11.1
    assert rung_rounds(5, 0, 3, 3, min_rounds=10) == 5  # never past n_estimators
    with pytest.raises(ValueError, match="eta >= 2"):
        rung_sizes(5, 1)


def test_inner_folds_group_the_other_outer_folds() -> None:
    folds = np.repeat(np.arange(10), 4)
    others = folds[folds != 0]  # outer folds 1..9
    inner = group_inner_folds(others, 3)
    for outer, want in {1: 0, 4: 0, 7: 0, 2: 1, 5: 1, 8: 1, 3: 2, 6: 2, 9: 2}.items():
        assert set(inner[others == outer].tolist()) == {want}  # an outer fold stays whole
    assert np.bincount(inner).tolist() == [12, 12, 12]
    few = np.array([3, 5, 5, 7, 3])
    assert group_inner_folds(few, 3).tolist() == [0, 1, 1, 2, 0]  # <= 3 folds: kept (relabelled)
    with pytest.raises(ValueError, match="at least 2"):
        group_inner_folds(few, 1)


def test_candidates_are_the_random_searchs() -> None:
    X, y = _data(60, 3)
    dims = search_space(2.0)
    search = RandomizedSearchCV(
        _classifier({}),
        dims,
        n_iter=4,
        cv=PredefinedSplit(np.arange(60) % 2),
        random_state=7,
        scoring="roc_auc",
    ).fit(X, y)
    mine = sample_candidates(dims, 4, 7)
    assert mine == [
        {k: v.item() if hasattr(v, "item") else v for k, v in p.items()} for p in search.cv_results_["params"]
    ]


@pytest.fixture(scope="module")
def searched():
    X, y = _data()
    folds = np.arange(y.size) % 3
    cands = _small_candidates(9)
    res = halving_search(X, y, folds, cands, BASE, score_function("roc_auc"), eta=3, min_rounds=2)
    return X, y, folds, cands, res


def test_survivors_are_the_top_scorers_of_each_rung(searched) -> None:
    *_, cands, res = searched
    table, sizes = res.cv_results_, rung_sizes(len(cands), 3)
    assert np.bincount(table["rung"], minlength=len(sizes))[::-1].cumsum()[::-1].tolist() == sizes
    for r in range(len(sizes) - 1):
        ran = np.flatnonzero(table["rung"] >= r)
        score = table[f"rung{r}_mean_score"][ran]
        top = ran[sorted(range(ran.size), key=lambda i: (-score[i], ran[i]))[: sizes[r + 1]]]
        assert set(top.tolist()) == set(np.flatnonzero(table["rung"] >= r + 1).tolist())
    winner = int(np.flatnonzero(table["rank_test_score"] == 1)[0])
    assert res.best_params_ == cands[winner] and table["rung"][winner] == len(sizes) - 1
    assert table["n_rounds"][winner] == cands[winner]["n_estimators"]


def test_winner_inner_probabilities_equal_a_refit_on_each_inner_split(searched) -> None:
    X, y, folds, _, res = searched
    assert 0 < res.best_params_["subsample"] < 1 and 0 < res.best_params_["colsample_bytree"] < 1
    expected, scores = np.full(y.size, np.nan), []
    for f in range(3):
        clf = _classifier(res.best_params_).fit(X[folds != f], y[folds != f])
        expected[folds == f] = clf.predict_proba(X[folds == f])[:, 1]
        scores.append(roc_auc_score(y[folds == f], expected[folds == f]))
    np.testing.assert_allclose(res.inner_oof_, expected, rtol=0, atol=1e-6)
    assert res.best_score_ == pytest.approx(np.mean(scores), abs=1e-9)
    full = _classifier(res.best_params_).fit(X, y).predict_proba(X)[:, 1]
    np.testing.assert_allclose(res.best_estimator_.predict_proba(X)[:, 1], full, rtol=0, atol=1e-6)


def test_nothing_of_outer_fold_k_is_used_for_fold_k() -> None:
    X, y = _data(200, 6, seed=3)
    folds = np.arange(y.size) % 5
    t = TuneConfig(n_iter=4, threads=1, max_bin=32, halving_min_rounds=2)
    parts = ("roc_auc", {}, nullcontext(), None)
    k, own = 2, folds == 2
    a = tune_fold(t, X, y, folds, k, parts)
    X2, y2 = X.copy(), y.copy()
    X2[own] = np.random.default_rng(9).normal(size=X2[own].shape) * 50  # fold k's rows: garbage
    y2[own] = 1 - y2[own]
    b = tune_fold(t, X2, y2, folds, k, parts)
    assert a["best_params"] == b["best_params"] and a["best_cv_score"] == b["best_cv_score"]
    assert np.array_equal(a["inner"], b["inner"]) and a["inner"].size == (~own).sum()
    assert np.array_equal(a["estimator"].predict_proba(X[own]), b["estimator"].predict_proba(X[own]))
    assert set(a["inner_folds"].tolist()) == {0, 1, 2}  # 4 other folds -> 3 inner folds


def test_random_search_path_shares_the_inner_folds() -> None:
    X, y = _data(120, 5, seed=4)
    folds = np.arange(y.size) % 4
    t = TuneConfig(n_iter=2, threads=1, max_bin=32, search="random")
    res = tune_fold(t, X, y, folds, 0, ("roc_auc", {}, nullcontext(), None))
    assert res["inner"].shape == ((folds != 0).sum(),) and not np.isnan(res["inner"]).any()
    assert res["default_cv_score"] is not None and len(res["cv_results"]["params"]) == 2


def test_tune_search_keys_checked() -> None:
    values = {"search": "random", "halving_eta": 4, "inner_folds": 5, "table2": False}
    t = from_dict(TuneConfig, values, "tune")
    assert (t.search, t.halving_eta, t.inner_folds, t.table2) == ("random", 4, 5, False)
    assert TuneConfig().search == "halving" and TuneConfig().inner_folds == 3
    with pytest.raises(ConfigError, match="valid: halving, random"):
        from_dict(TuneConfig, {"search": "grid"}, "tune")
    with pytest.raises(ConfigError, match="tune.halving_eta"):
        from_dict(TuneConfig, {"halving_eta": 1}, "tune")
    with pytest.raises(ConfigError, match="tune.inner_folds"):
        from_dict(TuneConfig, {"inner_folds": 1}, "tune")


def test_holdout_tune_by_halving(tmp_path) -> None:
    import json

    from dualstage.artifacts.feature_set import load_feature_table
    from dualstage.classify.tune import estimator_from_params, load_classifier, tune
    from helpers.stage_two import FAST, SMALL_SPACE, make_experiment

    exp = make_experiment(tmp_path, n_oof=60, n_test=20, n_new=2)
    summary = tune(exp, n_iter=4, space=SMALL_SPACE, progress=False, search="halving", halving=(2, 5), **FAST)
    out = exp / "classifier"
    params = json.loads((out / "params.json").read_text())
    assert params["search"] == "halving" and summary["best_cv_score"] == params["best_cv_score"]
    assert (out / "cv_results.csv").read_text().count("\n") == 5  # header + 4 candidates
    _, X, _, index = load_feature_table(exp / "features" / "oof")
    refit = estimator_from_params(params).fit(X, index["has_pneumothorax"].to_numpy())
    assert np.array_equal(refit.predict_proba(X), load_classifier(out).predict_proba(X))
