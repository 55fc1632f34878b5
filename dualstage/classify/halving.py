"""Successive halving over the random search's own candidates, on XGBoost's native API.

The candidates are the plain random search's (``ParameterSampler(search_space, n_iter, seed)``,
exactly what ``RandomizedSearchCV`` draws). Each inner training split gets one
``xgboost.QuantileDMatrix``, built once and shared by every candidate (its validation fold is
binned with ``ref=`` the training one). The budget is boosting rounds: with n candidates and
``eta``, rung r of R keeps ceil(n / eta^r) candidates, each trained up to
``n_estimators * eta^(r - R)`` rounds (at least ``min_rounds``), continuing its boosters with
``xgb_model=``; the top 1/eta by mean inner score go on. The last rung trains its survivors from
scratch at their full ``n_estimators`` (XGBoost re-seeds its sampler on continuation), so the
winner's inner out-of-fold probabilities are exactly those of its params refit on each inner
split, and the gate thresholds need no extra ``cross_val_predict``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import xgboost
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import ParameterSampler, PredefinedSplit, cross_val_score
from xgboost import XGBClassifier

from dualstage.classify.xgb import gated_dice, make_classifier

__all__ = [
    "HalvingResult",
    "group_inner_folds",
    "halving_search",
    "native_params",
    "rung_rounds",
    "rung_sizes",
    "sample_candidates",
    "score_function",
]

ScoreFn = Callable[[np.ndarray, np.ndarray, np.ndarray], float]


@dataclass
class HalvingResult:
    """What the search found; attribute names follow ``RandomizedSearchCV`` where they mean the same.

    ``inner_oof_`` (n,): the winner's probability of each row from the inner split that held it out.
    """

    best_params_: dict
    best_score_: float
    cv_results_: dict
    inner_oof_: np.ndarray
    best_estimator_: XGBClassifier | None = None
    seconds: dict = field(default_factory=dict)


def sample_candidates(dims: dict, n_iter: int, seed: int) -> list[dict]:
    """The random search's candidates: ``ParameterSampler`` as ``RandomizedSearchCV`` calls it."""
    return [
        {k: v.item() if isinstance(v, np.generic) else v for k, v in p.items()}
        for p in ParameterSampler(dims, n_iter, random_state=seed)
    ]


def group_inner_folds(folds: np.ndarray, n_inner: int) -> np.ndarray:
    """Inner fold of each row (n,): the sorted distinct fold ids, i -> i mod ``n_inner``.

    With at most ``n_inner`` distinct folds the folds stay as they are (relabelled 0..m-1).
    Rows of one outer fold stay together, so patient grouping carries over.
    """
    folds = np.asarray(folds)
    if n_inner < 2:
        raise ValueError(f"inner folds: need at least 2, got {n_inner}")
    ids = np.unique(folds)
    if ids.size < 2:
        raise ValueError(f"inner folds: the rows hold {ids.size} fold(s); need at least 2")
    return np.searchsorted(ids, folds) % n_inner


def rung_sizes(n: int, eta: int) -> list[int]:
    """Candidates alive at each rung: n, ceil(n / eta), ... down to 1 (n=20, eta=3: 20, 7, 3, 1)."""
    if n < 1 or eta < 2:
        raise ValueError(f"halving: need n >= 1 and eta >= 2, got n={n}, eta={eta}")
    sizes = [n]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / eta))
    return sizes


def rung_rounds(n_estimators: int, rung: int, last: int, eta: int, min_rounds: int = 1) -> int:
    """Boosting rounds at ``rung`` of 0..``last``: n_estimators * eta^(rung - last), rounded,
    at least ``min_rounds``, at most ``n_estimators`` (which the last rung always gets)."""
    if rung >= last:
        return int(n_estimators)
    return int(min(n_estimators, max(min_rounds, 1, round(n_estimators * eta ** (rung - last)))))


