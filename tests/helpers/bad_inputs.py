"""Helpers of the bad-input suites (``test_bad_inputs*.py``): run the public commands,
check their one-line errors, snapshot a folder, and build tiny inputs.

A case: build its input with :func:`good_siim` / :func:`siim_layout` / :func:`png_layout`,
take a :func:`snapshot` of its folder, run the command with :func:`run` (or
:func:`prepare`), then :func:`assert_error` (exit 2, one ``error:`` line naming the
file / row / key) or :func:`assert_ok`, and :func:`assert_confined` (nothing changed
outside the output folder).
"""

from __future__ import annotations

import csv
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from helpers.commands import call

ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **{k: v for k, v in os.environ.items() if k != "DUALSTAGE_DEBUG"},
    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    "HF_HUB_OFFLINE": "1",
    "NO_ALBUMENTATIONS_UPDATE": "1",
}
SIZE = 64


# ----------------------------------------------------------------------------- running
def run(
    module: str, *args: object, timeout: float = 60, process: bool = False
) -> subprocess.CompletedProcess:
    """``python -m module args...``, output captured as text: in this process through the command's
    ``main(argv)`` (:func:`helpers.commands.call`; no interpreter start), or with ``process=True``
    as a real process (``timeout`` seconds). Either way without ``DUALSTAGE_DEBUG`` (as ``ENV``)."""
    if process:
        cmd = [sys.executable, "-m", module, *map(str, args)]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    debug = os.environ.pop("DUALSTAGE_DEBUG", None)
    try:
        return call(module, *args)
    finally:
        if debug is not None:
            os.environ["DUALSTAGE_DEBUG"] = debug


def prepare_args(data: Path, out: Path, *extra: object) -> list[object]:
    """``segment prepare`` arguments for a tiny run (later options override earlier ones)."""
    tiny = ["--sizes", SIZE, "--folds", 2, "--workers", 1, "--no-progress"]
    return ["prepare", "--data", data, "--out", out, *tiny, *extra]


def prepare(data: Path, out: Path, *extra: object, process: bool = False) -> subprocess.CompletedProcess:
    """``python -m dualstage.segment prepare`` on a tiny run (in this process unless ``process``)."""
    return run("dualstage.segment", *prepare_args(data, out, *extra), process=process)


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


# ----------------------------------------------------------------------------- hostile images
def _dicom(path: Path, rows: int, cols: int, syntax: str, pixel_data: bytes, encapsulated: bool) -> Path:
    """A Secondary Capture DICOM whose header claims ``rows`` x ``cols`` 8-bit pixels."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = (
        SecondaryCaptureImageStorage,
        generate_uid(),
    )
    meta.TransferSyntaxUID = UID(syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "CR", rows, cols, 1
    ds.PhotometricInterpretation, ds.BitsAllocated, ds.BitsStored, ds.HighBit = "MONOCHROME2", 8, 8, 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([pixel_data]) if encapsulated else pixel_data
    ds["PixelData"].VR = "OB"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _jpeg(size: tuple[int, int]) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("L", (size[1], size[0]), 0).save(buf, format="JPEG", quality=5)
    return buf.getvalue()


def png_stream(path: Path, height: int, width: int, rows_written: int | None = None) -> Path:
    """A zero-filled 8-bit PNG declaring ``height`` x ``width``, compressed row by row (never held in
    memory); ``rows_written`` < height: an IDAT cut short (a decompression bomb's shape)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z, row, idat = zlib.compressobj(9), bytes(width + 1), []
    for _ in range(height if rows_written is None else rows_written):
        idat.append(z.compress(row))
    idat.append(z.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(idat)) + chunk(b"IEND", b"")
    )
    return path


HOSTILE_SIZES = {  # name -> (height, width) its header declares
    "claims_60000.dcm": (60000, 60000),
    "jpeg_claims_50000.dcm": (50000, 50000),
    "zeros_12000.png": (12000, 12000),
    "bomb_65535.png": (65535, 65535),
}


def hostile_images(folder: Path, scale: float = 1.0) -> dict[str, tuple[int, int]]:
    """The issue's four hostile files in ``folder``: a 1.6 KB uncompressed DICOM claiming 60000 x 60000,
    a JPEG Baseline DICOM claiming 50000 x 50000, a zero-filled 12000 x 12000 PNG and a PNG bomb (IHDR
    65535 x 65535, a few rows of data). ``scale`` < 1 shrinks every declared size (tests with a small
    --max-pixels). Returns {file name: declared (height, width)}."""
    sizes = {k: (max(1, int(h * scale)), max(1, int(w * scale))) for k, (h, w) in HOSTILE_SIZES.items()}
    _dicom(folder / "claims_60000.dcm", *sizes["claims_60000.dcm"], "1.2.840.10008.1.2.1", bytes(1024), False)
    _dicom(
        folder / "jpeg_claims_50000.dcm",
        *sizes["jpeg_claims_50000.dcm"],
        "1.2.840.10008.1.2.4.50",
        _jpeg((64, 64)),
        True,
    )
    png_stream(folder / "zeros_12000.png", *sizes["zeros_12000.png"])
    png_stream(folder / "bomb_65535.png", *sizes["bomb_65535.png"], rows_written=4)
    return sizes


def lying_jpeg_dicom(path: Path, header: tuple[int, int], stream: tuple[int, int]) -> Path:
    """A JPEG Baseline DICOM whose Rows x Columns say ``header`` but whose JPEG stream is ``stream``."""
    return _dicom(path, *header, "1.2.840.10008.1.2.4.50", _jpeg(stream), True)


def j2k_claiming(path: Path, header: tuple[int, int], stream: tuple[int, int]) -> Path:
    """A JPEG 2000 DICOM whose frame is a SIZ marker declaring ``stream`` (then junk and EOC)."""
    import struct

    siz = b"\xff\x4f\xff\x51" + struct.pack(">HH", 41, 0) + struct.pack(">IIII", stream[1], stream[0], 0, 0)
    frame = siz + struct.pack(">IIIIH", 64, 64, 0, 0, 1) + b"\x07\x01\x01" + bytes(32) + b"\xff\xd9"
    return _dicom(path, *header, "1.2.840.10008.1.2.4.90", frame, True)
