"""The comparison told true: identical and vacuous gates, collapsed models, the gate tie rule,
leaky holdout numbers and reserved set names (issue: the comparison, told true)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.prediction_set import check_input_set_name
from dualstage.classify.gate import choose_gate
from dualstage.core import gating
from dualstage.core.metrics import collapsed_on_validation
from dualstage.core.tolerance import plateau_middle
from dualstage.crossfit.collapse import collapse_check
from dualstage.report.compare import Gate, compare_counts, gate_table
from dualstage.report.outcomes import outcomes, same_masks, vacuous_folds
from dualstage.segment.predict import refuse_seen
from dualstage.segment.train import collapse_on_validation

THR = {"rule": "threshold", "threshold": 0.5}
AREA = {"rule": "threshold_area", "threshold": 0.5, "min_area": 100}


def _gate(key, params, area, decision=None, inter=None):
    area = np.asarray(area)
    return Gate(key, key, key, params, np.asarray(inter if inter is not None else area), area, decision)


# -- the gate threshold's tie rule ---------------------------------------------------------------
def test_plateau_middle_picks_the_middle_of_the_longest_tied_run():
    assert plateau_middle([0.1, 0.5, 0.5, 0.5, 0.2]) == 2
    assert plateau_middle([0.5, 0.5, 0.1, 0.5, 0.5, 0.5, 0.5]) == 4  # longest run 3..6: lower middle
    assert plateau_middle([0.5, 0.5, 0.2, 0.5, 0.5]) == 0  # equal runs: the first, lower middle
    assert plateau_middle([0.3, 0.9]) == 1


def test_choose_gate_no_longer_keeps_everything_on_a_flat_start():
    # 4 studies: two true positives with p 0.9, two negatives with a false mask, p 0.2 and 0.4.
    probs = np.array([0.9, 0.9, 0.2, 0.4])
    inter, area = np.array([50, 50, 0, 0]), np.array([60, 60, 30, 30])
    true = np.array([60, 60, 0, 0])
    counts = np.stack([inter, area, true, np.full(4, 1000)])
    res = choose_gate(probs, counts, np.linspace(0, 1, 11))
    # every t in (0.4, 0.9] empties both negatives: the plateau 0.5 .. 0.9, middle 0.7
    assert res["threshold"] == pytest.approx(0.7)
    assert "middle" in res["tie_break"]


# -- identical and vacuous gates -----------------------------------------------------------------
def test_same_masks_needs_the_same_rule_or_two_empty_masks():
    folds = np.array([0, 0, 1])
    a = _gate("threshold", {"per_fold": {0: THR, 1: THR}}, [10, 0, 5])
    b = _gate("classifier", {"per_fold": {0: THR, 1: THR}}, [10, 0, 0], decision=np.array([1, 1, 0]))
    c = _gate("threshold_area", {"per_fold": {0: AREA, 1: THR}}, [10, 0, 5])
    assert same_masks(a, b, folds).tolist() == [True, True, False]
    # same areas, different rule in fold 0: not counted as the same mask; fold 1 has the same rule
    assert same_masks(a, c, folds).tolist() == [False, True, True]
    base = Gate("empty", "empty", "", None, np.zeros(3), np.zeros(3), None)
    assert same_masks(a, base, folds).tolist() == [False, True, False]


def test_threshold_area_with_min_area_zero_is_the_threshold_rule():
    assert gating.canonical_rule({**AREA, "min_area": 0}) == gating.canonical_rule(THR)
    trip = {"rule": "triplet", "top": 0.5, "min_area": 100, "bottom": 0.5}
    assert gating.canonical_rule(trip) == gating.canonical_rule(AREA)


def test_a_gate_that_keeps_every_mask_is_one_outcome_with_its_pixel_rule():
    folds = np.array([0, 0, 1, 1])
    rules = {"per_fold": {0: THR, 1: THR}}
    a = _gate("threshold", rules, [10, 20, 0, 5])
    cls = _gate(
        "classifier", {**rules, "gate_threshold": {0: 0.0, 1: 0.0}}, [10, 20, 0, 5], decision=np.ones(4, int)
    )
    other = _gate("triplet", {"per_fold": {0: AREA, 1: AREA}}, [10, 0, 0, 0])
    got = outcomes([a, other, cls], folds)
    assert got["groups"] == [["threshold", "classifier"], ["triplet"]]
    assert got["same"]["threshold|classifier"] == [4, 4]
    vac = vacuous_folds([a, other, cls], folds)
    assert {"gate": "triplet", "fold": 1, "what": "empties every mask"} in vac
    assert {"gate": "classifier", "fold": 0, "what": "keeps every mask (gate threshold 0)"} in vac


def test_the_ranking_counts_identical_masks_once():
    true = np.array([10, 0, 10, 0])
    rules = {"per_fold": {0: THR}}
    folds = np.zeros(4, int)
    a = _gate("threshold", rules, [10, 0, 10, 0])
    cls = _gate("classifier", rules, [10, 0, 10, 0], decision=np.ones(4, int))
    worse = _gate("threshold_area", {"per_fold": {0: AREA}}, [0, 0, 10, 0], inter=[0, 0, 10, 0])
    g = gate_table(
        np.array(list("abcd")), true, np.full(4, 100), [a, worse, cls], {}, "x", ["fold_0"], fold=folds
    )
    cmp = compare_counts(g, resamples=50, seed=0, split="crossfit")
    assert cmp["best"] == "threshold" and cmp["tied"] == ["threshold"]  # not "threshold, classifier"
    assert cmp["winner"]["other"] == "threshold_area"
    assert ["threshold", "classifier"] in cmp["outcomes"]


# -- collapsed fold models -----------------------------------------------------------------------
def _hist(levels_inside: list[int], levels_outside: list[int]) -> np.ndarray:
    h = np.zeros((2, 256), np.int64)
    for q in levels_outside:
        h[0, q] += 1
    for q in levels_inside:
        h[1, q] += 1
    return h


def test_collapse_check_names_the_model_that_calls_everything_empty():
    # fold 0: the lesion pixels reach q=200 (p 0.78); fold 1: never above q=60 (p 0.24)
    hists = [
        _hist([200, 200], [0, 0]),  # fold 0 positive, found
        _hist([], [0, 0, 0, 0]),  # fold 0 negative
        _hist([60, 60], [0, 0]),  # fold 1 positive, missed
        _hist([], [0, 0, 0, 0]),  # fold 1 negative
    ]
    h = gating.Histograms(np.array(list("abcd")), np.stack(hists), np.full(4, 2), np.full(4, 2))
    res = collapse_check(h, np.array([0, 0, 1, 1]), threshold=0.5, lowest=0.3)
    assert [r["collapsed"] for r in res] == [False, True]
    assert "positive-case Dice 0.000" in res[1]["why"] and "reaches p = 0.3" in res[1]["why"]
    assert res[1]["max_p_positive"] == pytest.approx(60 / 255)


def test_collapse_on_validation_reads_the_kept_epoch(tmp_path):
    log = pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            "val_mean_dice": [0.5, 0.8, 0.79],
            "val_pos_dice": [0.3, 0.2, 0.01],
            "val_neg_dice": [0.6, 0.9, 0.99],
        }
    )
    log.to_csv(tmp_path / "log.csv", index=False)
    assert collapse_on_validation(tmp_path / "log.csv", "last")["collapsed"]
    assert not collapse_on_validation(tmp_path / "log.csv", "best")["collapsed"]  # epoch 1
    assert collapsed_on_validation(0.049, 0.951) and not collapsed_on_validation(0.05, 0.99)


# -- no path to a leaky number, no reused pipeline set names -------------------------------------
def test_scoring_a_set_with_a_model_that_saw_it_is_refused(tmp_path):
    exp = ExperimentDir(tmp_path)
    (exp.segmenter / "fold_0").mkdir(parents=True)
    record = {"train": ["a", "b"], "validation": ["c"]}
    (exp.segmenter / "fold_0" / "split.json").write_text(json.dumps(record))
    (exp.segmenter / "main").mkdir()
    (exp.segmenter / "main" / "split.json").write_text(json.dumps({"train": ["x"], "validation": ["y"]}))
    refuse_seen(exp, ["main"], ["a", "b", "c", "d"], "--split test")  # main never saw them
    with pytest.raises(ValueError, match=r"fold_0 saw 3 of the 4 studies"):
        refuse_seen(exp, ["main", "fold_0"], ["a", "b", "c", "d"], "--split test")


@pytest.mark.parametrize("name", ["oof", "test", "val", "all", "oof_fold_0", "test_fold_3"])
def test_pipeline_set_names_are_refused_for_new_images(name):
    with pytest.raises(ValueError, match="the pipeline owns this set name"):
        check_input_set_name(name)
    assert check_input_set_name("new") == "new"


def test_a_model_that_collapsed_in_training_is_a_warning(tmp_path):
    from dualstage.crossfit.collapse import validation_collapse

    for name, flag in (("fold_0", False), ("fold_1", True)):
        (tmp_path / name).mkdir()
        why = "validation positive-case Dice 0.000" if flag else ""
        record = {"collapse": {"collapsed": flag, "why": why}}
        (tmp_path / name / "done.json").write_text(json.dumps(record))
    got = validation_collapse({n: tmp_path / n for n in ("fold_0", "fold_1", "fold_2")})
    assert [(r["model"], r["collapsed"]) for r in got] == [("fold_0", False), ("fold_1", True)]
    true = np.array([10, 0])
    a = _gate("threshold", {"per_fold": {0: THR}}, [10, 0])
    g = gate_table(
        np.array(["a", "b"]),
        true,
        np.full(2, 100),
        [a],
        {},
        "x",
        ["fold_0"],
        fold=np.zeros(2, int),
        collapse=got,
    )
    cmp = compare_counts(g, resamples=20, seed=0, split="crossfit")
    assert cmp["warnings"] == ["fold_1 collapsed on its validation: validation positive-case Dice 0.000"]
