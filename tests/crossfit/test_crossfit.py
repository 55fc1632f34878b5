"""Cross-fitting guards: no study's decision comes from anything fitted on it, and a study's own
label cannot change its decision. A synthetic experiment (maps, histograms, features, folds)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dualstage.core import gating
from dualstage.crossfit.compare import crossfit_gates
from dualstage.report.compare import compare_counts
from helpers.crossfit import SIDE, K, N, copy_crossfit, run_crossfit


def test_nothing_is_fitted_on_the_study_it_decides(crossfit_base):
    labels, exp = crossfit_base
    d = exp.dir
    splits = pd.read_csv(d.splits_csv, dtype={"image_id": str})
    for k in range(K):
        own = set(splits.loc[splits.fold == k, "image_id"])
        others = set(splits.loc[splits.fold != k, "image_id"])
        op = json.loads((d.crossfit_fold(k) / "operating_point.json").read_text())
        params = json.loads((d.crossfit_fold(k) / "classifier" / "params.json").read_text())
        gate = json.loads((d.crossfit_fold(k) / "classifier" / "gate.json").read_text())
        for fitted in (op["fitted_ids"], params["fitted_ids"], gate["fitted_ids"]):
            assert set(fitted) == others and not own & set(fitted)
        probs = pd.read_csv(d.crossfit_fold(k) / "classifier" / "probabilities.csv", dtype={"image_id": str})
        assert set(probs["image_id"]) == own
    decisions = pd.read_csv(d.final("oof", "classifier") / "decisions.csv", dtype={"image_id": str})
    assert len(decisions) == N and (decisions["fold"] == decisions["image_id"].str[1:].astype(int) % K).all()


def test_own_label_cannot_change_own_decision(crossfit_base, tmp_path):
    labels, exp = crossfit_base
    s = 4  # a study of fold 1
    flipped = labels.copy()
    flipped[s] = 1 - flipped[s]
    other = run_crossfit(tmp_path, flipped, signal=labels)  # same maps and features, one label changed
    a = pd.read_csv(exp.dir.final("oof", "classifier") / "decisions.csv", dtype={"image_id": str})
    b = pd.read_csv(other.dir.final("oof", "classifier") / "decisions.csv", dtype={"image_id": str})
    a, b = a.set_index("image_id"), b.set_index("image_id")
    sid = f"s{s:03d}"
    assert a.loc[sid].equals(b.loc[sid])  # probability, threshold, decision, mask area: all the same
    fold_s = s % K
    same_fold = a.index[a["fold"] == fold_s]
    assert a.loc[same_fold].equals(b.loc[same_fold])  # fold s's whole pipeline never saw its label
    for k in range(K):
        ra = json.loads((exp.dir.crossfit_fold(k) / "operating_point.json").read_text())
        rb = json.loads((other.dir.crossfit_fold(k) / "operating_point.json").read_text())
        if k == fold_s:
            assert {x: ra[x] for x in ra if x != "grid"} == {x: rb[x] for x in rb if x != "grid"}


def test_comparison_covers_every_study_with_per_fold_spread(crossfit_base):
    _, exp = crossfit_base
    cmp = compare_counts(crossfit_gates(exp.folder), resamples=200, seed=0, split="crossfit")
    assert cmp["n"] == N and cmp["split"] == "crossfit"
    assert set(cmp["gates"]) >= {"default", "threshold", "threshold_area", "triplet", "classifier", "empty"}
    pf = cmp["per_fold"]["threshold_area"]
    per = cmp["per_image"].groupby("fold")["threshold_area_dice"].mean()
    assert (
        pf["n_folds"] == K
        and pf["mean"] == pytest.approx(per.mean())
        and pf["sd"] == pytest.approx(per.std())
    )
    # each study scored with its own fold's rule: recompute one by hand
    i = 10
    k = i % K
    rule = json.loads((exp.dir.crossfit_fold(k) / "operating_point.json").read_text())["threshold_area"]
    rule = {x: v for x, v in rule.items() if x != "metrics"}
    hist = gating.load_histograms(exp.dir.prediction_set("oof"))
    inter, area, true, _ = gating.rule_counts(hist.hist[i : i + 1], [SIDE], [SIDE], rule)
    row = cmp["per_image"].set_index("image_id").loc[f"s{i:03d}"]
    assert row["threshold_area_pred_area"] == area[0]


def test_table2_cross_fitted_over_every_study(crossfit_base):
    from dualstage.crossfit.table2 import MODELS, _f1_threshold

    _, exp = crossfit_base
    table = pd.read_csv(exp.dir.crossfit / "table2.csv")
    assert set(table["model"]) == set(MODELS) and len(table) == 2 * len(MODELS)
    assert (table.groupby("model")["support"].sum() == N).all()
    assert (table["roc_auc_lo"] <= table["roc_auc"]).all() and (table["roc_auc"] <= table["roc_auc_hi"]).all()
    probs = pd.read_csv(exp.dir.crossfit / "table2_probabilities.csv")
    assert len(probs) == N and probs.groupby("fold")["ours_tuned_threshold"].nunique().eq(1).all()
    # F1-maximising threshold by hand: y = [0, 0, 1, 1], p = [.1, .6, .55, .9] -> best F1 at t in (.1, .55]
    assert _f1_threshold(np.array([0.1, 0.6, 0.55, 0.9]), np.array([0, 0, 1, 1])) == 0.11


def test_new_images_go_through_every_fold_pipeline_and_vote(crossfit_base, tmp_path):
    """New images in a cross-fitted experiment: fold pipeline k (its map, classifier, threshold,
    rule) each decides, the final mask keeps the pixels more than half of them keep."""
    from dualstage.classify.tune import load_classifier
    from dualstage.crossfit.deploy import crossfit_apply

    exp = copy_crossfit(crossfit_base[1], tmp_path)  # this test writes new sets and final decisions
    d = exp.dir
    feats = np.load(d.feature_set("oof") / "features.npz")
    pick = [f"s{i:03d}" for i in (0, 1, 2, 5, 9)]
    rows = [int(np.flatnonzero(feats["image_id"] == i)[0]) for i in pick]
    rng = np.random.default_rng(3)
    for k in range(K):  # each fold model's own map of the new images (here: a perturbed oof map)
        pset, fset = d.prediction_set(f"new_fold_{k}"), d.feature_set(f"new_fold_{k}")
        (pset / "maps").mkdir(parents=True, exist_ok=True)
        fset.mkdir(parents=True, exist_ok=True)
        for i in pick:
            q = np.asarray(Image.open(d.prediction_set("oof") / "maps" / f"{i}.png")).astype(int)
            Image.fromarray(np.clip(q + rng.integers(-40, 40, q.shape), 0, 255).astype(np.uint8)).save(
                pset / "maps" / f"{i}.png"
            )
        np.savez(
            fset / "features.npz",
            image_id=np.array(pick),
            X=feats["X"][rows] + k * 0.3,
            feature_names=feats["feature_names"],
        )
        pd.DataFrame(
            {
                "image_id": pick,
                "split": "input",
                "fold_model": f"fold_{k}",
                "has_truth": 0,
                "has_pneumothorax": 0,
            }
        ).to_csv(fset / "index.csv", index=False)
    summary = crossfit_apply(exp.folder, "new", "classifier")
    assert summary["n"] == len(pick) and summary["n_nonempty"] > 0
    for j, image_id in enumerate(pick):
        votes = []
        for k in range(K):
            cdir = d.crossfit_fold(k) / "classifier"
            p = load_classifier(cdir).predict_proba(feats["X"][rows][j : j + 1] + k * 0.3)[0, 1]
            thr = json.loads((cdir / "gate.json").read_text())["classifier"]["threshold"]
            rule = json.loads((d.crossfit_fold(k) / "operating_point.json").read_text())["threshold"]
            q = np.asarray(Image.open(d.prediction_set(f"new_fold_{k}") / "maps" / f"{image_id}.png"))
            level = int(np.floor(rule["threshold"] * 255)) + 1
            votes.append((q >= level) if p >= thr else np.zeros(q.shape, bool))
        expected = np.sum(votes, axis=0) >= 2  # 2 of 3 fold pipelines
        final = np.asarray(Image.open(d.final("new", "classifier") / "masks" / f"{image_id}.png")) > 127
        np.testing.assert_array_equal(final, expected)
