"""Issue 19, item 1: a small file that declares a huge image is a rejected row, before any allocation.

The four hostile kinds (a 1.6 KB uncompressed DICOM claiming 60000 x 60000, a JPEG Baseline DICOM
claiming 50000 x 50000, a zero-filled 12000 x 12000 PNG, a PNG bomb) beside two good images go
through the public commands (``segment predict --input``, ``segment prepare``): exit 0, one
``rejected.csv`` row each naming the file, its declared size and the limit, the good ones done.
Compressed payloads that decode to more than their header says are refused before decoding too.
Builders: ``tests/helpers/bad_inputs.py``.
"""

from __future__ import annotations

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import yaml

from dualstage.data import limits
from dualstage.data.images import image_shape, read_image_file, read_mask_file
from helpers.bad_inputs import (
    assert_ok,
    gray,
    hostile_images,
    j2k_claiming,
    lying_jpeg_dicom,
    png_stream,
    prepare,
    rejected_rows,
    run,
    save_png,
)
from helpers.commands import config, write_yaml

GOOD = {"good_png": 64, "good_dcm": 48}


def _good(folder: Path) -> None:
    """Two good images: a 64 px PNG and a 48 x 64 JPEG Lossless DICOM (made by the DICOM fixtures)."""
    from helpers.dicom_fixtures import write_fixtures

    save_png(folder / "good_png.png", gray(3))
    made = write_fixtures(folder / "_fx")[0]
    made.rename(folder / "good_dcm.dcm")
    for p in (folder / "_fx").iterdir():
        p.unlink()
    (folder / "_fx").rmdir()


def _check_rows(rows: pd.DataFrame, sizes: dict[str, tuple[int, int]], limit: int) -> None:
    """One row per hostile file, naming it, its declared size and the limit."""
    assert sorted(Path(p).name for p in rows["item"]) == sorted(sizes)
    for item, reason in zip(rows["item"], rows["reason"], strict=True):
        h, w = sizes[Path(item).name]
        assert reason.startswith(f"{item}: declares {h}x{w} pixels"), reason
        assert f"pixel limit of {limit:,}" in reason and "\n" not in reason


def test_predict_input_over_the_issues_hostile_folder(own_tiny_model: Path, tmp_path: Path) -> None:
    folder = tmp_path / "new"
    sizes = hostile_images(folder)
    _good(folder)
    args = (
        "predict",
        "--exp",
        own_tiny_model,
        "--input",
        folder,
        "--set",
        "hostile",
        "--workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
    )
    proc = run("dualstage.segment", *args)
    assert_ok(proc)
    out = own_tiny_model / "predictions" / "hostile"
    assert sorted(pd.read_csv(out / "index.csv")["image_id"]) == sorted(GOOD)
    rows = rejected_rows(out)
    assert set(rows["stage"]) == {"header"}
    _check_rows(rows, sizes, limits.DEFAULT_MAX_PIXELS)
    assert sorted(p.stem for p in (out / "maps").iterdir()) == sorted(GOOD)


@pytest.mark.parametrize("through", ["header", "decode"])
def test_predict_input_with_a_small_limit(tiny_model: Path, tmp_path: Path, through: str) -> None:
    """The same kinds at 1/100 of the size against --max-pixels 8000; ``decode``: the loader's own
    check (the header check let through, as when a file changes between the two reads)."""
    folder = tmp_path / "new"
    sizes = hostile_images(folder, scale=1 / 100)  # 120 x 120 ... 655 x 655: all over 8000 px
    _good(folder)
    args = (
        "predict",
        "--exp",
        tiny_model,
        "--input",
        folder,
        "--out",
        tmp_path / "out",
        "--workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
        "--max-pixels",
        8000,
    )
    if through == "decode":
        code = (
            "import sys; from dualstage.segment import predict as p; "
            "p.image_shape = lambda path, limit=None: (1, 1); "
            "from dualstage.segment.__main__ import main; sys.exit(main(sys.argv[1:]))"
        )
        proc = run_code(code, *args)
    else:
        proc = run("dualstage.segment", *args)
    assert_ok(proc)
    rows = rejected_rows(tmp_path / "out")
    assert set(rows["stage"]) == {through}
    _check_rows(rows, sizes, 8000)
    assert sorted(pd.read_csv(tmp_path / "out" / "index.csv")["image_id"]) == sorted(GOOD)


