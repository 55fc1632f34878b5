"""Bad and hostile inputs through the public commands: one line, exit 2, nothing outside --out.

Each case runs a command (``python -m dualstage.segment prepare``, ``python -m
dualstage.data.phantom``, ``python -m dualstage run``) on tiny inputs and asserts the exit
code, that stderr is one ``error: ...`` line without a traceback naming the file / row /
key, the ``rejected.csv`` rows where bad items are skipped, and that nothing changed
outside the output folder (a snapshot of the case folder before and after).

The helpers at the top build inputs; add a case by building its input with them and
calling :func:`run` plus :func:`assert_error` / :func:`assert_confined`.
"""

from __future__ import annotations

import csv
import gzip
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dualstage.data.ids import show_id

ROOT = Path(__file__).resolve().parents[1]
ENV = {
    **{k: v for k, v in os.environ.items() if k != "DUALSTAGE_DEBUG"},
    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    "HF_HUB_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
}
SIZE = 64


# ----------------------------------------------------------------------------- running
def run(module: str, *args: object, timeout: float = 60) -> subprocess.CompletedProcess:
    """``python -m module args...`` with this checkout importable; output captured as text."""
    cmd = [sys.executable, "-m", module, *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def prepare_args(data: Path, out: Path, *extra: object) -> list[object]:
    """``segment prepare`` arguments for a tiny run (later options override earlier ones)."""
    return [
        "prepare",
        "--data",
        data,
        "--out",
        out,
        "--sizes",
        SIZE,
        "--folds",
        2,
        "--workers",
        1,
        "--no-progress",
        *extra,
    ]


def prepare(data: Path, out: Path, *extra: object, timeout: float = 60) -> subprocess.CompletedProcess:
    return run("dualstage.segment", *prepare_args(data, out, *extra), timeout=timeout)


def assert_error(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """Exit ``code``, stderr exactly one ``error:`` line, no traceback, each needle in it."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- snapshots
def snapshot(root: Path) -> dict[str, tuple]:
    """Every path below ``root`` (links not followed): its mode, and a file's size and mtime."""
    found = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            path = os.path.join(folder, name)
            st = os.lstat(path)
            is_dir = stat.S_ISDIR(st.st_mode)  # a folder's own size and time change with its entries
            found[os.path.relpath(path, root)] = (
                (st.st_mode,) if is_dir else (st.st_mode, st.st_size, st.st_mtime_ns)
            )
    return found


def assert_confined(root: Path, before: dict, out: Path | None) -> None:
    """Nothing below ``root`` was added, changed or removed except inside ``out``."""
    after = snapshot(root)
    inside = os.path.relpath(out, root) if out is not None else None

    def outside(rel: str) -> bool:
        return inside is None or not (rel == inside or rel.startswith(inside + os.sep))

    changed = {p for p in before.keys() | after.keys() if outside(p) and before.get(p) != after.get(p)}
    assert not changed, sorted(changed)[:10]


# ----------------------------------------------------------------------------- inputs
def gray(seed: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path


def png_layout(root: Path, ids: list[str], positive: frozenset[int] = frozenset()) -> Path:
    """Kaggle PNG conversion: png_images/, png_masks/, stage_1_train_images.csv (one row per id)."""
    rows = []
    for i, image_id in enumerate(ids):
        name = f"{i}_train_{int(i in positive)}_.png"
        save_png(root / "png_images" / name, gray(i))
        mask = np.zeros((SIZE, SIZE), np.uint8)
        if i in positive:
            mask[10:20, 10:30] = 255
        save_png(root / "png_masks" / name, mask)
        rows.append((name, image_id, int(i in positive)))
    with open(root / "stage_1_train_images.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["new_filename", "ImageId", "has_pneumo"])
        writer.writerows(rows)
    return root


def siim_layout(
    root: Path, stems: list[str], rows: list[tuple[str, str]], csv_name: str = "train-rle.csv"
) -> Path:
    """siim layout with PNG pixels: images/<stem>.png plus an RLE CSV of ``rows``."""
    for i, stem in enumerate(stems):
        save_png(root / "images" / f"{stem}.png", gray(100 + i))
    with open(root / csv_name, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ImageId", "EncodedPixels"])
        writer.writerows(rows)
    return root


def good_siim(root: Path, n: int = 3) -> Path:
    ids = [f"img{i}" for i in range(n)]
    return siim_layout(root, ids, [(i, "-1" if k % 2 else "100 50") for k, i in enumerate(ids)])


def rejected_rows(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "rejected.csv", dtype=str, keep_default_na=False)


def manifest_ids(out: Path) -> list[str]:
    return pd.read_csv(out / "manifest.csv", dtype={"image_id": str})["image_id"].tolist()


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
    assert_ok(prepare(data, out, timeout=40))
    assert manifest_ids(out) == ["img0", "img1", "img2"] and rejected_rows(out).empty


# ----------------------------------------------------------------------------- output folder problems
def test_out_under_a_regular_file(tmp_path: Path) -> None:
    data = good_siim(tmp_path / "data")
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    assert_error(prepare(data, tmp_path / "afile" / "out"), "afile", "not a folder")
    assert_confined(tmp_path, before, None)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_out(tmp_path: Path) -> None:
    data = good_siim(tmp_path / "data")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_error(prepare(data, locked / "out"), "locked", "permission denied")
    finally:
        locked.chmod(0o755)


# ----------------------------------------------------------------------------- option ranges
# The message names the option or its config key (data.sizes, data.n_folds, ...) and the value.
@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--sizes", "0"], r"sizes\b.*\b0\b"),
        (["--sizes", "64", "100000"], r"sizes\b.*\b100000\b"),
        (["--folds", "0"], r"folds\b.*\b0\b"),
        (["--folds", "1"], r"folds\b.*\b1\b"),
        (["--workers", "-1"], r"workers\b.*-1\b"),
        (["--test-fraction", "0"], r"test.fraction\b.*\b0(\.0)?\b"),
        (["--val-fraction", "1.5"], r"val.fraction\b.*\b1\.5\b"),
        (["--test-fraction", "0.6", "--val-fraction", "0.5"], r"fraction\b.*\b0\.[56]\b"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_option_out_of_range(tmp_path: Path, extra: list[str], pattern: str) -> None:
    data = good_siim(tmp_path / "data")
    before = snapshot(tmp_path)
    line = assert_error(prepare(data, tmp_path / "out", *extra))
    assert re.search(pattern, line), line
    assert_confined(tmp_path, before, None)


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    data = good_siim(tmp_path / "data")
    for argv in (["--debug", *prepare_args(data, tmp_path / "out", "--sizes", "0")],
                 prepare_args(data, tmp_path / "out", "--sizes", "0", "--debug")):  # fmt: skip
        proc = run("dualstage.segment", *argv)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 1 and "Traceback" in proc.stderr and "sizes" in last, proc.stderr


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


# ----------------------------------------------------------------------------- other commands
def test_yaml_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "exp.yaml"
    bad.write_text("data:\n  sizes: [64\n  n_folds: 3\n")
    before = snapshot(tmp_path)
    assert_error(run("dualstage", "run", bad), f"{bad}: line 3", "YAML syntax error")
    assert_confined(tmp_path, before, None)


def test_phantom_bad_count(tmp_path: Path) -> None:
    assert_error(run("dualstage.data.phantom", "--out", tmp_path / "ph", "--n", "0"), "n >= 1", "n=0")
    assert not (tmp_path / "ph").exists()


def test_phantom_out_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    proc = run("dualstage.data.phantom", "--out", tmp_path / "afile" / "ph", "--n", "2", "--size", "64")
    assert_error(proc, "afile", "not a folder")


# ----------------------------------------------------------------------------- interrupts
def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name)
def test_interrupted_prepare_stops_its_workers(tmp_path: Path, sig: signal.Signals) -> None:
    ids = [f"w{i:02d}" for i in range(40)]
    data = siim_layout(tmp_path / "data", ids, [(i, "-1") for i in ids])
    cmd = [
        sys.executable,
        "-m",
        "dualstage.segment",
        *map(str, prepare_args(data, tmp_path / "out", "--workers", 2)),
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    workers: set[int] = set()
    deadline = time.monotonic() + 30
    while len(workers) < 2 and proc.poll() is None and time.monotonic() < deadline:
        workers |= _children(proc.pid)
        time.sleep(0.01)
    assert workers, "prepare finished before its workers were seen"
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=30)
    if sig != signal.SIGKILL:
        assert (
            proc.returncode == 130
            and stderr.strip() == f"error: interrupted{' (SIGTERM)' if sig == signal.SIGTERM else ''}"
        ), stderr
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers)
