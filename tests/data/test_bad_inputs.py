"""Bad and hostile dataset inputs through ``segment prepare``: rejected rows or one line, exit 2.

Each case runs the public command on tiny inputs and asserts the exit code, that stderr is
one ``error: ...`` line without a traceback naming the file / row / key, the
``rejected.csv`` rows where bad items are skipped (the batch goes on), and that nothing
changed outside the output folder. Helpers: ``tests/helpers/bad_inputs.py``; option, output
folder, other-command and interrupt cases: ``tests/commands/test_bad_inputs_commands.py``.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from dualstage.data.ids import show_id
from helpers.bad_inputs import (
    assert_confined,
    assert_error,
    assert_ok,
    good_siim,
    manifest_ids,
    png_layout,
    prepare,
    rejected_rows,
    run,
    siim_layout,
    snapshot,
)

# ----------------------------------------------------------------------------- hostile ids (PNG layout)
GOOD_IDS = ["1.2.3.1", "1.2.3.2", "1.2.3.3"]
HOSTILE_IDS = {
    "../../x": "'..'",
    "../../../../escaped": "'..'",
    "ABS": "is an absolute path",  # replaced by an absolute path inside the case folder
    "sub/dir/x": "contains a path separator",
    "back\\slash": "contains a path separator",
    "a\x01b": "contains a control character",
    "new\nline": "contains a control character",
    "y" * 300: "is 300 characters long",
    ".hidden": "starts with '.'",
    "C:drive": "starts with a drive letter",
    "": "is empty",
}


@pytest.fixture(scope="module")
def hostile_png(tmp_path_factory: pytest.TempPathFactory) -> dict:
    case = tmp_path_factory.mktemp("hostile_png")
    actual = {k: str(case / "abs_target" / "x") if k == "ABS" else k for k in HOSTILE_IDS}
    png_layout(case / "data", GOOD_IDS + list(actual.values()), positive=frozenset({1}))
    before = snapshot(case)
    out = case / "out"
    proc = prepare(case / "data", out)
    return {"case": case, "out": out, "proc": proc, "before": before, "actual": actual}


def test_hostile_png_ids_are_skipped_and_the_rest_prepared(hostile_png: dict) -> None:
    assert_ok(hostile_png["proc"])
    assert manifest_ids(hostile_png["out"]) == GOOD_IDS
    assert "rejected: see" in hostile_png["proc"].stderr
    assert_confined(hostile_png["case"], hostile_png["before"], hostile_png["out"])


@pytest.mark.parametrize("key", list(HOSTILE_IDS), ids=[show_id(k, 20) for k in HOSTILE_IDS])
def test_hostile_png_id_is_a_rejected_row(hostile_png: dict, key: str) -> None:
    rows = rejected_rows(hostile_png["out"])
    mine = rows[rows["item"] == show_id(hostile_png["actual"][key])]
    assert len(mine) == 1, rows.to_dict("records")
    reason = mine["reason"].iloc[0]
    assert reason.startswith("stage_1_train_images.csv line ") and HOSTILE_IDS[key] in reason


# ----------------------------------------------------------------------------- siim: RLE bounds, ids
SIIM_GOOD = ["img0", "img1", "img2"]
SIIM_REJECTED = {  # rejected.csv item -> reason fragment (items relative to the data folder)
    "images/huge1.png": "RLE value 99999999999999999999 is out of range",
    "images/huge2.png": "RLE value 9223372036854775807 is larger than the image's 4096 pixels",
    "images/.hidden.png": "file name is not a usable id: ImageId '.hidden' starts with '.'",
    "images/ctl\x01.png": "contains a control character",
    "'../evil'": "train-rle.csv line 8: ImageId '../evil' contains '..'",
    "'/abs/evil'": "train-rle.csv line 9: ImageId '/abs/evil' is an absolute path",
}


@pytest.fixture(scope="module")
def hostile_siim(tmp_path_factory: pytest.TempPathFactory) -> dict:
    case = tmp_path_factory.mktemp("hostile_siim")
    rows = [("img0", "100 50"), ("img1", "-1"), ("img2", "0 10 5 5")]
    rows += [("huge1", "99999999999999999999 5"), ("huge2", "9223372036854775807 1")]
    rows += [(".hidden", "-1"), ("../evil", "-1"), ("/abs/evil", "1 1")]
    siim_layout(case / "data", SIIM_GOOD + ["huge1", "huge2", ".hidden", "ctl\x01"], rows)
    before = snapshot(case)
    out = case / "out"
    return {"case": case, "out": out, "proc": prepare(case / "data", out), "before": before}


def test_siim_bad_rows_are_skipped_and_the_rest_prepared(hostile_siim: dict) -> None:
    assert_ok(hostile_siim["proc"])
    assert manifest_ids(hostile_siim["out"]) == SIIM_GOOD
    assert_confined(hostile_siim["case"], hostile_siim["before"], hostile_siim["out"])


@pytest.mark.parametrize("item", list(SIIM_REJECTED), ids=[show_id(k, 24) for k in SIIM_REJECTED])
def test_siim_bad_row_is_a_rejected_row(hostile_siim: dict, item: str) -> None:
    rows = rejected_rows(hostile_siim["out"])
    data = str(hostile_siim["case"] / "data") + os.sep
    items = [i[len(data) :] if i.startswith(data) else i for i in rows["item"]]
    assert item in items, rows.to_dict("records")
    assert SIIM_REJECTED[item] in rows["reason"].iloc[items.index(item)]


# ----------------------------------------------------------------------------- --out and --data overlap
def _phantom(data: Path, n: int = 8) -> None:
    proc = run("dualstage.data.phantom", "--out", data, "--n", n, "--size", 128, "--seed", 3, "--quiet")
    assert_ok(proc)
    (data / "dicom-images-train").rename(data / "train_dicom")  # images in a plain subfolder


def test_out_inside_data_is_left_out_of_the_scan_on_reruns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    _phantom(data)
    out = data / "prepared"
    sizes, stale = [], [out / ".manifest.csv.x1.tmp", out / "cache" / "64" / "images" / ".a.png.x2.tmp"]
    for run_no in range(3):
        if run_no == 2:
            for path in stale:
                path.write_bytes(b"half a file")  # what a killed write leaves
        before = snapshot(tmp_path)
        assert_ok(prepare(data, out))
        assert_confined(tmp_path, before, out)
        sizes.append(len(manifest_ids(out)))
        assert rejected_rows(out).empty
    assert sizes == [8, 8, 8]
    assert not any(p.exists() for p in stale)


def test_out_equal_to_data_is_refused(tmp_path: Path) -> None:
    data = good_siim(tmp_path / "data")
    before = snapshot(tmp_path)
    assert_error(prepare(data, data), f"--out {data} is the --data folder")
    assert_confined(tmp_path, before, None)


def test_symlink_loops_are_walked_once(tmp_path: Path) -> None:
    data = good_siim(tmp_path / "data")
    for name, target in (("loop1", "."), ("loop2", "."), ("images/up", "..")):
        os.symlink(target, data / name)
    out = tmp_path / "out"
    assert_ok(prepare(data, out, process=True))  # a loop walked forever would hang: a real process, timed
    assert manifest_ids(out) == ["img0", "img1", "img2"] and rejected_rows(out).empty


# ----------------------------------------------------------------------------- missing or corrupt inputs
def test_missing_data_folder(tmp_path: Path) -> None:
    assert_error(
        prepare(tmp_path / "nowhere", tmp_path / "out"), f"--data {tmp_path / 'nowhere'}: no such folder"
    )
    assert not (tmp_path / "out").exists()


def test_data_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("ImageId,EncodedPixels\n")
    assert_error(prepare(tmp_path / "data.csv", tmp_path / "out"), "data.csv: not a folder")


def test_png_layout_without_its_csv(tmp_path: Path) -> None:
    data = png_layout(tmp_path / "data", GOOD_IDS)
    (data / "stage_1_train_images.csv").unlink()
    line = assert_error(prepare(data, tmp_path / "out", "--layout", "png"), "stage_1_train_images.csv")
    assert "png layout needs" in line and "Errno" not in line


def test_non_utf8_rle_csv(tmp_path: Path) -> None:
    data = good_siim(tmp_path / "data")
    (data / "train-rle.csv").write_bytes("ImageId,EncodedPixels\nimg0,-1\ncaf\u00e9,-1\n".encode("latin-1"))
    assert_error(prepare(data, tmp_path / "out"), "train-rle.csv: not UTF-8 text")


def test_non_utf8_png_index(tmp_path: Path) -> None:
    data = png_layout(tmp_path / "data", GOOD_IDS)
    index = data / "stage_1_train_images.csv"
    index.write_bytes(index.read_bytes() + "x.png,caf\u00e9,0\n".encode("latin-1"))
    assert_error(prepare(data, tmp_path / "out"), "stage_1_train_images.csv: not UTF-8 text")


def test_truncated_csv_gz(tmp_path: Path) -> None:
    data = good_siim(tmp_path / "data")
    body = "ImageId,EncodedPixels\n" + "".join(f"img{i},-1\n" for i in range(3000))
    (data / "stage_2_train.csv.gz").write_bytes(gzip.compress(body.encode())[:-64])
    assert_error(prepare(data, tmp_path / "out"), "stage_2_train.csv.gz: truncated or corrupt gzip")


def test_empty_rle_csv(tmp_path: Path) -> None:
    data = good_siim(tmp_path / "data")
    (data / "train-rle.csv").write_bytes(b"")
    assert_error(
        prepare(data, tmp_path / "out", "--layout", "siim"), "train-rle.csv: no usable annotation rows"
    )


def test_rle_csv_with_a_wrong_field_count(tmp_path: Path) -> None:
    data = good_siim(tmp_path / "data")
    with open(data / "train-rle.csv", "a", encoding="utf-8") as fh:
        fh.write("img9,1 2,extra\n")
    assert_error(prepare(data, tmp_path / "out"), "train-rle.csv: line 5: expected 2 fields")


def test_annotations_is_a_folder(tmp_path: Path) -> None:
    data = good_siim(tmp_path / "data")
    assert_error(
        prepare(data, tmp_path / "out", "--annotations", data / "images"), "--annotations", "not a file"
    )


def test_bad_label_in_png_index(tmp_path: Path) -> None:
    data = png_layout(tmp_path / "data", GOOD_IDS)
    index = data / "stage_1_train_images.csv"
    index.write_text(index.read_text().replace(",1.2.3.2,0", ",1.2.3.2,maybe"))
    assert_error(
        prepare(data, tmp_path / "out"), "stage_1_train_images.csv: line 3: has_pneumo must be 0 or 1"
    )


def test_nothing_usable(tmp_path: Path) -> None:
    data = siim_layout(tmp_path / "data", ["a"], [("a", "1 99999")])
    line = assert_error(prepare(data, tmp_path / "out"), "no usable image", "rejected.csv")
    assert "bad RLE for a 64x64 image" in rejected_rows(tmp_path / "out")["reason"].iloc[0], line