def native_params(params: dict, base: dict) -> tuple[dict, int]:
    """(xgboost.train params, rounds) of a candidate: XGBClassifier's settings (binary:logistic,
    hist, logloss), ``base`` = {seed, max_bin, device, threads}; ``n_estimators`` is the rounds."""
    p = {k: v for k, v in params.items() if k != "n_estimators"}
    native = {
        "objective": "binary:logistic",
        "tree_method": "hist",
        "eval_metric": "logloss",
        "max_bin": base["max_bin"],
        "device": base["device"],
        "seed": base["seed"],
        **p,
    }
    if base.get("threads") is not None:
        native["nthread"] = base["threads"]
    return native, int(params.get("n_estimators", 100))


def score_function(scoring: str, counts: np.ndarray | None = None) -> ScoreFn:
    """score(y (m,), prob (m,), rows (m,) indices into the search's rows) for ``scoring``.

    ``f1`` is presence F1 at probability > 0.5 (XGBClassifier.predict); ``dice`` needs ``counts``
    (n, 4): inter, pred area, true area, pixels of each row, gated at probability 0.5.
    """
    if scoring == "roc_auc":
        return lambda y, p, rows: float(roc_auc_score(y, p))
    if scoring == "f1":
        return lambda y, p, rows: float(f1_score(y, p > 0.5, zero_division=0))
    if scoring == "dice":
        if counts is None:
            raise ValueError("scoring dice: the rows' mask counts are needed")
        return lambda y, p, rows: gated_dice(y, p, np.asarray(counts)[rows])
    raise ValueError(f"unknown scoring {scoring!r}; valid: roc_auc, f1, dice")


def _splits(X: np.ndarray, y: np.ndarray, folds: np.ndarray, base: dict) -> list[dict]:
    """One (train, validation) QuantileDMatrix pair per inner fold, built once."""
    out = []
    for f in np.unique(folds):
        tr, va = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        dtrain = xgboost.QuantileDMatrix(X[tr], y[tr], max_bin=base["max_bin"])
        dval = xgboost.QuantileDMatrix(X[va], y[va], max_bin=base["max_bin"], ref=dtrain)
        out.append({"fold": int(f), "train": dtrain, "val": dval, "rows": va})
    return out


def _train(state: dict, split: dict, native: dict, rounds: int, fresh: bool) -> np.ndarray:
    """Bring one (candidate, split) booster to ``rounds``; returns its validation probabilities."""
    booster = None if fresh else state.get("booster")
    done = 0 if booster is None else booster.num_boosted_rounds()
    if rounds > done:
        booster = xgboost.train(native, split["train"], rounds - done, xgb_model=booster)
        state["fresh"] = done == 0
    state["booster"] = booster
    return booster.predict(split["val"])


