"""Issue 17, item 4: ``train.val_threshold`` is the one source of the un-tuned rule ("no gate") in
every table, label and fallback; a missing operating point names `segment sweep`, never a silent 0.5.

A cross-fitted synthetic experiment (tests/helpers/crossfit.py) saved with val_threshold 0.4.
"""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from dualstage.artifacts.operating_points import configured_threshold
from dualstage.commands.experiment import record_experiment
from dualstage.config import Experiment, TrainConfig, TuneConfig
from dualstage.core import gating
from dualstage.core.metrics import summarize_counts
from dualstage.crossfit.compare import crossfit_gates
from dualstage.crossfit.rules import crossfit_sweep
from dualstage.report.compare import compare
from dualstage.report.tables import paper_tables
from dualstage.segment.evaluate import evaluate
from helpers.crossfit import K, N, write_oof

THRESHOLD = 0.4  # not the library's 0.5: every place must show and use this one


@pytest.fixture(scope="module")
def exp(tmp_path_factory) -> Experiment:
    root = tmp_path_factory.mktemp("thr")
    e = Experiment(
        name="thr",
        output_root=str(root),
        train=TrainConfig(val_threshold=THRESHOLD),
        tune=TuneConfig(n_iter=2, threads=1),
    )
    labels = (np.random.default_rng(7).random(N) < 0.35).astype(int)
    write_oof(e.folder, labels, labels)
    record_experiment(e)
    crossfit_sweep(e)
    for k in range(K):  # fold models, as `segment train --fold all` leaves them (log + last.pt)
        d = e.dir.model_dir(f"fold_{k}")
        d.mkdir(parents=True)
        (d / "last.pt").write_bytes(b"")
        pd.DataFrame({"epoch": [0, 1], "val_loss": [0.9, 0.8], "val_mean_dice": [0.5, 0.6]}).to_csv(
            d / "log.csv", index=False
        )
    evaluate([e.folder])
    return e


def _mean_dice(hist: gating.Histograms, keep: np.ndarray, threshold: float) -> float:
    rule = {"rule": "threshold", "threshold": threshold}
    counts = gating.rule_counts(hist.hist[keep], hist.height[keep], hist.width[keep], rule)
    return float(summarize_counts(*counts)["mean_dice"])


def test_configured_threshold_is_read_from_the_folder(exp, tmp_path):
    assert configured_threshold(exp.folder) == THRESHOLD
    with pytest.raises(FileNotFoundError, match="val_threshold"):
        configured_threshold(tmp_path)  # no saved config: an error, not 0.5


def test_no_gate_row_names_and_uses_the_configured_threshold(exp):
    g = crossfit_gates(exp.folder)
    default = next(gate for gate in g["gates"] if gate.key == "default")
    assert default.name == "no gate (0.4)"
    assert {r["threshold"] for r in default.params["per_fold"].values()} == {THRESHOLD}


def test_kfold_and_table2_score_at_the_configured_threshold(exp):
    hist = gating.load_histograms(exp.dir.prediction_set("oof"))
    folds = np.array([int(i[1:]) % K for i in hist.image_id])
    cv = pd.read_csv(exp.dir.evaluation / "thr_cv.csv").set_index("fold")
    by_hand = {k: _mean_dice(hist, folds == k, THRESHOLD) for k in range(K)}
    assert by_hand != {k: _mean_dice(hist, folds == k, 0.5) for k in range(K)}  # the data tell them apart
    for k in range(K):
        assert cv.loc[f"fold_{k}", "oof_mean_dice"] == pytest.approx(by_hand[k], abs=1e-12)
    t2 = pd.read_csv(exp.dir.evaluation / "progressive_table2.csv")
    assert t2.loc[0, "operating_point"] == "threshold 0.4"
    assert t2.loc[0, "mean_dice"] == pytest.approx(_mean_dice(hist, np.ones(N, bool), THRESHOLD), abs=1e-12)
    tables, _ = paper_tables(exp.folder, exp.folder / "report", None)
    captions = {t.key: t.caption for t in tables}
    for key in ("prog_table2", "prog_cv", "dual_table1"):
        assert "threshold 0.4" in captions[key] and "0.5" not in captions[key]


def test_holdout_without_operating_points_uses_the_key_and_names_the_sweep(exp, tmp_path):
    """The holdout view with test maps but no operating_point.json: the no-gate row is scored at the
    configured threshold; every tuned gate says to run `segment sweep`."""
    folder = tmp_path / "thr"
    shutil.copytree(exp.folder, folder)
    shutil.copytree(folder / "predictions" / "oof", folder / "predictions" / "test")
    assert not (folder / "operating_point.json").exists()
    cmp = compare(folder, resamples=50, seed=0)
    assert cmp["gates"]["default"]["name"] == "no gate (0.4)"
    assert cmp["gates"]["default"]["params"] == {"rule": "threshold", "threshold": THRESHOLD}
    hist = gating.load_histograms(folder / "predictions" / "test")
    expected = _mean_dice(hist, np.ones(N, bool), THRESHOLD)
    assert cmp["gates"]["default"]["metrics"]["mean_dice"]["value"] == pytest.approx(expected, abs=1e-12)
    assert set(cmp["gates"]) == {"default", "empty"}
    assert all("segment sweep" in why for why in cmp["skipped"].values()) and len(cmp["skipped"]) == 5