def run_code(code: str, *args: object):
    """``python -c code args...`` with this checkout importable (as :func:`helpers.bad_inputs.run`)."""
    import subprocess

    from helpers.bad_inputs import ENV

    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=180, env=ENV
    )


def _siim_folder(root: Path, scale: float) -> dict[str, tuple[int, int]]:
    """siim layout: images/ with the hostile and good files, train-rle.csv marking each empty."""
    sizes = hostile_images(root / "images", scale)
    _good(root / "images")
    ids = sorted(p.stem for p in (root / "images").iterdir())
    (root / "train-rle.csv").write_text("ImageId,EncodedPixels\n" + "".join(f"{i},-1\n" for i in ids))
    return sizes


@pytest.mark.parametrize(("scale", "limit"), [(1.0, None), (1 / 100, 8000)], ids=["issue-sizes", "small"])
def test_prepare_over_the_hostile_folder(tmp_path: Path, scale: float, limit: int | None) -> None:
    sizes = _siim_folder(tmp_path / "data", scale)
    extra = ["--max-pixels", limit] if limit else []
    proc = prepare(tmp_path / "data", tmp_path / "out", *extra)
    assert_ok(proc)
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv", dtype={"image_id": str})
    assert sorted(manifest["image_id"]) == sorted(GOOD)
    _check_rows(rejected_rows(tmp_path / "out"), sizes, limit or limits.DEFAULT_MAX_PIXELS)


def test_limit_in_the_experiment_config(tmp_path: Path) -> None:
    """data.max_pixels in the YAML is the limit of every command of the experiment."""
    values = config(tmp_path / "models", data__max_pixels=3500)
    values["data"]["source"] = str(tmp_path / "data")
    sizes = _siim_folder(tmp_path / "data", 1 / 100)
    path = write_yaml(tmp_path, values)
    proc = run("dualstage.segment", "prepare", "--exp", path, "--no-progress")
    assert_ok(proc)  # 64 x 64 = 4096 > 3500: the good PNG is over this limit too; the 48 x 64 DICOM is not
    rows = rejected_rows(tmp_path / "models" / "tiny" / "prepared")
    assert sorted(Path(p).name for p in rows["item"]) == sorted([*sizes, "good_png.png"])
    assert "pixel limit of 3,500" in rows["reason"].iloc[0]
    bad = yaml.safe_load(path.read_text())
    bad["data"]["max_pixels"] = 0
    path.write_text(yaml.safe_dump(bad))
    line = run("dualstage.segment", "prepare", "--exp", path, "--no-progress").stderr
    assert "data.max_pixels" in line and "Traceback" not in line


# ----------------------------------------------------------------------------- the readers themselves
def test_default_limit_admits_detectors_and_refuses_the_rest() -> None:
    for h, w in ((4300, 4300), (4096, 5600), (4800, 6000), (3000, 9000)):
        limits.check_pixels("x", h, w)
    for h, w in ((12000, 12000), (60000, 60000), (6000, 6000)):
        with pytest.raises(limits.ImageTooLarge, match=rf"x: declares {h}x{w} pixels"):
            limits.check_pixels("x", h, w)


def test_header_reads_never_decode(tmp_path: Path) -> None:
    sizes = hostile_images(tmp_path)
    for name, (h, w) in sizes.items():
        for reader in (image_shape, read_image_file):
            with pytest.raises(limits.ImageTooLarge, match=f"declares {h}x{w} pixels"):
                reader(tmp_path / name)
    assert image_shape(tmp_path / "zeros_12000.png", max_pixels=200_000_000) == (12000, 12000)


