"""Splits: paper proportions, presence stratification, patient grouping, folds, stability."""

from __future__ import annotations

import numpy as np
import pandas as pd

from dualstage.data.splits import make_splits


def _manifest(n=10675, pos_share=0.22, seed=1, patients=True):
    rng = np.random.default_rng(seed)
    ids = [f"1.2.{i}" for i in range(n)]
    pid = [f"p{i // 3}" if (patients and i % 7 == 0) else (f"q{i}" if patients else "") for i in range(n)]
    return pd.DataFrame(
        {"image_id": ids, "patient_id": pid, "has_pneumothorax": (rng.random(n) < pos_share).astype(int)}
    )


def test_paper_proportions_and_stratification():
    splits = make_splits(_manifest())
    counts = splits["split"].value_counts()
    assert abs(counts["test"] - 1068) <= 3 and abs(counts["val"] - 964) <= 3
    assert counts.sum() == 10675
    overall = splits["has_pneumothorax"].mean()
    for name, part in splits.groupby("split"):
        assert abs(part["has_pneumothorax"].mean() - overall) < 0.01, name


def _patients(n: int = 1800, per: int = 4, seed: int = 2) -> pd.DataFrame:
    """Every patient has ``per`` images (presence varies within a patient)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "image_id": [f"img{i:05d}" for i in range(n)],
            "patient_id": [f"pat{i // per:04d}" for i in range(n)],
            "has_pneumothorax": (rng.random(n) < 0.22).astype(int),
        }
    )


def test_no_patient_in_two_splits_or_folds():
    manifest = _patients()
    splits = make_splits(manifest).merge(manifest[["image_id", "patient_id"]], on="image_id")
    # judged by the input's patient ids, not by the output's own group column
    assert (splits.groupby("patient_id")["split"].nunique() == 1).all()
    assert (splits.groupby("patient_id")["fold"].nunique() == 1).all()
    assert set(splits["fold"]) == set(range(10))  # cross-fitting: every study, test split included
    sizes = splits["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 0.1 * sizes.mean()


def test_folds_are_stratified_by_presence():
    manifest = _patients(n=3000, per=1, seed=5)
    splits = make_splits(manifest, n_folds=5)
    overall = splits["has_pneumothorax"].mean()
    shares = splits.groupby("fold")["has_pneumothorax"].mean()
    assert (shares - overall).abs().max() < 0.01, shares.to_dict()


def test_stable_under_row_order_and_seeded():
    m = _manifest(1500)
    a = make_splits(m, seed=3).set_index("image_id").sort_index()
    b = make_splits(m.sample(frac=1, random_state=0), seed=3).set_index("image_id").sort_index()
    pd.testing.assert_frame_equal(a, b)
    c = make_splits(m, seed=4).set_index("image_id").sort_index()
    assert (a["split"] != c["split"]).any()


def test_images_without_patient_are_their_own_group():
    splits = make_splits(_manifest(300, patients=False), n_folds=5)
    assert splits["group"].str.startswith("image:").all()
    assert splits["group"].nunique() == 300


def test_tiny_set_gets_fewer_folds():
    splits = make_splits(_manifest(12), n_folds=10)
    assert splits["fold"].min() == 0 and splits["fold"].nunique() <= len(splits)
