"""The predictor front door: set up once from an experiment folder, then many images in memory; its
maps, masks and votes are those of the step functions (segment predict, classify features, the
cross-fitted vote of ``crossfit.deploy``)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dualstage.api import Predictor  # the front door, as the README imports it
from dualstage.artifacts.layout import ExperimentDir
from dualstage.classify.features import extract_features
from dualstage.crossfit.deploy import crossfit_apply
from dualstage.segment.predict import predict
from helpers.deploy import K, phantoms


@pytest.fixture(scope="module")
def predictor(deployable_exp) -> Predictor:
    return Predictor.from_experiment(deployable_exp, device="cpu")


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (40, 56), dtype=np.uint8), rng.integers(0, 255, (64, 64), dtype=np.uint8)]


def test_set_up_once_then_maps_masks_and_votes_per_image(predictor) -> None:
    described = predictor.describe()
    assert [p["name"] for p in described["pipelines"]] == [f"fold_{k}" for k in range(K)]
    assert described["mode"] == "classifier" and described["warning_threshold"] > 0
    images = _images()
    results = predictor.predict(images)
    assert len(results) == len(images)
    for image, r in zip(images, results, strict=True):
        assert r.probability_map.shape == image.shape and r.probability_map.dtype == np.uint8
        assert r.mask.shape == image.shape and r.mask.dtype == bool
        assert [v.pipeline for v in r.votes] == [f"fold_{k}" for k in range(K)]
        assert r.decision == 1 and r.mask.all()  # the kit's maps are bright, every gate keeps them
        assert "final: present" in r.reason() and r.distance is not None
    with pytest.raises(ValueError, match="uint8 \\(H, W\\)"):
        predictor.predict([np.zeros((8, 8, 3), np.uint8)])


def test_the_final_mask_is_a_majority_of_the_fold_pipelines(predictor) -> None:
    """Fold pipeline k keeps its mask iff its probability >= its threshold; the final mask keeps
    the pixels more than half of the pipelines keep."""
    saved = [p.threshold for p in predictor.pipelines]
    try:
        predictor.pipelines[0].threshold = 2.0  # never present
        r = predictor.predict(_images()[:1])[0]
        assert [v.vote for v in r.votes] == [0, 1, 1] and r.decision == 1
        assert "p 0." in r.votes[0].text() and "absent (vote 0)" in r.votes[0].text()
        predictor.pipelines[1].threshold = 2.0
        r = predictor.predict(_images()[:1])[0]
        assert [v.vote for v in r.votes] == [0, 0, 1] and r.decision == 0 and not r.mask.any()
        assert "final: absent: 1 of 3 voted 1, a mask needs 2" in r.reason()
    finally:
        for p, t in zip(predictor.pipelines, saved, strict=True):
            p.threshold = t


def test_predictor_agrees_with_the_step_commands(predictor, deployable_exp, tmp_path) -> None:
    """segment predict (one map set per fold model) -> classify features -> the fold vote, on files,
    gives the predictor's probabilities and final masks exactly."""
    paths = phantoms(tmp_path / "new", 3, seed=3)
    exp = ExperimentDir(deployable_exp)
    for k in range(K):
        name = f"agree_fold_{k}"
        options = {"batch_size": 4, "workers": 0, "device": "cpu", "progress": False}
        predict(exp.root, exp.prediction_set(name), input_dir=tmp_path / "new", only=[f"fold_{k}"], **options)
        extract_features(
            exp.prediction_set(name), exp.feature_set(name), weights="none", image_size=32, **options
        )
    crossfit_apply(exp.root, "agree", "classifier")
    final = exp.final("agree", "classifier")
    table = pd.read_csv(final / "decisions.csv", dtype={"image_id": str}).set_index("image_id")
    results = predictor.predict([np.asarray(Image.open(p).convert("L")) for p in paths])
    for path, r in zip(paths, results, strict=True):
        row = table.loc[path.stem]
        for v in r.votes:
            assert v.probability == pytest.approx(row[f"probability_{v.pipeline}"], abs=1e-6)
        mask = np.asarray(Image.open(final / "masks" / f"{path.stem}.png")) > 0
        assert np.array_equal(mask, r.mask) and r.decision == row["decision"]


def test_a_leftover_main_model_without_its_gate_does_not_stop_the_fold_pipelines(
    deployable_exp, tmp_path
) -> None:
    """A main model whose gate was never fitted is left aside: the fold pipelines are deployed."""
    exp = tmp_path / "exp"
    (exp / "segmenter").mkdir(parents=True)
    for item in deployable_exp.iterdir():
        if item.name != "segmenter":
            (exp / item.name).symlink_to(item)
    for model in (deployable_exp / "segmenter").iterdir():
        (exp / "segmenter" / model.name).symlink_to(model)
    (exp / "segmenter" / "main").symlink_to(deployable_exp / "segmenter" / "fold_0")
    described = Predictor.from_experiment(exp, device="cpu", warn=False).describe()
    assert [p["name"] for p in described["pipelines"]] == [f"fold_{k}" for k in range(K)]
