"""dualstage.core.metrics, pinned by hand-computed cases (challenge convention: empty vs empty = 1)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from dualstage.core.metrics import (
    dice_from_counts,
    f1_by_threshold,
    image_dice,
    image_iou,
    iou_from_counts,
    mask_counts,
    presence_report,
    roc_auc,
    roc_auc_resampled,
    summarize,
    summarize_counts,
)

# The worked 2x3 example: |A| = 3, |B| = 2, |A n B| = 1 (pixel (0, 0)).
#   Dice = 2*1 / (3 + 2) = 0.4; IoU = 1 / (3 + 2 - 1) = 0.25; wrong pixels = 2 + 1 = 3.
A = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
B = np.array([[1, 0, 0], [0, 0, 1]], dtype=bool)
EMPTY = np.zeros((2, 3), dtype=bool)
ONE = np.array([[0, 0, 0], [0, 1, 0]], dtype=bool)


def test_empty_mask_convention():
    # pred empty & true empty, pred empty & true non-empty, pred non-empty & true empty
    pred = np.stack([EMPTY, EMPTY, A])
    true = np.stack([EMPTY, B, EMPTY])
    np.testing.assert_array_equal(image_dice(pred, true), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(image_iou(pred, true), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(dice_from_counts([0, 0, 0], [0, 0, 5], [0, 7, 0]), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(iou_from_counts([0, 0, 0], [0, 0, 5], [0, 7, 0]), [1.0, 0.0, 0.0])


def test_worked_2x3_example():
    inter, pa, ta = mask_counts(A, B)  # a single (H, W) pair is N = 1
    assert (inter.tolist(), pa.tolist(), ta.tolist()) == ([1], [3], [2])
    assert image_dice(A, B).tolist() == pytest.approx([0.4])
    assert image_iou(A, B).tolist() == pytest.approx([0.25])
    assert image_dice(A, B).dtype == np.float64 and image_dice(A, B).shape == (1,)
    assert dice_from_counts(1, 3, 2) == pytest.approx(0.4)
    assert iou_from_counts(1, 3, 2) == pytest.approx(0.25)


def test_perfect_match_and_symmetry():
    assert image_dice(A, A).tolist() == [1.0] and image_iou(A, A).tolist() == [1.0]
    assert image_dice(B, A).tolist() == pytest.approx([0.4])


def test_uint8_255_and_01_are_foreground():
    ref = image_dice(np.stack([A, EMPTY]), np.stack([B, B]))
    p255, t255 = np.stack([A, EMPTY]).astype(np.uint8) * 255, np.stack([B, B]).astype(np.uint8) * 255
    np.testing.assert_array_equal(image_dice(p255, t255), ref)
    np.testing.assert_array_equal(image_dice(p255 // 255, t255.astype(np.int64) // 255), ref)
    assert mask_counts(p255, t255)[1].tolist() == [3, 0]


def test_from_counts_broadcasts_over_grid():
    rng = np.random.default_rng(0)
    T, A_, N = 4, 3, 5
    true_area = rng.integers(0, 6, size=N)  # (N,), shared by every grid cell; some zeros
    pred_area = rng.integers(0, 6, size=(T, A_, N))
    pred_area[0, 0] = 0  # an all-empty row
    inter = np.minimum(pred_area, true_area) * rng.integers(0, 2, size=(T, A_, N))
    dice = dice_from_counts(inter, pred_area, true_area)
    iou = iou_from_counts(inter, pred_area, true_area)
    assert dice.shape == iou.shape == (T, A_, N) and dice.dtype == np.float64
    for idx in np.ndindex(T, A_, N):
        i, p, t = int(inter[idx]), int(pred_area[idx]), int(true_area[idx[-1]])
        exp_d = 1.0 if p + t == 0 else 2 * i / (p + t)
        exp_j = 1.0 if p + t == 0 else i / (p + t - i)
        assert dice[idx] == pytest.approx(exp_d) and iou[idx] == pytest.approx(exp_j)
        assert dice_from_counts(i, p, t) == pytest.approx(exp_d)


def test_inconsistent_counts_raise():
    with pytest.raises(ValueError, match="inter"):
        dice_from_counts(3, 2, 5)
    with pytest.raises(ValueError, match="inter"):
        iou_from_counts(-1, 2, 5)


# Batch of 4 images of 2x3 = 6 pixels (24 in all):
#   0 positive, partial hit  pred A vs true B : inter 1, |P| 3, |T| 2 -> Dice 0.4, IoU 0.25, wrong 3
#   1 positive, missed       pred 0 vs true B : Dice 0, IoU 0, wrong 2
#   2 negative, false pos.   pred ONE vs 0    : Dice 0, IoU 0, wrong 1
#   3 negative, true neg.    0 vs 0           : Dice 1, IoU 1, wrong 0
# mean_dice = (0.4 + 0 + 0 + 1) / 4 = 0.35; pos_dice = 0.4 / 2 = 0.2; neg_dice = 1 / 2 = 0.5
# pos_accuracy = 1/2 (image 0 predicted non-empty, image 1 not); neg_accuracy = 1/2
# iou = (0.25 + 1) / 4 = 0.3125; iou_pos = 0.25 / 2 = 0.125; pixel_accuracy = (24 - 6) / 24 = 0.75
BATCH_PRED = np.stack([A, EMPTY, ONE, EMPTY])
BATCH_TRUE = np.stack([B, B, EMPTY, EMPTY])
BATCH_EXPECTED = {
    "n": 4,
    "n_pos": 2,
    "n_neg": 2,
    "mean_dice": 0.35,
    "pos_dice": 0.2,
    "neg_dice": 0.5,
    "pos_accuracy": 0.5,
    "neg_accuracy": 0.5,
    "iou": 0.3125,
    "iou_pos": 0.125,
    "pixel_accuracy": 0.75,
}


def test_summarize_hand_batch():
    got = summarize(BATCH_PRED, BATCH_TRUE)
    assert set(got) == set(BATCH_EXPECTED)
    for key, value in BATCH_EXPECTED.items():
        assert got[key] == pytest.approx(value), key
        assert isinstance(got[key], (int, float)), key  # JSON-friendly Python scalars
    assert got == pytest.approx(summarize_counts([1, 0, 0, 0], [3, 0, 1, 0], [2, 2, 0, 0], 6))


def test_summarize_counts_batched_grid_matches_rows():
    inter = np.array([[1, 0, 0, 0], [2, 0, 0, 0]])
    pred_area = np.array([[3, 0, 1, 0], [2, 1, 0, 0]])
    true_area = np.array([2, 2, 0, 0])
    grid = summarize_counts(inter, pred_area, true_area, 6)
    for row in range(2):
        one = summarize_counts(inter[row], pred_area[row], true_area, 6)
        for key, value in one.items():
            assert grid[key].shape == (2,) and grid[key][row] == pytest.approx(value), key
    assert grid["mean_dice"][1] == pytest.approx((1 + 0 + 1 + 1) / 4)


def test_summarize_no_positives_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = summarize(np.stack([EMPTY, ONE]), np.stack([EMPTY, EMPTY]))
    assert math.isnan(got["pos_dice"]) and math.isnan(got["iou_pos"]) and math.isnan(got["pos_accuracy"])
    assert got["neg_dice"] == 0.5 and got["n_pos"] == 0 and got["pixel_accuracy"] == pytest.approx(11 / 12)


def test_sequence_of_different_sizes():
    big_p = np.zeros((4, 5), dtype=np.uint8)
    big_t = np.zeros((4, 5), dtype=np.uint8)
    big_p[:2, :2] = 255  # 4 pixels
    big_t[1:3, :2] = 1  # 4 pixels, 2 shared -> Dice 4/8 = 0.5, IoU 2/6
    inter, pa, ta = mask_counts([A, big_p], [B, big_t])
    assert (inter.tolist(), pa.tolist(), ta.tolist()) == ([1, 2], [3, 4], [2, 4])
    assert image_dice([A, big_p], [B, big_t]).tolist() == pytest.approx([0.4, 0.5])
    assert image_iou([A, big_p], [B, big_t]).tolist() == pytest.approx([0.25, 1 / 3])
    # wrong pixels 3 + 4 = 7 of 6 + 20 = 26
    assert summarize([A, big_p], [B, big_t])["pixel_accuracy"] == pytest.approx(19 / 26)
    np.testing.assert_array_equal(
        image_dice(list(BATCH_PRED), list(BATCH_TRUE)), image_dice(BATCH_PRED, BATCH_TRUE)
    )


def test_shape_errors_name_shapes_and_index():
    with pytest.raises(ValueError, match=r"\(2, 2, 3\).*\(2, 3, 3\)"):
        mask_counts(np.zeros((2, 2, 3)), np.zeros((2, 3, 3)))
    with pytest.raises(ValueError, match=r"index 1.*\(4, 5\).*\(5, 4\)"):
        mask_counts([A, np.zeros((4, 5))], [B, np.zeros((5, 4))])
    with pytest.raises(ValueError, match="2 vs 1"):
        mask_counts([A, A], [B])
    with pytest.raises(ValueError, match="shape"):
        mask_counts(np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2, 2)))


# 10 images, true: 4 present / 6 absent; predictions give TP 3, FN 1, FP 2, TN 4.
#   present: precision 3/5 = 0.6, recall 3/4 = 0.75, f1 = 2*3 / (6 + 2 + 1) = 2/3, support 4
#   absent:  precision 4/5 = 0.8, recall 4/6 = 2/3,  f1 = 2*4 / (8 + 2 + 1) = 8/11, support 6
#   macro: precision 0.7, recall (0.75 + 2/3) / 2 = 17/24, f1 (2/3 + 8/11) / 2 = 23/33
#   specificity = 4/6, sensitivity = 0.75, accuracy = 7/10
PRES_TRUE = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
PRES_PRED = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0]


def test_presence_report_hand_confusion():
    rep = presence_report(np.array(PRES_PRED, dtype=bool), PRES_TRUE)
    assert rep["present"] == pytest.approx({"precision": 0.6, "recall": 0.75, "f1": 2 / 3, "support": 4})
    assert rep["absent"] == pytest.approx({"precision": 0.8, "recall": 2 / 3, "f1": 8 / 11, "support": 6})
    assert rep["macro"] == pytest.approx({"precision": 0.7, "recall": 17 / 24, "f1": 23 / 33})
    assert rep["specificity"] == pytest.approx(2 / 3) and rep["sensitivity"] == pytest.approx(0.75)
    assert rep["accuracy"] == pytest.approx(0.7)
    assert (rep["n"], rep["tn"], rep["fp"], rep["fn"], rep["tp"]) == (10, 4, 2, 1, 3)


def test_presence_report_never_predicts_present_gives_zeros():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rep = presence_report([0, 0, 0, 0], [1, 0, 0, 0])
    assert rep["present"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert rep["specificity"] == 1.0 and rep["accuracy"] == 0.75


def test_presence_report_rejects_probabilities_and_length_mismatch():
    with pytest.raises(ValueError, match="pred_present"):
        presence_report([0.2, 0.9], [0, 1])
    with pytest.raises(ValueError, match="lengths"):
        presence_report([0, 1, 1], [0, 1])


def test_roc_auc_hand_cases():
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1]) == 1.0
    # one swapped pair: positives {0.35, 0.8} vs negatives {0.1, 0.4}; 3 of 4 pairs ordered
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # a tie counts one half: 0.5 vs 0.5 -> (3 + 0.5) / 4
    assert roc_auc([0.2, 0.5, 0.5, 0.9], [False, False, True, True]) == pytest.approx(0.875)


def test_roc_auc_resampled_hand_cases_and_equals_roc_auc_per_resample():
    s, y = [0.2, 0.5, 0.5, 0.9], [0, 0, 1, 1]
    idx = np.array([[0, 1, 2, 3], [0, 0, 2, 2], [0, 1, 0, 1], [1, 2, 2, 3]])
    # 0.875 (a tie counts one half); 1.0; one class -> NaN; 0.5 vs {0.5, 0.5, 0.9}: (0.5 + 0.5 + 1) / 3
    got = roc_auc_resampled(s, y, idx)
    assert got[:2].tolist() == pytest.approx([0.875, 1.0]) and math.isnan(got[2])
    assert got[3] == pytest.approx(2 / 3)
    rng = np.random.default_rng(3)
    s = rng.integers(0, 20, 300) / 20  # many ties
    y = (rng.random(300) < s).astype(int)
    idx = rng.integers(0, 300, size=(200, 300))
    want = [roc_auc(s[i], y[i]) for i in idx]
    assert roc_auc_resampled(s, y, idx) == pytest.approx(want, abs=1e-12, nan_ok=True)


def test_roc_auc_single_class_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isnan(roc_auc([0.1, 0.9, 0.5], [1, 1, 1]))
        assert math.isnan(roc_auc([0.1, 0.9], [0, 0]))
        assert math.isnan(roc_auc([], []))


def test_f1_by_threshold_by_hand_and_bit_for_bit_sklearn():
    # y = [0, 0, 1, 1], p = [.1, .6, .55, .9]: t = .1 -> tp 2, 4 predicted: 4 / 6; t = .55 -> tp 2,
    # 3 predicted: 4 / 5; t = .6 -> tp 1, 2 predicted: 2 / 4; t = .95 -> nothing predicted: 0
    got = f1_by_threshold([0.1, 0.6, 0.55, 0.9], [0, 0, 1, 1], [0.1, 0.55, 0.6, 0.95])
    assert got.tolist() == [4 / 6, 4 / 5, 2 / 4, 0.0]
    assert f1_by_threshold([0.3, 0.7], [0, 0], [0.5, 0.9]).tolist() == [0.0, 0.0]  # no positive: 0
    rng = np.random.default_rng(5)
    grid = np.round(np.arange(1, 100) / 100, 2)
    for n in (7, 60, 301):
        p = np.round(rng.random(n), 2)  # scores on the grid itself: ties at every threshold
        y = (rng.random(n) < p).astype(int)
        want = [skm.f1_score(y, p >= t, zero_division=0) for t in grid]
        assert f1_by_threshold(p, y, grid).tolist() == want  # equal floats: the same argmax, ties too
