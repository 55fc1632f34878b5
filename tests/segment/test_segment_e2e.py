"""End to end on tiny phantoms through the public commands: prepare -> train (kill/resume,
folds, 2-process gloo) -> predict (oof, val, test, new images) -> sweep -> evaluate -> stage two.

The experiment (tests/helpers/e2e.py) is prepared once (``e2e_prepared``) and trained, predicted and
swept once (``e2e_trained``) per test run; a test that writes works on a private copy."""

from __future__ import annotations

import contextlib
import io
import json
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.core import gating
from helpers.commands import cli, run
from helpers.e2e import N_PHANTOMS, e2e_yaml, linked_copy

READ_ONLY = ("prepared", "segmenter")  # linked, not copied, into a test's private copy


def _segment(*args: object, expect: int = 0):
    """``python -m dualstage.segment ARGS`` in this process."""
    return cli("dualstage.segment", *args, expect=expect)


def _weights(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_kill_and_resume_is_exact(e2e_prepared, e2e_trained, tmp_path):
    """Stopped after 2 epochs (in this process), resumed in a fresh process from the files alone =
    the uninterrupted run of e2e_trained."""
    cfg, exp = linked_copy(e2e_prepared[1], tmp_path)
    train = ("-m", "dualstage.segment", "train", "--exp", cfg, "--fold", "main", "--no-progress")
    _segment(*train[2:], "--stop-after", "2")
    log = pd.read_csv(exp / "segmenter" / "main" / "log.csv")
    assert len(log) == 2 and not (exp / "segmenter" / "main" / "done.json").exists()
    again = _segment("train", "--exp", cfg, "--fold", "main", "--no-progress", expect=2)
    assert "--resume" in again.stderr
    run(*train, "--resume", env={"OMP_NUM_THREADS": str(torch.get_num_threads())})  # CPU floats: same threads
    resumed = pd.read_csv(exp / "segmenter" / "main" / "log.csv")
    assert resumed["phase"].tolist() == [0, 1, 2, 2]
    straight_dir = e2e_trained[1] / "segmenter" / "main"  # the same experiment, never interrupted
    straight = pd.read_csv(straight_dir / "log.csv")
    np.testing.assert_allclose(resumed["lr"], straight["lr"], rtol=0, atol=0)
    np.testing.assert_allclose(resumed["train_loss"], straight["train_loss"], rtol=1e-6)
    a, b = _weights(exp / "segmenter" / "main" / "last.pt"), _weights(straight_dir / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    skipped = _segment("train", "--exp", cfg, "--fold", "main", "--no-progress")
    assert "finished already" in skipped.stdout


def test_fold_models_never_saw_their_fold(e2e_trained):
    _, exp = e2e_trained
    splits_table = pd.read_csv(exp / "prepared" / "splits.csv", dtype={"image_id": str})
    for k, fold in enumerate(("fold_0", "fold_1", "fold_2")):
        assert (exp / "segmenter" / fold / "best.pt").exists()
        seen = json.loads((exp / "segmenter" / fold / "split.json").read_text())
        own = set(splits_table.loc[splits_table["fold"] == k, "image_id"])
        # neither training nor the epoch choice (inner validation) ever saw fold k
        assert not own & (set(seen["train"]) | set(seen["validation"])) and seen["validation"]


def test_predictions_are_cross_fitted_and_resumable(e2e_trained, tmp_path):
    _, exp = linked_copy(e2e_trained[1], tmp_path, link=READ_ONLY)
    pred = exp / "predictions"
    splits = pd.read_csv(exp / "prepared" / "splits.csv", dtype={"image_id": str}).set_index("image_id")
    oof = pd.read_csv(pred / "oof" / "index.csv", dtype={"image_id": str})
    assert set(oof["image_id"]) == set(splits.index)  # cross-fitting: every study, each by its own fold
    assert (oof["fold_model"] == "fold_" + oof["image_id"].map(splits["fold"]).astype(str)).all()
    test = pd.read_csv(pred / "test" / "index.csv", dtype={"image_id": str})
    assert set(test["fold_model"]) == {"main"}  # holdout view: the main model, as on val
    hist = gating.load_histograms(pred / "test")
    assert (hist.hist.sum(axis=(1, 2)) == hist.height * hist.width).all()
    one = test["image_id"].iloc[0]
    q = np.asarray(Image.open(pred / "test" / "maps" / f"{one}.png"))
    assert q.shape == (128, 128) and q.dtype == np.uint8  # the image's own grid, not the 64 px model grid
    # resumable: a second run predicts nothing new
    again = _segment("predict", "--exp", exp, "--split", "test", "--workers", "0")
    assert json.loads(again.stdout)["predicted_now"] == 0


def test_predict_new_images_with_tta(e2e_trained, tmp_path):
    """New images without annotations, with flip TTA, from one model; a broken file is a row."""
    _, exp = e2e_trained
    new = tmp_path / "new"
    new.mkdir()
    Image.fromarray(np.full((90, 70), 100, np.uint8)).save(new / "outside.png")
    (new / "broken.dcm").write_bytes(b"not a dicom")
    out = tmp_path / "newpred"
    _segment(
        "predict", "--exp", exp, "--folds", "main", "--input", new, "--out", out, "--tta", "--workers", "0"
    )
    assert np.asarray(Image.open(out / "maps" / "outside.png")).shape == (90, 70)
    rejected = pd.read_csv(out / "rejected.csv")
    assert rejected["item"].str.endswith("broken.dcm").tolist() == [True]


def test_sweep_chooses_on_val_and_per_fold(e2e_trained):
    """Holdout chosen on val (test only reported); cross-fitted per fold."""
    _, exp = e2e_trained
    splits = pd.read_csv(exp / "prepared" / "splits.csv", dtype={"image_id": str}).set_index("image_id")
    op = json.loads((exp / "operating_point.json").read_text())
    assert op["chosen_on"] == "val" and op["best_rule"] in ("threshold", "threshold_area", "triplet", "lcc")
    for k in range(3):  # cross-fitted: each fold's rules chosen on the other folds' oof maps only
        fold_op = json.loads((exp / "crossfit" / f"fold_{k}" / "operating_point.json").read_text())
        fitted = set(fold_op["fitted_ids"])
        assert fitted == set(splits.index[splits["fold"] != k]) and "lcc" in fold_op
    assert (exp / "sweep" / "test" / "table4_threshold_area.csv").exists()
    refused = _segment("sweep", "--exp", exp, "--select-on", "test", expect=2)  # never chosen on test
    assert "invalid choice" in refused.stderr


def test_fold_model_on_test_is_refused_and_folds_reach_predict(e2e_trained, tmp_path):
    _, exp = linked_copy(e2e_trained[1], tmp_path, link=READ_ONLY)
    pred = exp / "predictions"
    # a fold model saw some test studies (the folds cover every study): its test score is refused
    refused = _segment(
        "predict", "--exp", exp, "--split", "test", "--folds", "fold_0", "--workers", "0", expect=2
    )
    assert "fold_0 saw" in refused.stderr and not (pred / "test_fold_0" / "index.csv").exists()
    # regression: --folds reaches predict; the set holds fold_0's own maps, not the ensemble's
    _segment("predict", "--exp", exp, "--split", "all", "--folds", "fold_0", "--workers", "0")
    single = pd.read_csv(pred / "all_fold_0" / "index.csv", dtype={"image_id": str})
    assert set(single["fold_model"]) == {"fold_0"}
    test_ids = pd.read_csv(pred / "test" / "index.csv", dtype={"image_id": str})["image_id"]
    differ = [
        not np.array_equal(
            np.asarray(Image.open(pred / "all_fold_0" / "maps" / f"{i}.png")),
            np.asarray(Image.open(pred / "test" / "maps" / f"{i}.png")),
        )
        for i in test_ids
    ]
    assert any(differ)


def test_evaluate_and_the_lcc_rule(e2e_trained, tmp_path):
    _, exp = linked_copy(e2e_trained[1], tmp_path, link=READ_ONLY)
    out = _segment("evaluate", "--exp", exp)
    assert "Table 2" in out.stdout and "Table 1" in out.stdout
    # regression: when the largest-component rule wins, evaluate (and run's evaluate step) finish and
    # score it from the sweep's map-based test table (histograms cannot express it)
    points = OperatingPoints.read(exp / "operating_point.json")
    replace(points, best_rule="lcc").write(exp / "operating_point.json")
    cli("dualstage", "run", exp, "--steps", "evaluate")
    row = pd.read_csv(exp / "evaluation" / "progressive_table2.csv").iloc[0]
    lcc = pd.read_csv(exp / "sweep" / "test" / "chosen.csv").set_index("name").loc["lcc"]
    assert json.loads(row["chosen_rule"]).get("lcc") is True
    assert row["chosen_mean_dice"] == pytest.approx(lcc["mean_dice"])
    cv = pd.read_csv(exp / "evaluation" / "tiny_cv.csv")
    assert len(cv) == 3 and cv["inner_val_mean_dice"].notna().all() and cv["oof_mean_dice"].notna().all()


def test_two_process_gloo_training(e2e_prepared, tmp_path):
    _, exp = e2e_prepared
    root = tmp_path / "models"
    ddp = e2e_yaml(tmp_path, root, name="tinyddp")
    (root / "tinyddp").mkdir(parents=True)
    os.symlink(exp / "prepared", root / "tinyddp" / "prepared")
    torchrun = ("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517")
    train = (
        "-m",
        "dualstage.segment",
        "train",
        "--exp",
        ddp,
        "--fold",
        "main",
        "--no-progress",
        "--device",
        "cpu",
    )
    proc = run(*torchrun, *train, env={"OMP_NUM_THREADS": "1"})
    done = json.loads((root / "tinyddp" / "segmenter" / "main" / "done.json").read_text())
    assert done["world"] == 2 and done["epochs_run"] == 4
    log = pd.read_csv(root / "tinyddp" / "segmenter" / "main" / "log.csv")
    assert len(log) == 4 and log["val_mean_dice"].notna().all()
    assert proc.stdout.count('"fold": "main"') == 1  # only rank 0 prints and writes


def test_stage_two_end_to_end(e2e_trained, tmp_path):
    """features -> tune (few iterations) -> gate fit/apply -> submission round-trips through rle."""
    from dualstage.core import rle

    _, exp = linked_copy(e2e_trained[1], tmp_path, link=READ_ONLY)
    pred = exp / "predictions"
    from dualstage.classify.__main__ import main as classify

    def run(*args: str) -> dict:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert classify(list(args)) == 0
        text = out.getvalue()  # the summary JSON comes last (the search may log lines before it)
        return json.loads(text[text.index("{") if text.startswith("{") else text.rindex("\n{") + 1 :])

    feats = run("features", "--exp", str(exp), "--weights", "none", "--image-size", "64")
    assert {"oof", "test"} <= set(feats)
    data = np.load(exp / "features" / "oof" / "features.npz")
    assert data["X"].shape == (len(pd.read_csv(pred / "oof" / "index.csv")), 2048 + 11)
    single = run("features", "--exp", str(exp), "--set", "test", "--weights", "none", "--image-size", "64")
    assert list(single) == ["test"] and (exp / "features" / "test" / "features.npz").exists()
    run("tune", "--exp", str(exp), "--n-iter", "2", "--threads", "1")
    assert (exp / "classifier" / "model.ubj").exists() and not list((exp / "classifier").glob("*.pkl"))
    table2 = pd.read_csv(exp / "classifier" / "table2.csv")
    assert {"default", "tuned"} <= set(table2["model"])
    gate = run("gate", "fit", "--exp", str(exp), "--mode", "both", "--threads", "1")
    assert gate["classifier"]["chosen_on"] == "val"
    cross = run("gate", "apply", "--exp", str(exp), "--set", "oof")
    every = pd.read_csv(exp / "final" / "oof" / "classifier" / "decisions.csv", dtype={"image_id": str})
    assert set(cross) == {"classifier", "classifier_and_area"} and len(every) == N_PHANTOMS
    applied = run("gate", "apply", "--exp", str(exp), "--set", "test", "--mode", "classifier")["classifier"]
    final = exp / "final" / "test" / "classifier"
    sub = pd.read_csv(final / "submission.csv", dtype=str, keep_default_na=False)
    assert list(sub.columns) == ["ImageId", "EncodedPixels"] and len(sub) == applied["n"]
    for image_id, encoded in sub.itertuples(index=False):
        mask = np.asarray(Image.open(final / "masks" / f"{image_id}.png")) > 127
        np.testing.assert_array_equal(rle.decode(encoded, *mask.shape), mask)
    # the README's new-radiograph flow, each step with the experiment's own settings
    new = exp.parent.parent / "incoming"
    new.mkdir(exist_ok=True)
    Image.fromarray(np.full((80, 72), 90, np.uint8)).save(new / "walk_in.png")
    _segment("predict", "--exp", exp, "--input", new, "--set", "new", "--workers", "0")
    run("features", "--exp", str(exp), "--set", "new")
    walk = run("gate", "apply", "--exp", str(exp), "--set", "new")
    assert set(walk) == {"classifier", "classifier_and_area"} and walk["classifier"]["n"] == 1
    assert (exp / "final" / "new" / "classifier_and_area" / "submission.csv").is_file()
    decisions = pd.read_csv(final / "decisions.csv", dtype={"image_id": str})
    assert (
        sub.set_index("ImageId").loc[decisions.loc[decisions.decision == 0, "image_id"], "EncodedPixels"]
        == "-1"
    ).all()