def test_compressed_stream_bigger_than_its_header(tmp_path: Path) -> None:
    """A JPEG frame of 600 x 500 in a DICOM saying 64 x 64, a JPEG 2000 SIZ claiming 40000 x 40000:
    refused from the stream's own header, before a decoder allocates."""
    jpeg = lying_jpeg_dicom(tmp_path / "jpeg.dcm", (64, 64), (600, 500))
    assert image_shape(jpeg) == (64, 64)  # the DICOM header alone is fine
    with pytest.raises(ValueError, match=r"the frame is 600x500 but Rows x Columns say 64x64"):
        read_image_file(jpeg)
    with pytest.raises(limits.ImageTooLarge, match=r"JPEG Baseline .* stream decodes to 600x500 pixels"):
        read_image_file(jpeg, max_pixels=100_000)
    j2k = j2k_claiming(tmp_path / "j2k.dcm", (64, 64), (40000, 40000))
    with pytest.raises(limits.ImageTooLarge, match=r"JPEG 2000 .* stream decodes to 40000x40000 pixels"):
        read_image_file(j2k)


def test_native_pixel_data_shorter_than_declared(tmp_path: Path) -> None:
    sizes = hostile_images(tmp_path, scale=1 / 1000)  # claims 60 x 60 = 3600 bytes, holds 1024
    with pytest.raises(ValueError, match=r"Pixel Data holds 1,024 bytes, less than expected: .* 3,600"):
        image_shape(tmp_path / "claims_60000.dcm")
    assert sizes["claims_60000.dcm"] == (60, 60)


def test_deflated_dataset_that_inflates_past_the_limit(tmp_path: Path) -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    from helpers.bad_inputs import _dicom

    path = _dicom(tmp_path / "dfl.dcm", 8, 8, DeflatedExplicitVRLittleEndian, bytes(64), False)
    assert read_image_file(path)[0].shape == (8, 8)
    ds = pydicom.dcmread(path)
    ds.PixelData = bytes(3 << 20)  # 3 MB of zeros: a few KB of deflate stream
    ds.save_as(path)
    assert path.stat().st_size < 20_000 and len(pydicom.dcmread(path).PixelData) == 3 << 20
    with pytest.raises(limits.ImageTooLarge, match="inflates past"):
        image_shape(path, max_pixels=1000)
    assert image_shape(path) == (8, 8)


def test_mask_declaring_another_size_is_not_decoded(tmp_path: Path) -> None:
    big = png_stream(tmp_path / "mask.png", 5000, 5000, rows_written=2)  # within the limit, not the image's
    with pytest.raises(ValueError, match=r"mask is 5000x5000, image is 64x64"):
        read_mask_file(big, (64, 64))
    bomb = png_stream(tmp_path / "bomb.png", 65535, 65535, rows_written=2)
    with pytest.raises(ValueError, match=rf"{bomb}: cannot read mask .*4294836225 pixels"):
        read_mask_file(bomb, (64, 64))


def test_codestream_parsers(tmp_path: Path) -> None:
    from PIL import Image

    from dualstage.data.codestreams import inflates_past, j2k_size, jpeg_size

    buf = io.BytesIO()
    Image.fromarray(np.zeros((30, 70), np.uint8)).save(buf, format="JPEG")
    assert jpeg_size(buf.getvalue()) == (30, 70)
    assert jpeg_size(b"not a jpeg") is None and j2k_size(b"\x00" * 50) is None
    siz = b"\xff\x4f\xff\x51" + struct.pack(">HHIIII", 41, 0, 110, 90, 10, 20)
    assert j2k_size(siz + bytes(20)) == (70, 100)
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = raw.compress(bytes(1 << 20)) + raw.flush()
    path = tmp_path / "probe"
    path.write_bytes(b"head" + stream)
    assert inflates_past(path, 4, 1000) and not inflates_past(path, 4, 2 << 20)
