"""classify tune: the project's folds, XGBoost's own model format, Table 2 on test, dice scoring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.model_selection import PredefinedSplit

from dualstage.artifacts.feature_set import load_feature_table
from dualstage.classify.tune import (
    SEARCH_SPACE_DOC,
    estimator_from_params,
    load_classifier,
    search_space,
    tune,
)
from dualstage.core import gating
from dualstage.data.splits import read_folds
from helpers.stage_two import FAST, SMALL_SPACE, make_experiment


def cv_folds(exp: Path, ids: np.ndarray, splits: Path | None = None) -> np.ndarray:
    return read_folds(splits or exp / "prepared" / "splits.csv", ids)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> tuple[Path, dict]:
    exp = make_experiment(tmp_path_factory.mktemp("tune"))
    return exp, tune(exp, n_iter=3, space=SMALL_SPACE, progress=False, **FAST)


def test_artifacts_and_table2(tuned) -> None:
    exp, summary = tuned
    out = exp / "classifier"
    for name in (
        "model.ubj",
        "default_model.ubj",
        "params.json",
        "cv_results.csv",
        "table2.csv",
        "metrics.json",
    ):
        assert (out / name).is_file(), name
    assert not [p for p in out.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib")]
    table = pd.read_csv(out / "table2.csv")
    assert list(table.columns) == ["model", "class", "precision", "recall", "f1", "support"]
    assert set(zip(table["model"], table["class"], strict=True)) == {
        (m, c) for m in ("default", "tuned") for c in ("absent", "present")
    }
    assert table.groupby("model")["support"].sum().tolist() == [120, 120]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["tuned"]["roc_auc"] > 0.8 and metrics["test"]["default"]["roc_auc"] > 0.8
    assert summary["test"]["tuned"] == metrics["test"]["tuned"]["roc_auc"]
    params = json.loads((out / "params.json").read_text())
    assert set(params["best_params"]) == set(SEARCH_SPACE_DOC)
    assert params["best_params"]["n_estimators"] in (20, 40) and params["search_seconds"] > 0
    cv = pd.read_csv(out / "cv_results.csv")
    assert len(cv) == 3 and json.loads(cv["params"][0])["max_depth"] in (2, 3)


def test_model_reloads_to_identical_predictions(tuned) -> None:
    exp, _ = tuned
    out = exp / "classifier"
    ids, X, _, index = load_feature_table(exp / "features" / "test")
    loaded = load_classifier(out).predict_proba(X)[:, 1]
    saved = pd.read_csv(out / "test_probabilities.csv", dtype={"image_id": str})
    assert saved["image_id"].tolist() == ids.tolist()
    assert np.array_equal(saved["tuned"].to_numpy().astype(np.float32), loaded)
    _, oX, _, o_index = load_feature_table(exp / "features" / "oof")
    refit = estimator_from_params(json.loads((out / "params.json").read_text()))
    refit.fit(oX, o_index["has_pneumothorax"].to_numpy())
    assert np.array_equal(refit.predict_proba(X)[:, 1], loaded)  # deterministic refit on all oof rows
    assert not np.array_equal(load_classifier(out, "default_model.ubj").predict_proba(X)[:, 1], loaded)


def test_folds_come_from_splits_csv(tuned) -> None:
    exp, _ = tuned
    ids = load_feature_table(exp / "features" / "oof")[0]
    splits = pd.read_csv(exp / "prepared" / "splits.csv", dtype={"image_id": str}).set_index("image_id")
    folds = cv_folds(exp, ids[::-1])
    assert np.array_equal(folds, splits.loc[ids[::-1], "fold"].to_numpy())
    groups = splits.loc[ids[::-1], "group"].to_numpy()
    for _, test_idx in PredefinedSplit(folds).split():
        train_groups = set(np.delete(groups, test_idx).tolist())
        assert not train_groups & set(groups[test_idx].tolist())  # no patient on both sides
    params = json.loads((exp / "classifier" / "params.json").read_text())
    assert [f["n"] for f in params["cv"]["folds"]] == np.bincount(folds).tolist()


def test_rows_without_fold_and_single_class_refused(tmp_path) -> None:
    exp = make_experiment(tmp_path, n_oof=30, n_test=6, n_new=2)
    ids = load_feature_table(exp / "features" / "oof")[0]
    splits = pd.read_csv(exp / "prepared" / "splits.csv")
    splits.loc[splits["image_id"] == ids[4], "fold"] = -1
    bad = tmp_path / "bad_splits.csv"
    splits.to_csv(bad, index=False)
    with pytest.raises(ValueError, match="lack a fold"):
        cv_folds(exp, ids, splits=bad)
    with pytest.raises(ValueError, match="lack a fold"):
        cv_folds(exp, np.append(ids, "unknown_image"))
    index = pd.read_csv(exp / "features" / "oof" / "index.csv")
    index["has_pneumothorax"] = 0
    index.to_csv(exp / "features" / "oof" / "index.csv", index=False)
    with pytest.raises(ValueError, match="single class"):
        tune(exp, n_iter=1, space=SMALL_SPACE, progress=False, **FAST)


def test_dice_scoring_is_row_aligned_and_no_test_set(tuned, tmp_path) -> None:
    src, _ = tuned
    exp = tmp_path / "exp"
    shutil.copytree(src, exp, ignore=shutil.ignore_patterns("classifier"))
    shutil.rmtree(exp / "features" / "test")
    summary = tune(
        exp, n_iter=2, scoring="dice", space=SMALL_SPACE, progress=False, dice_rule="threshold_area", **FAST
    )
    out = exp / "classifier"
    assert summary["test"] == "no test set"
    assert pd.read_csv(out / "table2.csv")["class"].eq("no test set").all()
    params = json.loads((out / "params.json").read_text())
    assert params["scoring"] == "dice" and params["dice_rule"]["min_area"] == 10000
    # recompute the best candidate's fold scores by hand: gated mean Dice of each held-out fold
    ids, X, _, index = load_feature_table(exp / "features" / "oof")
    y, folds = index["has_pneumothorax"].to_numpy(), cv_folds(exp, ids)
    hist = gating.load_histograms(exp / "predictions" / "oof")
    assert hist.image_id.tolist() == ids.tolist()
    rule = {"rule": "threshold_area", "threshold": 0.5, "min_area": 10000}
    inter, area, true, n_pix = gating.rule_counts(hist.hist, hist.height, hist.width, rule)
    cv = pd.read_csv(out / "cv_results.csv")
    best = int(cv["rank_test_score"].idxmin())
    for k in range(5):
        est = estimator_from_params(params).set_params(**json.loads(cv["params"][best]))
        est.fit(X[folds != k], y[folds != k])
        keep = est.predict_proba(X[folds == k])[:, 1] >= 0.5
        f = folds == k
        dice = np.where(
            true[f] + area[f] * keep == 0, 1.0, 2 * inter[f] * keep / np.maximum(true[f] + area[f] * keep, 1)
        )
        assert cv[f"split{k}_test_score"][best] == pytest.approx(dice.mean(), abs=1e-12)
    assert 0 < params["best_cv_score"] <= 1


def test_search_space_matches_its_documentation() -> None:
    space = search_space(3.0)
    assert set(space) == set(SEARCH_SPACE_DOC)
    rng = np.random.default_rng(0)
    samples = {k: v.rvs(500, random_state=rng) for k, v in space.items()}
    assert samples["n_estimators"].min() >= 100 and samples["n_estimators"].max() <= 600
    assert samples["max_depth"].min() >= 2 and samples["max_depth"].max() <= 8
    assert 0.01 <= samples["learning_rate"].min() and samples["learning_rate"].max() <= 0.3
    assert 0.3 <= samples["colsample_bytree"].min() and 1.0 <= samples["scale_pos_weight"].max() <= 3.0
    assert search_space(1.0)["scale_pos_weight"] == [1.0]
