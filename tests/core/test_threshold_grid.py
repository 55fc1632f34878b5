"""Issue 17, item 5 (grid): best threshold, threshold + min area and the triplet choose on one
threshold grid, so threshold + area is exactly the triplet's top == bottom subset and a difference
between the rules is the rule, not the grid resolution."""

from __future__ import annotations

import numpy as np
import pytest

from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.core import gating
from dualstage.core.metrics import summarize_counts
from dualstage.segment.sweep import GRID, _choose, grid_record, make_grids, sweep_tables
from helpers.stage_two import random_set

SIDE = 32


def _hand_set() -> gating.Histograms:
    """One positive study: 16 true pixels at q = 88, 16 false ones beside them at q = 86; one negative
    study (all q = 0). Only a threshold t with level(t) in {87, 88}, t in [0.3412, 0.3451), separates
    them: 0.34 on a 0.02 grid (Dice 1); no multiple of 0.05 does (0.30 keeps both, 0.35 neither)."""
    q, truth = np.zeros((SIDE, SIDE), np.uint8), np.zeros((SIDE, SIDE), bool)
    q[4:8, 4:8], truth[4:8, 4:8] = 88, True
    q[4:8, 8:12] = 86
    hist = np.stack([gating.histogram(q, truth), gating.histogram(np.zeros_like(q), np.zeros_like(truth))])
    return gating.Histograms(np.array(["pos", "neg"]), hist, np.full(2, SIDE), np.full(2, SIDE))


def test_one_grid_nests_the_rules_by_hand():
    hist = _hand_set()
    tables = sweep_tables(hist, make_grids())
    chosen = _choose(tables)
    dice = {
        k: summarize_counts(*gating.rule_counts(hist.hist, hist.height, hist.width, r))["mean_dice"]
        for k, r in chosen.items()
    }
    assert dice == {"threshold": 1.0, "threshold_area": 1.0, "triplet": 1.0}
    assert chosen["threshold"] == {"rule": "threshold", "threshold": 0.34}
    assert chosen["threshold_area"] == {"rule": "threshold_area", "threshold": 0.34, "min_area": 0}
    # a triplet that does no better than threshold + area is that rule (top == bottom)
    assert chosen["triplet"] == {"rule": "triplet", "top": 0.34, "min_area": 0, "bottom": 0.34}


def test_threshold_area_is_the_triplets_top_equals_bottom_subset():
    _, _, hist, H, W = random_set(5)
    tables = sweep_tables(gating.Histograms(np.arange(len(hist)).astype(str), hist, H, W), make_grids())
    trip, ta = tables["triplet"], tables["table4_threshold_area"]
    same = trip[np.isclose(trip["top"], trip["bottom"])].sort_values(["top", "min_area"], kind="mergesort")
    ta = ta.sort_values(["threshold", "min_area"], kind="mergesort")
    assert len(same) == len(ta) == len(GRID) * len(make_grids()["min_areas"])
    np.testing.assert_array_equal(same["top"].to_numpy(), ta["threshold"].to_numpy())
    for col in ("mean_dice", "pos_dice", "neg_dice", "pos_accuracy"):
        np.testing.assert_allclose(same[col].to_numpy(), ta[col].to_numpy(), rtol=0, atol=1e-12)
    fine = tables["thresholds_fine"]
    zero = ta[ta["min_area"] == 0]
    np.testing.assert_allclose(zero["mean_dice"].to_numpy(), fine["mean_dice"].to_numpy(), atol=1e-12)
    best = [tables[t]["mean_dice"].max() for t in ("thresholds_fine", "table4_threshold_area", "triplet")]
    assert best[0] <= best[1] + 1e-12 and best[1] <= best[2] + 1e-12  # nested on the selection set


def test_the_grid_is_recorded_beside_the_chosen_points(tmp_path):
    grids = make_grids()
    record = grid_record(grids, lcc=False)
    assert record["thresholds"] == {"start": 0.02, "stop": 0.98, "step": 0.02, "n": 49}
    assert record["triplet"]["tops"] == record["triplet"]["bottoms"] == record["thresholds"]
    op = OperatingPoints(
        "oof", 2, "threshold", {"threshold": {"rule": "threshold", "threshold": 0.34}}, grid=record
    )
    assert OperatingPoints.read(op.write(tmp_path / "operating_point.json")).grid == record
    assert "top == bottom" in record["thresholds_used_by"]


@pytest.mark.parametrize("step", [0.05])
def test_a_coarser_triplet_grid_would_lose_to_threshold_area(step):
    """The bug the one grid removes: the old triplet grid (step 0.05) cannot reach 0.34."""
    hist = _hand_set()
    old = np.round(np.arange(1, 20) * step, 2)
    frame = gating.sweep_triplet(hist.hist, hist.height, hist.width, old, [0], old)
    assert frame["mean_dice"].max() < 1.0