def halving_search(
    X: np.ndarray,
    y: np.ndarray,
    folds: np.ndarray,
    candidates: Sequence[dict],
    base: dict,
    score: ScoreFn,
    eta: int = 3,
    min_rounds: int = 10,
    refit: bool = True,
) -> HalvingResult:
    """Successive halving of ``candidates`` over the inner folds ``folds`` (n,) of X (n, F), y (n,).

    ``base``: {seed, max_bin, device, threads}. Returns the best params, its mean inner score at
    full rounds, one row per candidate (``cv_results_``), the winner's inner out-of-fold
    probabilities and (``refit``) an XGBClassifier of the winner fitted on all rows.
    """
    t0 = time.perf_counter()
    y = np.asarray(y)
    splits = _splits(X, y, folds, base)
    t_data = time.perf_counter() - t0
    sizes, n = rung_sizes(len(candidates), eta), len(candidates)
    last = len(sizes) - 1
    states = [[{} for _ in splits] for _ in range(n)]
    probs = [[None] * len(splits) for _ in range(n)]
    scores = np.full((n, len(sizes), len(splits)), np.nan)
    alive = list(range(n))
    for r in range(len(sizes)):
        for c in alive:
            native, n_est = native_params(candidates[c], base)
            rounds = rung_rounds(n_est, r, last, eta, min_rounds)
            for j, s in enumerate(splits):
                st = states[c][j]
                # last rung: from scratch unless already one uninterrupted fit of these rounds
                fresh = r == last and not (st.get("fresh") and st["booster"].num_boosted_rounds() == rounds)
                probs[c][j] = _train(st, s, native, rounds, fresh)
                scores[c, r, j] = score(y[s["rows"]], probs[c][j], s["rows"])
        if r < last:
            mean = scores[alive, r].mean(axis=1)
            order = sorted(range(len(alive)), key=lambda i: (-mean[i], alive[i]))  # ties: lower index
            keep = {alive[i] for i in order[: sizes[r + 1]]}
            for c in alive:
                if c not in keep:
                    states[c] = [{} for _ in splits]  # free the losers' boosters
            alive = sorted(keep)
    best = max(alive, key=lambda c: (scores[c, last].mean(), -c))
    inner = np.full(y.size, np.nan)
    for j, s in enumerate(splits):
        inner[s["rows"]] = probs[best][j]
    t_search = time.perf_counter() - t0
    result = HalvingResult(
        best_params_=dict(candidates[best]),
        best_score_=float(scores[best, last].mean()),
        cv_results_=_table(candidates, scores, sizes, eta, min_rounds),
        inner_oof_=inner,
    )
    if refit:
        result.best_estimator_ = make_classifier(
            base["seed"], base["max_bin"], base["device"], n_jobs=base.get("threads"), **candidates[best]
        ).fit(X, y)
    result.seconds = {"data": t_data, "search": t_search, "refit": time.perf_counter() - t0 - t_search}
    return result


def _table(candidates: Sequence[dict], scores: np.ndarray, sizes: list[int], eta: int, floor: int) -> dict:
    """cv_results_: params, the last rung reached, its rounds, mean/std/split scores there, rank
    (survivors of later rungs first, then by score), and each rung's mean score (NaN: not run)."""
    n, n_rungs, n_splits = scores.shape
    reached = np.array([max(r for r in range(n_rungs) if not np.isnan(scores[c, r, 0])) for c in range(n)])
    at = scores[np.arange(n), reached]  # (n, splits)
    mean = at.mean(axis=1)
    order = sorted(range(n), key=lambda c: (-reached[c], -mean[c], c))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(1, n + 1)
    table = {
        "params": [dict(c) for c in candidates],
        "rung": reached,
        "n_rounds": np.array(
            [
                rung_rounds(int(c.get("n_estimators", 100)), int(reached[i]), n_rungs - 1, eta, floor)
                for i, c in enumerate(candidates)
            ]
        ),
        "mean_test_score": mean,
        "std_test_score": at.std(axis=1),
        "rank_test_score": rank,
    }
    for j in range(n_splits):
        table[f"split{j}_test_score"] = at[:, j]
    for r in range(n_rungs):
        table[f"rung{r}_mean_score"] = scores[:, r].mean(axis=1)
    return table


def halving_like_random(X, y, folds, dims, scoring_parts, make, n_iter, seed, eta=3, min_rounds=10):
    """``random_search``'s (search, default-parameter CV scores, seconds) by successive halving:
    same candidates, folds (n,), scoring (``scorer_for``'s parts) and base estimator ``make()``."""
    scorer, fit_params, ctx, _ = scoring_parts
    est = make()
    base = {"seed": est.random_state, "max_bin": est.max_bin, "device": est.device, "threads": est.n_jobs}
    t0 = time.perf_counter()
    score = score_function(scorer if isinstance(scorer, str) else "dice", fit_params.get("counts"))
    result = halving_search(X, y, folds, sample_candidates(dims, n_iter, seed), base, score, eta, min_rounds)
    seconds = time.perf_counter() - t0
    with ctx:
        default_cv = cross_val_score(
            make(), X, y, cv=PredefinedSplit(folds), scoring=scorer, params=fit_params or None
        )
    return result, default_cv, seconds
