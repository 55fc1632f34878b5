"""Guards of the comparison's protocol (issue 9, item 8), each against hand-computed or
independently computed values: patient-grouped and stratified splits and inner validations,
the paired 95 % bootstrap and its sign, the sweep's best rule and tie-breaks, one LR triangle
per phase, and ImageIds stripped of spaces. The classifier gate's out-of-fold threshold and the
mid-phase resume are in ``tests/crossfit/test_protocol_guards_fit.py``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from dualstage.config import PhaseConfig
from dualstage.data.annotations import read_png_index, read_rle_csv
from dualstage.data.ids import check_image_id
from dualstage.data.splits import inner_split, make_splits
from dualstage.report.compare import CONFIDENCE, Gate, bootstrap_indices, compare_counts, interval
from dualstage.report.summary import gates_block
from dualstage.segment.loop import make_scheduler
from dualstage.segment.sweep import best_rule, choose_rules
from helpers.bad_inputs import assert_ok, manifest_ids, prepare, siim_layout


# ----------------------------------------------------------------------------- splits
def _patients(n_patients: int = 1000, seed: int = 0) -> pd.DataFrame:
    """1 to 4 images per patient; presence is the patient's (about 12 % of patients)."""
    rng = np.random.default_rng(seed)
    per, positive = rng.integers(1, 5, n_patients), rng.random(n_patients) < 0.12
    rows = [
        (f"img{p:04d}_{j}", f"pat{p:04d}", int(positive[p])) for p in range(n_patients) for j in range(per[p])
    ]
    return pd.DataFrame(rows, columns=["image_id", "patient_id", "has_pneumothorax"])


