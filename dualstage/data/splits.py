"""Train / val / test split and k folds, stratified by presence and grouped by patient.

Proportions default to the progressive paper's 8643 / 964 / 1068 images of 10,675
(test 10.0 %, val 9.03 %, train the rest). Both stages reuse the same ``splits.csv``:
stage one trains fold models on train+val, stage two learns from their out-of-fold maps.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from dualstage.config import PAPER_TEST_FRACTION, PAPER_VAL_FRACTION

__all__ = ["make_splits", "read_folds", "inner_split"]


def _group_keys(manifest: pd.DataFrame) -> pd.Series:
    """Patient id where known, else the image id (each image its own group)."""
    pid = manifest.get("patient_id", pd.Series("", index=manifest.index))
    pid = pid.astype("string").fillna("").str.strip().astype(object)
    return pid.where(pid != "", "image:" + manifest["image_id"].astype(str))


def _assign_holdout(groups: pd.DataFrame, fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Assign whole groups to splits, per presence stratum, filling the quotas in image counts."""
    out: dict[str, str] = {}
    for stratum, part in groups.groupby("positive", sort=True):
        order = part.sort_index()  # stable order first, then a seeded permutation
        rng = np.random.default_rng([seed, int(stratum)])
        order = order.iloc[rng.permutation(len(order))]
        n_images = int(order["n"].sum())
        quotas = {name: round(frac * n_images) for name, frac in fractions.items()}
        filled = dict.fromkeys(quotas, 0)
        for key, n in order["n"].items():
            target = next((s for s in quotas if filled[s] + n / 2 <= quotas[s]), "train")
            if target != "train":
                filled[target] += n
            out[key] = target
    return out


def make_splits(
    manifest: pd.DataFrame,
    test_fraction: float = PAPER_TEST_FRACTION,
    val_fraction: float = PAPER_VAL_FRACTION,
    n_folds: int = 10,
    seed: int = 0,
) -> pd.DataFrame:
    """Split a manifest (columns image_id, has_pneumothorax, optional patient_id).

    Returns one row per image: image_id, group (patient id, or ``image:<id>`` when unknown), has_pneumothorax,
    split (train / val / test: the papers' holdout view) and fold (0..n_folds-1 over every study: the
    cross-fitted view, where each fold is a test fold once). No patient is in two splits or two
    folds; presence is stratified in both. Seeded and
    stable: the same manifest and seed give the same table whatever the row order.
    """
    if not 0 <= test_fraction < 1 or not 0 <= val_fraction < 1 or test_fraction + val_fraction >= 1:
        raise ValueError(
            f"fractions must be in [0, 1) and sum below 1: test={test_fraction}, val={val_fraction}"
        )
    df = manifest[["image_id", "has_pneumothorax"]].copy()
    df["group"] = _group_keys(manifest)
    df = df.sort_values("image_id", kind="stable").reset_index(drop=True)
    groups = df.groupby("group").agg(n=("image_id", "size"), positive=("has_pneumothorax", "max"))
    holdout = _assign_holdout(groups, {"test": test_fraction, "val": val_fraction}, seed)
    df["split"] = df["group"].map(holdout)
    df["fold"] = -1
    dev = df.index
    n_groups = df.loc[dev, "group"].nunique()
    k = min(n_folds, n_groups)
    if k >= 2:
        y, g = df.loc[dev, "has_pneumothorax"], df.loc[dev, "group"]
        smallest_class = g.groupby(y).nunique().min() if y.nunique() == 2 else 0
        # stratify when every class has a group per fold; tiny sets fall back to grouping only
        cv = (
            StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            if smallest_class >= k
            else GroupKFold(n_splits=k)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for fold, (_, part) in enumerate(cv.split(dev, y, g)):
                df.loc[dev[part], "fold"] = fold
    return df[["image_id", "group", "has_pneumothorax", "split", "fold"]]


def read_folds(splits_csv: str | Path, ids: np.ndarray, allow_test: bool = False) -> np.ndarray:
    """(N,) int fold of each id from ``splits.csv``; ValueError for fold-less rows and, unless
    ``allow_test`` (cross-fitting over every study), for rows of the holdout test split."""
    path = Path(splits_csv)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: splits file not found; run `segment prepare` first")
    table = pd.read_csv(path, dtype={"image_id": str}).set_index("image_id")
    if "fold" not in table:
        raise ValueError(f"{path}: no 'fold' column")
    rows = table.reindex(ids)
    test = rows["split"].astype(str).eq("test").to_numpy() if "split" in rows else np.zeros(ids.size, bool)
    if test.any() and not allow_test:
        raise ValueError(f"{path}: {test.sum()} oof rows are test-split images (e.g. {ids[test][0]})")
    fold = rows["fold"].to_numpy(dtype=np.float64)
    bad = np.isnan(fold) | (fold < 0)
    if bad.any():
        raise ValueError(
            f"{path}: {bad.sum()} of {ids.size} rows lack a fold (e.g. {ids[bad][0]}); the classifier is "
            "cross-validated on the project's own folds only"
        )
    return fold.astype(np.int64)


def inner_split(table: pd.DataFrame, k: int, fraction: float = PAPER_VAL_FRACTION, seed: int = 0):
    """(train ids, inner-validation ids) of fold model k: every study outside fold k, of which a
    patient-grouped, presence-stratified share ``fraction`` validates (checkpoint choice, early
    stopping). Fold k itself is never seen: its maps are the model's out-of-fold predictions.

    ``table`` needs image_id, group, has_pneumothorax and fold columns (splits.csv).
    """
    dev = table[table["fold"] != k].sort_values("image_id", kind="stable").reset_index(drop=True)
    n_groups = dev["group"].nunique()
    n_splits = int(min(max(2, round(1 / max(fraction, 1e-6))), n_groups))
    if n_splits < 2:
        raise ValueError(f"fold {k}: {n_groups} patient group(s) outside the fold; cannot carve a validation")
    y, g = dev["has_pneumothorax"], dev["group"]
    smallest = g.groupby(y).nunique().min() if y.nunique() == 2 else 0
    cv = (
        StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed + 1000 + k)
        if smallest >= n_splits
        else GroupKFold(n_splits=n_splits)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train_idx, val_idx = next(iter(cv.split(dev, y, g)))
    return dev.loc[train_idx, "image_id"].tolist(), dev.loc[val_idx, "image_id"].tolist()
