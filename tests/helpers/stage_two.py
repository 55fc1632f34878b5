"""Synthetic stage-two experiment folders: feature sets, maps, histograms, operating points."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.core import gating

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


# ---- prediction sets for the feature extractor (a non-square map grid)
H, W = 96, 80  # non-square map grid


def png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_prediction_set(root, ids, split="test", cache_sizes=(32, 64, 128), image_paths=False):
    """A fake experiment (prepared cache + predictions/<set>); returns the prediction set folder."""
    rng = np.random.default_rng(0)
    pred = root / "predictions" / split
    for k, id_ in enumerate(ids):
        for size in cache_sizes:
            png(
                root / "prepared" / "cache" / str(size) / "images" / f"{id_}.png",
                rng.integers(0, 256, (size, size), np.uint8),
            )
        q = np.zeros((H, W), np.uint8)
        q[10 + 5 * k : 30 + 5 * k, 20:40] = 200 - 20 * k
        q[70:75, 60:70] = 60 * k
        png(pred / "maps" / f"{id_}.png", q)
    index = pd.DataFrame(
        {
            "image_id": ids,
            "split": split,
            "fold_model": ["fold_0", "fold_1", "fold_0", "fold_1", "fold_0"][: len(ids)],
            "height": H,
            "width": W,
            "has_truth": int(split != "input"),
            "has_pneumothorax": [k % 2 for k in range(len(ids))],
            "true_area_px": 0,
        }
    )
    if image_paths:
        src = root / "sources"
        for id_ in ids:
            png(src / f"{id_}.png", rng.integers(0, 256, (120, 100), np.uint8))
        index["image_path"] = [str(src / f"{i}.png") for i in ids]
    pred.mkdir(parents=True, exist_ok=True)
    index.to_csv(pred / "index.csv", index=False)
    return pred


# ---- gating: maps of several sizes, values on the threshold levels
THRESHOLDS = [0.0, 0.1, 0.2, 0.33, 0.5, 0.6, 0.7 - 0.1, 0.99, 1.0]


def random_set(seed: int = 0):
    """Maps of different (also non-square) sizes, empty truths, values exactly on levels."""
    rng = np.random.default_rng(seed)
    sizes = [(16, 16), (12, 20), (20, 12), (7, 33), (16, 16), (9, 9), (16, 16), (30, 5)]
    on_levels = np.concatenate([gating.levels(THRESHOLDS), gating.levels(THRESHOLDS) - 1]).clip(0, 255)
    maps, truths = [], []
    for k, (h, w) in enumerate(sizes):
        q = rng.integers(0, 256, (h, w)) if k % 2 else rng.choice(on_levels, (h, w))
        q[rng.random((h, w)) < rng.uniform(0.5, 0.97)] = 0  # sparse, so min areas matter
        truth = np.zeros((h, w), bool) if k % 3 == 0 else rng.random((h, w)) < rng.uniform(0.05, 0.5)
        maps.append(q.astype(np.uint8))
        truths.append(truth)
    hist = np.stack([gating.histogram(q, t) for q, t in zip(maps, truths, strict=True)])
    return maps, truths, hist, np.array([s[0] for s in sizes]), np.array([s[1] for s in sizes])