def _with_patients(table: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """The split table indexed by image, with the INPUT manifest's patient ids (not its group column)."""
    return table.set_index("image_id").join(manifest.set_index("image_id")["patient_id"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_folds_and_holdout_keep_each_input_patient_whole(seed: int) -> None:
    manifest = _patients(seed=seed)
    assert manifest.groupby("patient_id").size().max() == 4  # several images per patient
    splits = _with_patients(make_splits(manifest, n_folds=5, seed=seed), manifest)
    assert (splits.groupby("patient_id")["fold"].nunique() == 1).all()
    assert (splits.groupby("patient_id")["split"].nunique() == 1).all()
    assert sorted(splits["fold"].unique()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_folds_and_holdout_are_stratified_by_presence(seed: int) -> None:
    # about 500 images per fold at a 12 % share: an unstratified fold misses it by 0.015 (1 sd)
    manifest = _patients(seed=seed)
    splits = make_splits(manifest, n_folds=5, seed=seed)
    overall = manifest["has_pneumothorax"].mean()
    by_fold = splits.groupby("fold")["has_pneumothorax"].mean()
    assert (by_fold - overall).abs().max() < 0.01, by_fold.to_dict()
    by_split = splits.groupby("split")["has_pneumothorax"].mean()
    assert (by_split - overall).abs().max() < 0.01, by_split.to_dict()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inner_validation_is_grouped_disjoint_from_its_fold_and_stratified(seed: int) -> None:
    manifest = _patients(seed=seed)
    table = make_splits(manifest, n_folds=5, seed=seed)
    patients = manifest.set_index("image_id")["patient_id"]
    labels = manifest.set_index("image_id")["has_pneumothorax"]
    for k in range(5):
        train, val = inner_split(table, k, seed=seed)
        own = set(table.loc[table["fold"] == k, "image_id"])
        dev = set(manifest["image_id"]) - own
        assert set(train) | set(val) == dev and not set(train) & set(val)
        assert len(train) + len(val) == len(dev)  # no image twice
        # by the input's patient ids: none in both train and validation, none shared with fold k
        val_patients = set(patients[val])
        assert not val_patients & set(patients[train])
        assert not (val_patients | set(patients[train])) & set(patients[list(own)])
        # the default fraction 964 / 10675 -> round(1 / 0.0903) = 11 parts: one part validates
        assert abs(len(val) - len(dev) / 11) <= 0.1 * len(dev) / 11
        # stratified: ~183 images at 12 %; an unstratified part misses the share by 0.024 (1 sd)
        assert abs(labels[val].mean() - labels[list(dev)].mean()) < 0.01, (k, labels[val].mean())


# ----------------------------------------------------------------------------- bootstrap comparison
# Eight studies; true areas, and per gate (inter, pred_area) with the Dice of each study by hand.
TRUE = np.array([100, 100, 100, 0, 0, 0, 50, 0])
REF = (np.array([80, 50, 0, 0, 0, 0, 25, 0]), np.array([100, 100, 0, 0, 20, 0, 50, 0]))
REF_DICE = np.array([0.8, 0.5, 0.0, 1.0, 0.0, 1.0, 0.5, 1.0])  # mean 4.8 / 8 = 0.6
BETTER = (np.array([90, 80, 50, 0, 0, 0, 40, 0]), np.array([100, 100, 50, 0, 0, 0, 50, 0]))
BETTER_DICE = np.array([0.9, 0.8, 100 / 150, 1.0, 1.0, 1.0, 0.8, 1.0])  # never below REF_DICE


def _gate(key: str, counts: tuple, decision=None) -> Gate:
    return Gate(key, key, key, {"rule": "threshold", "threshold": 0.5}, counts[0], counts[1], decision)


def _comparison(resamples: int = 500, seed: int = 3) -> dict:
    gates = [
        _gate("threshold_area", REF),
        _gate("triplet", BETTER),
        _gate("classifier", (REF[0].copy(), REF[1].copy()), np.ones(8, np.int64)),  # a copy of the reference
        Gate(
            "empty", "all empty", "every mask empty", None, np.zeros(8, np.int64), np.zeros(8, np.int64), None
        ),
    ]
    g = {
        "image_id": np.array([f"s{i}" for i in range(8)]),
        "true_area": TRUE,
        "n_pixels": np.full(8, 1024),
        "gates": gates,
        "skipped": {},
        "chosen_on": "oof",
        "fold_model": [],
    }
    return compare_counts(g, resamples=resamples, seed=seed)


def test_interval_is_the_95_percent_percentile_interval() -> None:
    # 201 values 0..200: the 2.5th percentile is at position 0.025 * 200 = 5, the 97.5th at 195
    assert interval(np.arange(201.0)) == pytest.approx((5.0, 195.0), abs=1e-9)  # 90 %: (10, 190)
    assert interval(np.append(np.arange(41.0), np.nan)) == pytest.approx((1.0, 39.0), abs=1e-9)  # NaN ignored
    assert CONFIDENCE == 0.95 and _comparison()["confidence"] == 0.95


def test_metric_intervals_use_one_shared_seeded_index_matrix() -> None:
    resamples, seed = 500, 3
    idx = np.random.default_rng(seed).integers(0, 8, size=(resamples, 8))  # the documented draw
    assert np.array_equal(bootstrap_indices(8, resamples, seed), idx)
    cmp = _comparison(resamples, seed)
    for key, dice in (("threshold_area", REF_DICE), ("triplet", BETTER_DICE)):
        m = cmp["gates"][key]["metrics"]["mean_dice"]
        lo, hi = np.percentile(dice[idx].mean(axis=1), [2.5, 97.5])
        assert m["value"] == pytest.approx(dice.mean(), abs=1e-12)
        assert (m["lo"], m["hi"]) == pytest.approx((lo, hi), abs=1e-12)


def test_paired_difference_is_paired_and_signed_gate_minus_reference() -> None:
    resamples, seed = 500, 3
    cmp = _comparison(resamples, seed)
    same = cmp["gates"]["classifier"]["diff_vs_reference"]
    assert (same["value"], same["lo"], same["hi"]) == (0.0, 0.0, 0.0)  # itself: 0 in every resample
    idx = np.random.default_rng(seed).integers(0, 8, size=(resamples, 8))
    d = BETTER_DICE[idx].mean(axis=1) - REF_DICE[idx].mean(axis=1)
    lo, hi = np.percentile(d, [2.5, 97.5])
    diff = cmp["gates"]["triplet"]["diff_vs_reference"]
    assert diff["value"] == pytest.approx(0.895833333333 - 0.6, abs=1e-9) and diff["value"] > 0
    assert (diff["lo"], diff["hi"]) == pytest.approx((lo, hi), abs=1e-12)
    assert diff["lo"] >= 0 and diff["share_above_zero"] == pytest.approx(np.mean(d > 0))
    assert cmp["best"] == "triplet" and cmp["winner"]["gate"] == "triplet" and cmp["winner"]["value"] > 0
    block = gates_block(cmp)
    assert block["triplet"]["delta_vs_threshold_area"] == pytest.approx([0.2958333333333, lo, hi], abs=1e-9)
    assert block["classifier"]["delta_vs_threshold_area"] == [0.0, 0.0, 0.0]


# ----------------------------------------------------------------------------- sweep choices
def _tables(fine, area, triplet) -> dict:
    return {
        "thresholds_fine": pd.DataFrame(fine, columns=["threshold", "mean_dice"]),
        "table4_threshold_area": pd.DataFrame(area, columns=["threshold", "min_area", "mean_dice"]),
        "triplet": pd.DataFrame(triplet, columns=["top", "min_area", "bottom", "mean_dice"]),
    }


TRIPLET = [
    (0.6, 100, 0.3, 0.9),
    (0.5, 100, 0.4, 0.9),
    (0.7, 100, 0.6, 0.9),
    (0.4, 200, 0.4, 0.9),
    (0.8, 0, 0.1, 0.7),
]


def test_best_rule_takes_the_best_and_ties_go_to_the_simpler_rule() -> None:
    def scored(a, b, c):
        return {
            "threshold": {"mean_dice": a},
            "threshold_area": {"mean_dice": b},
            "triplet": {"mean_dice": c},
        }

    assert best_rule(scored(0.70, 0.80, 0.75)) == "threshold_area"
    assert best_rule(scored(0.70, 0.60, 0.75)) == "triplet"
    assert best_rule(scored(0.80, 0.60, 0.75)) == "threshold"
    assert best_rule(scored(0.8, 0.8, 0.8)) == "threshold"
    assert best_rule(scored(0.8 - 5e-13, 0.8, 0.8)) == "threshold"  # within TOL = 1e-12: tied
    assert best_rule(scored(0.8 - 1e-9, 0.8, 0.7)) == "threshold_area"  # beyond TOL: not tied


def test_choose_rules_takes_each_rules_best_point_with_the_documented_tie_breaks() -> None:
    fine = [(0.3, 0.6), (0.4, 0.8), (0.5, 0.8), (0.6, 0.7)]
    # tied at 0.85: (0.3, 200), (0.4, 100), (0.5, 100), (0.6, 300) -> smaller min_area 100, then lower 0.4
    area = [
        (0.3, 0, 0.70),
        (0.3, 200, 0.85),
        (0.4, 100, 0.85),
        (0.5, 100, 0.85),
        (0.5, 0, 0.80),
        (0.6, 300, 0.85),
        (0.2, 0, 0.5),
    ]
    chosen = choose_rules(_tables(fine, area, TRIPLET), default_threshold=0.5)
    assert chosen["default"] == {"rule": "threshold", "threshold": 0.5}
    assert chosen["threshold"] == {"rule": "threshold", "threshold": 0.4}
    assert chosen["threshold_area"] == {"rule": "threshold_area", "threshold": 0.4, "min_area": 100}
    # triplet ties at 0.9: the smaller gap first (0: 0.4/0.4, a threshold + area rule), then min_area, top
    assert chosen["triplet"] == {"rule": "triplet", "top": 0.4, "min_area": 200, "bottom": 0.4}
    no_zero_gap = choose_rules(_tables(fine, area, TRIPLET[:3] + TRIPLET[4:]), default_threshold=0.5)
    # without it: gap 0.1 (0.5/0.4 and 0.7/0.6, both min_area 100), then the lower top
    assert no_zero_gap["triplet"] == {"rule": "triplet", "top": 0.5, "min_area": 100, "bottom": 0.4}


def test_area_grid_ties_are_within_tol_only() -> None:
    fine = [(0.3, 0.6), (0.4, 0.8)]
    area = [(0.4, 100, 0.85), (0.9, 0, 0.85 - 5e-13), (0.2, 0, 0.85 - 1e-9), (0.1, 0, 0.84)]
    chosen = choose_rules(_tables(fine, area, TRIPLET), default_threshold=0.5)
    # 0.85 - 5e-13 ties 0.85 (TOL 1e-12) and has the smaller min_area; 0.85 - 1e-9 does not tie
    assert chosen["threshold_area"] == {"rule": "threshold_area", "threshold": 0.9, "min_area": 0}


# ----------------------------------------------------------------------------- LR schedule
def _lrs(phase: PhaseConfig, steps_per_epoch: int, steps: int) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=99.0)
    scheduler = make_scheduler(phase, optimizer, steps_per_epoch)
    trace = [optimizer.param_groups[0]["lr"]]
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
        trace.append(optimizer.param_groups[0]["lr"])
    return trace


def test_one_lr_triangle_per_phase_by_default() -> None:
    # 3 epochs of 4 steps: one 12-step triangle, 6 up (+0.5 a step from 1 to 4) and 6 down
    phase = PhaseConfig(epochs=3, base_lr=1.0, max_lr=4.0, schedule="cyclic")
    expected = [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 3.5, 3.0, 2.5, 2.0, 1.5, 1.0]
    trace = _lrs(phase, steps_per_epoch=4, steps=12)
    assert trace == pytest.approx(expected, abs=1e-12)
    assert [trace[4], trace[8], trace[12]] == pytest.approx([3.0, 3.0, 1.0])  # epoch ends: not back to 1
    # cycle_epochs 1: a triangle per epoch of 4 steps (2 up by 1.5, 2 down)
    per_epoch = PhaseConfig(epochs=3, base_lr=1.0, max_lr=4.0, schedule="cyclic", cycle_epochs=1)
    assert _lrs(per_epoch, 4, 8) == pytest.approx([1.0, 2.5, 4.0, 2.5, 1.0, 2.5, 4.0, 2.5, 1.0], abs=1e-12)


# ----------------------------------------------------------------------------- ImageIds
def test_image_ids_are_stripped_of_spaces(tmp_path) -> None:
    assert check_image_id(" 1.2.3 ") == "1.2.3"
    csv_path = tmp_path / "train-rle.csv"
    csv_path.write_text("ImageId,EncodedPixels\n 1.2.3 , -1\n\t1.2.4 ,1 5\n", encoding="utf-8")
    rows = read_rle_csv(csv_path)
    assert rows["image_id"].tolist() == ["1.2.3", "1.2.4"] and rows["rle"].tolist() == ["-1", "1 5"]
    index = tmp_path / "stage_1_train_images.csv"
    index.write_text("new_filename,ImageId,has_pneumo\n0_train_0_.png,\t 1.2.5 ,0\n", encoding="utf-8")
    assert read_png_index(index)["image_id"].tolist() == ["1.2.5"]


def test_padded_csv_ids_match_their_image_files(tmp_path) -> None:
    # images/1.2.3.png and images/1.2.4.png; the CSV names them with surrounding spaces
    data = siim_layout(tmp_path / "data", ["1.2.3", "1.2.4"], [(" 1.2.3 ", "100 50"), ("1.2.4  ", "-1")])
    out = tmp_path / "out"
    assert_ok(prepare(data, out))
    assert sorted(manifest_ids(out)) == ["1.2.3", "1.2.4"]
    manifest = pd.read_csv(out / "manifest.csv", dtype={"image_id": str}).set_index("image_id")
    assert manifest.loc["1.2.3", "has_pneumothorax"] == 1 and manifest.loc["1.2.4", "has_pneumothorax"] == 0
    assert not (out / "rejected.csv").exists() or pd.read_csv(out / "rejected.csv").empty
