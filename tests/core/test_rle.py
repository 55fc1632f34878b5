"""The challenge codec: hand-computed cases, errors, round trips, and the real files."""

from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from dualstage.core import rle
from dualstage.data.annotations import read_rle_csv


def test_column_major_hand_case():
    # 3x3, middle column set: column-major pixels 3, 4, 5 -> offset 3, length 3
    m = np.zeros((3, 3), bool)
    m[:, 1] = True
    assert rle.encode(m) == "3 3"
    np.testing.assert_array_equal(rle.decode("3 3", 3, 3), m)


def test_offsets_are_relative_to_previous_run_end():
    # 4x2 image (H=4, W=2): pixels 1 and 5,6 -> "1 1 3 2"
    m = np.zeros((4, 2), bool)
    m[1, 0] = True
    m[1, 1] = m[2, 1] = True
    assert rle.encode(m) == "1 1 3 2"
    np.testing.assert_array_equal(rle.decode("1 1 3 2", 4, 2), m)


def test_run_to_last_pixel_and_full_mask():
    m = np.zeros((2, 2), bool)
    m[1, 1] = True  # last pixel in column order
    assert rle.encode(m) == "3 1"
    assert rle.encode(np.ones((2, 3), bool)) == "0 6"
    np.testing.assert_array_equal(rle.decode("0 6", 2, 3), np.ones((2, 3), bool))


@pytest.mark.parametrize("empty", ["-1", " -1", "  -1  ", ""])
def test_empty_forms(empty):
    assert not rle.decode(empty, 4, 4).any()
    assert rle.encode(np.zeros((4, 4), np.uint8)) == "-1"


def test_overlapping_rows_are_merged():
    a = rle.decode(["0 3", "2 3"], 3, 3)  # pixels 0-2 and 2-4 overlap at 2
    assert rle.area(a) == 5
    assert rle.encode(a) == "0 5"


def test_non_square_decode_shape_and_transpose():
    m = np.zeros((2, 5), bool)
    m[0, 4] = True  # column 4, row 0 -> pixel index 8
    assert rle.encode(m) == "8 1"
    out = rle.decode("8 1", 2, 5)
    assert out.shape == (2, 5) and out[0, 4]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "odd number"),
        ("1 x", "non-integer"),
        ("1 -2", "negative"),
        ("5 5", "past the image"),
        ("1 0", "length 0"),
    ],
)
def test_malformed_strings_raise(text, message):
    with pytest.raises(ValueError, match=message):
        rle.decode(text, 3, 3)


def test_random_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(1, 40, size=2)
        m = rng.random((h, w)) < rng.random()
        np.testing.assert_array_equal(rle.decode(rle.encode(m), h, w), m)


def test_sample_rows_match_jpeg_masks_and_reencode(siim):
    table = read_rle_csv(siim / "train-rle-sample.csv")
    assert len(table) == 10 and table["row"].tolist() == list(range(1, 11))
    for image_id, group in table.groupby("image_id"):
        mask = rle.decode(group["rle"].tolist())
        jpeg = np.asarray(Image.open(siim / "sample_masks" / f"{image_id}.jpg").convert("L")) > 127
        np.testing.assert_array_equal(mask, jpeg, err_msg=image_id)
        assert rle.encode(mask) == group["rle"].iloc[0]


def test_full_stage2_table_counts_and_speed(siim):
    table = read_rle_csv(siim / "stage_2_train.csv.gz")
    assert len(table) == 12954
    groups: dict[str, list[str]] = {}
    for image_id, text in zip(table["image_id"].tolist(), table["rle"].tolist(), strict=True):
        groups.setdefault(image_id, []).append(text)
    start = time.perf_counter()
    areas = {k: rle.area(rle.decode(v)) for k, v in groups.items()}
    seconds = time.perf_counter() - start
    positive = [a for a in areas.values() if a > 0]
    assert len(areas) == 12047 and len(positive) == 2669
    assert min(positive) == 55 and max(positive) == 161421
    assert seconds < 6.0, f"decoding the full table took {seconds:.1f}s (budget 3 s on an idle machine)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # 10**20 - 1 does not fit int64 (max 9223372036854775807): was OverflowError
        ("99999999999999999999 5", r"value 99999999999999999999 is out of range \(the image has 9 pixels\)"),
        ("-99999999999999999999 5", "out of range"),
        # int64 max + 1 wraps negative in the running sum and passed the end check: was IndexError
        ("9223372036854775807 1", r"RLE value 9223372036854775807 is larger than the image's 9 pixels"),
        # each half of 2**63: their sum wraps to -2**63
        ("4611686018427387904 1 4611686018427387904 1", "4611686018427387904 is larger than"),
        ("10 1", "10 is larger than the image's 9 pixels"),
        ("9 1", "run ends at pixel 10, past the image's 9 pixels"),
    ],
)
def test_huge_integers_are_a_value_error(text, message):
    with pytest.raises(ValueError, match=message):
        rle.decode(text, 3, 3)


def test_values_up_to_the_image_size_still_decode():
    # 3x3: offset 8 + length 1 is the last pixel (row 2, column 2); "0 9" is the full image
    assert rle.decode("8 1", 3, 3)[2, 2] and rle.decode("8 1", 3, 3).sum() == 1
    assert rle.decode("0 9", 3, 3).all()
