"""classify tune: the project's folds, XGBoost's own model format, Table 2 on test, dice scoring."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.model_selection import PredefinedSplit

from dualstage.artifacts.feature_set import load_feature_table
from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.classify.tune import (
    SEARCH_SPACE_DOC,
    estimator_from_params,
    load_classifier,
    search_space,
    tune,
)
from dualstage.core import gating
from dualstage.data.splits import read_folds


def cv_folds(exp: Path, ids: np.ndarray, splits: Path | None = None) -> np.ndarray:
    return read_folds(splits or exp / "prepared" / "splits.csv", ids)


SMALL_SPACE = {"n_estimators": [20, 40], "max_depth": [2, 3]}
# no torch import, no OpenMP spinning on a shared 2-core box
FAST = {"device": "cpu", "threads": 1, "train_set": "oof"}
SIZE = 32  # map grid; min_area 10000 at 1024 x 1024 = 9.77 px here
LESION = (slice(8, 16), slice(8, 16))  # 64 px true lesion
BLOB = (slice(2, 4), slice(2, 4))  # 4 px false-positive blob


def _features(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """X (n, 20) float32 and labels that depend on features 0 and 1 only."""
    X = rng.normal(size=(n, 20)).astype(np.float32)
    y = (2.5 * X[:, 0] + 2.0 * X[:, 1] + 0.5 * rng.normal(size=n) > 0.8).astype(np.int64)
    return X, y


def _write_set(exp: Path, name: str, ids, X, y, maps, truths, split, fold) -> None:
    """features/<name>/ (npz + index.csv) and predictions/<name>/ (maps, histograms when truths)."""
    feat = exp / "features" / name
    feat.mkdir(parents=True)
    names = np.array([f"f{j}" for j in range(X.shape[1])])
    np.savez(feat / "features.npz", image_id=np.asarray(ids), X=X, feature_names=names)
    has_truth = truths is not None
    pd.DataFrame(
        {
            "image_id": ids,
            "split": split,
            "fold_model": fold,
            "has_truth": int(has_truth),
            "has_pneumothorax": y if has_truth else np.nan,
        }
    ).to_csv(feat / "index.csv", index=False)
    pred = exp / "predictions" / name
    (pred / "maps").mkdir(parents=True)
    for i, q in zip(ids, maps, strict=True):
        Image.fromarray(q).save(pred / "maps" / f"{i}.png")
    if has_truth:
        hist = np.stack([gating.histogram(q, t) for q, t in zip(maps, truths, strict=True)])
        gating.write_histograms(pred / "histograms.npz", ids, hist, [SIZE] * len(ids), [SIZE] * len(ids))


def make_experiment(root: Path, n_oof: int = 300, n_test: int = 120, n_new: int = 40, seed: int = 0) -> Path:
    """A tiny experiment folder: splits, oof/test/new feature sets, maps, histograms, operating point.

    oof maps: positives 48 of 64 lesion px, every negative a 4 px false-positive blob (gating helps);
    test maps: perfect (gating can only hurt); new (no truth): half lesions, half blobs.
    """
    rng = np.random.default_rng(seed)
    exp = root / "exp"
    X, y = _features(rng, n_oof)
    folds = (np.arange(n_oof) // 3) % 5  # patients of 3 images, whole patients per fold
    ids = np.array([f"oof{i:04d}" for i in range(n_oof)])
    maps, truths = [], []
    for label in y:
        q, t = np.zeros((SIZE, SIZE), np.uint8), np.zeros((SIZE, SIZE), bool)
        if label:
            t[LESION] = True
            q[8:16, 8:14] = 220
        else:
            q[BLOB] = 200
        maps.append(q)
        truths.append(t)
    _write_set(exp, "oof", ids, X, y, maps, truths, np.where(folds == 0, "val", "train"), folds)
    tX, ty = _features(rng, n_test)
    t_ids = np.array([f"tst{i:04d}" for i in range(n_test)])
    t_truths = [np.zeros((SIZE, SIZE), bool) for _ in ty]
    for t, label in zip(t_truths, ty, strict=True):
        t[LESION] = bool(label)
    t_maps = [t.astype(np.uint8) * 230 for t in t_truths]
    _write_set(exp, "test", t_ids, tX, ty, t_maps, t_truths, "test", -1)
    nX, _ = _features(rng, n_new)
    n_maps = [np.zeros((SIZE, SIZE), np.uint8) for _ in range(n_new)]
    for k, q in enumerate(n_maps):
        q[LESION if k % 2 else BLOB] = 210
    _write_set(exp, "new", np.array([f"new{i:03d}" for i in range(n_new)]), nX, None, n_maps, None, "new", -1)
    splits = pd.DataFrame(
        {
            "image_id": np.concatenate([ids, t_ids]),
            "group": np.concatenate([np.arange(n_oof) // 3, 1000 + np.arange(n_test)]),
            "has_pneumothorax": np.concatenate([y, ty]),
            "split": np.concatenate([np.where(folds == 0, "val", "train"), ["test"] * n_test]),
            "fold": np.concatenate([folds, -np.ones(n_test, int)]),
        }
    )
    (exp / "prepared").mkdir()
    splits.to_csv(exp / "prepared" / "splits.csv", index=False)
    rules = {
        "default": {"rule": "threshold", "threshold": 0.5},
        "threshold": {"rule": "threshold", "threshold": 0.5},
        "threshold_area": {"rule": "threshold_area", "threshold": 0.5, "min_area": 10000},
    }
    metrics = {"threshold": {"mean_dice": 0.5}}
    OperatingPoints("oof", n_oof, "threshold_area", rules, metrics).write(exp / "operating_point.json")
    return exp


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
