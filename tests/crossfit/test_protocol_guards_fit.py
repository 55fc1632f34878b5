"""Guards of the comparison's protocol that fit models (issue 9, item 8): the classifier gate's
threshold is chosen on out-of-fold probabilities (``classify gate fit`` and the cross-fitted
``fit_fold``), never on in-sample ones. Expected values are computed independently: out-of-fold
probabilities by fitting XGBoost fold by fold here, the threshold by a plain numpy Dice sweep.
The mid-phase resume guard is in ``tests/segment/test_resume_midphase.py``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from xgboost import XGBClassifier

from dualstage.artifacts.feature_set import load_feature_table
from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.classify.gate import fit_gate
from dualstage.classify.tune import save_model
from dualstage.config import Experiment, GateConfig, TuneConfig
from dualstage.crossfit.classifier import fit_fold
from helpers.stage_two import make_experiment

# make_experiment's oof maps under the "threshold" rule (0.5): a positive keeps 48 of its 64 lesion
# pixels (Dice 2 * 48 / 112 when kept, 0 when gated); a negative shows a 4 px blob (0 kept, 1 gated)
KEPT_POSITIVE = 96 / 112
DEEP = {"n_estimators": 150, "max_depth": 6, "learning_rate": 0.3}  # memorises its training rows


def _classifier(best: dict) -> XGBClassifier:
    return XGBClassifier(
        tree_method="hist", max_bin=64, device="cpu", eval_metric="logloss", random_state=0, n_jobs=1, **best
    )


def _out_of_fold(X: np.ndarray, y: np.ndarray, folds: np.ndarray, best: dict) -> np.ndarray:
    probs = np.full(y.size, np.nan)
    for k in np.unique(folds):
        clf = _classifier(best).fit(X[folds != k], y[folds != k])
        probs[folds == k] = clf.predict_proba(X[folds == k])[:, 1]
    return probs


def _best_threshold(probs: np.ndarray, y: np.ndarray) -> float:
    """The 0.00..1.00 candidate with the highest mean Dice (within 1e-12; ties -> the lowest)."""
    candidates = np.round(np.arange(101) / 100, 2)
    kept, gated = np.where(y == 1, KEPT_POSITIVE, 0.0), np.where(y == 1, 0.0, 1.0)
    scores = np.array([np.where(probs >= t, kept, gated).mean() for t in candidates])
    return float(candidates[np.flatnonzero(scores >= scores.max() - 1e-12)[0]])


def _weak_features(exp: Path, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Replace features/oof by weakly informative ones: deep trees are overconfident in-sample."""
    ids, _, _, index = load_feature_table(exp / "features" / "oof")
    y = index["has_pneumothorax"].to_numpy().astype(np.int64)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(y.size, 6)).astype(np.float32)
    X[:, 0] += 0.8 * y
    names = np.array([f"w{j}" for j in range(6)])
    np.savez(exp / "features" / "oof" / "features.npz", image_id=ids, X=X, feature_names=names)
    splits = pd.read_csv(exp / "prepared" / "splits.csv", dtype={"image_id": str}).set_index("image_id")
    return X, y, splits.loc[ids, "fold"].to_numpy()


@pytest.fixture(scope="module")
def weak(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    exp = make_experiment(tmp_path_factory.mktemp("oofgate"))
    X, y, folds = _weak_features(exp)
    return exp, X, y, folds


def test_gate_fit_threshold_is_chosen_on_out_of_fold_probabilities(weak) -> None:
    exp, X, y, folds = weak
    out = exp / "classifier"
    out.mkdir()
    params = {
        "best_params": DEEP,
        "base": {"seed": 0, "max_bin": 64},
        "threads": 1,
        "device_requested": "cpu",
    }
    (out / "params.json").write_text(json.dumps(params))
    save_model(_classifier(DEEP).fit(X, y), out / "model.ubj")
    oof = _out_of_fold(X, y, folds, DEEP)
    in_sample = _classifier(DEEP).fit(X, y).predict_proba(X)[:, 1]
    t_oof, t_in = _best_threshold(oof, y), _best_threshold(in_sample, y)
    assert t_oof != t_in, (t_oof, t_in)  # the data tells the two apart
    gate = fit_gate(exp, mode="classifier", threads=1, train_set="oof")
    assert gate["classifier"]["threshold"] == t_oof
    written = pd.read_csv(out / "oof_probabilities.csv", dtype={"image_id": str})
    np.testing.assert_allclose(written["probability"].to_numpy(), oof, rtol=0, atol=1e-6)


def test_crossfit_gate_threshold_uses_inner_out_of_fold_probabilities(weak) -> None:
    exp, X, y, folds = weak
    ids, _, names, _ = load_feature_table(exp / "features" / "oof")
    # inner_folds=4: the other 4 folds stay the inner folds (the grouping is tested in test_halving)
    tune = TuneConfig(n_iter=1, threads=1, inner_folds=4)
    config = Experiment(
        name=exp.name, output_root=str(exp.parent), tune=tune, gate=GateConfig(modes=("classifier",))
    )
    data = {
        "ids": ids,
        "X": X,
        "y": y,
        "folds": folds,
        "settings": {},
        "names": names,
        "pset": PredictionSet(exp / "predictions" / "oof"),
    }
    points = OperatingPoints.read(exp / "operating_point.json")
    k = 0
    res = fit_fold(config, k, data, {k: points})
    record = json.loads((exp / "crossfit" / f"fold_{k}" / "classifier" / "params.json").read_text())
    rows = folds != k
    assert record["fitted_ids"] == ids[rows].tolist()
    best = record["best_params"]
    inner = _out_of_fold(X[rows], y[rows], folds[rows], best)  # over folds 1..4 only
    in_sample = _classifier(best).fit(X[rows], y[rows]).predict_proba(X[rows])[:, 1]
    t_inner, t_in = _best_threshold(inner, y[rows]), _best_threshold(in_sample, y[rows])
    assert t_inner != t_in, (t_inner, t_in)
    assert res["gate"]["classifier"]["threshold"] == t_inner
    gate = json.loads((exp / "crossfit" / f"fold_{k}" / "classifier" / "gate.json").read_text())
    assert gate["classifier"]["threshold"] == t_inner
