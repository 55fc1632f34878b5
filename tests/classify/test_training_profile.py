"""The "unlike the training data" warning: its threshold is chosen on out-of-fold distances (never on
a description that holds the study judged), and real radiographs are far from phantoms."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from dualstage.artifacts.layout import ExperimentDir
from dualstage.classify.ood import (
    build_training_profile,
    distances,
    fit_profile,
    image_descriptors,
    oof_distances,
    training_profile,
)
from dualstage.commands.predictor import Predictor
from dualstage.data.images import read_image_file
from helpers.deploy import phantoms


def _rows(seed: int, n: int = 45) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    phi, stats, grid = rng.normal(size=(n, 40)), rng.normal(size=(n, 10)), rng.normal(size=(n, 64))
    return phi, stats, grid, np.arange(n) % 3


def test_descriptors_shapes_and_values() -> None:
    images = np.zeros((2, 16, 16), np.uint8)
    images[1] = 255
    stats, grid = image_descriptors(images)
    assert stats.shape == (2, 10) and grid.shape == (2, 64)
    assert np.allclose(stats[0, :8], 0) and np.allclose(stats[1, :8], 1) and np.allclose(grid[1], 1)


def test_each_study_is_judged_against_a_description_without_its_fold() -> None:
    phi, stats, grid, folds = _rows(0)
    oof = oof_distances(phi, stats, grid, folds)
    for i in (0, 1, 2, 44):
        rest = folds != folds[i]
        alone = distances(
            fit_profile(phi[rest], stats[rest], grid[rest]), phi[i : i + 1], stats[i : i + 1], grid[i : i + 1]
        )
        assert oof[i] == pytest.approx(alone[0])
    # study 0 made an outlier: its own distance grows, and the distances of its fold-mates (whose
    # description excludes the whole fold) do not move: nothing was fit on the study judged
    far = phi.copy()
    far[0] += 25.0
    moved = oof_distances(far, stats, grid, folds)
    mates = np.flatnonzero(folds == folds[0])[1:]
    assert np.allclose(moved[mates], oof[mates]) and moved[0] > 3 * oof[0]
    inside = distances(fit_profile(far, stats, grid), far[:1], stats[:1], grid[:1])[0]
    assert moved[0] > inside  # a description holding the study would have pulled it in
    with pytest.raises(ValueError, match="at least 2 folds"):
        oof_distances(phi, stats, grid, np.zeros(len(phi), int))


def test_profile_of_the_experiment_threshold_from_its_own_oof_distances(deployable_exp) -> None:
    exp = ExperimentDir(deployable_exp)
    profile = build_training_profile(exp.root)
    record = json.loads(exp.training_profile.read_text())
    oof = np.array(record["oof_distances"]["distance"])
    assert record["n_studies"] == len(oof) == 18 and record["folds"] == [0, 1, 2]
    assert profile.threshold == pytest.approx(np.percentile(oof, 99), abs=1e-3)
    assert training_profile(exp.root).threshold == profile.threshold  # read back, not rebuilt


def test_real_radiographs_are_flagged_phantoms_mostly_not(siim, deployable_exp, tmp_path) -> None:
    predictor = Predictor.from_experiment(deployable_exp, device="cpu")
    real = sorted((siim / "sample_images").glob("*.jpg"))[:4] + sorted((siim / "dicom").glob("*.dcm"))[:1]
    flagged = [r.unlike_training for r in predictor.predict([read_image_file(p)[0] for p in real])]
    assert all(flagged), flagged
    fresh = phantoms(tmp_path / "fresh", 6, seed=11)
    results = predictor.predict([np.asarray(Image.open(p).convert("L")) for p in fresh])
    assert sum(r.unlike_training for r in results) <= 1
    assert all(r.warning == "" for r in results if not r.unlike_training)
    assert "unlike the training data" in predictor.predict([read_image_file(real[0])[0]])[0].warning
