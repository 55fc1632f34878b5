"""prepare over each layout, with real files where they exist; rejections; strict; idempotency."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dualstage.core import rle
from dualstage.data.cache import load_cached, process_item
from dualstage.data.layouts import Item, detect_layout
from dualstage.data.prepare import PrepareError, prepare
from helpers.commands import call, cli

REAL = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819"


def _link(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(src, dst)


@pytest.fixture()
def siim_tree(tmp_path, siim):
    """A challenge-shaped DICOM tree built of links to the real files, plus bad items."""
    root = tmp_path / "data"
    _link(siim / "dicom" / f"{REAL}.dcm", root / "dicom-images-train" / "st" / "se" / f"{REAL}.dcm")
    _link(siim / "dicom" / "Fake_MONOHR1.dcm", root / "dicom-images-train" / "st2" / "se" / "mono1.dcm")
    broken = root / "dicom-images-train" / "st3" / "se" / "broken.dcm"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"garbage")
    csv = root / "train-rle.csv"
    lesion = rle.encode(np.pad(np.ones((100, 60), bool), ((500, 424), (300, 664))))
    csv.write_bytes(
        (
            "\ufeffImageId, EncodedPixels\r\n"
            f"{REAL}, -1\r\nmono1,{lesion}\r\nmono1,{lesion}\r\nbroken,-1\r\nmissing_image,-1\r\n"
        ).encode()
    )
    return root


def test_siim_dicom_tree(siim_tree, tmp_path):
    out = tmp_path / "prep"
    summary = prepare(siim_tree, out, sizes=(64,), progress=False, workers=1)
    assert summary["layout"] == "siim" and summary["images"] == 2
    manifest = pd.read_csv(out / "manifest.csv", dtype={"image_id": str})
    row = manifest.set_index("image_id").loc["mono1"]
    assert row["mask_area_px"] == 6000 and row["n_lesions"] == 2 and row["photometric"] == "MONOCHROME1"
    assert row["patient_id"] == "16d7f894-55d7-4d95-8957-d18987f0e981" and row["view_position"] == "PA"
    rejected = pd.read_csv(out / "rejected.csv")
    reasons = " | ".join(rejected["reason"])
    assert "annotation without image" in reasons and "cannot decode DICOM" in reasons
    assert len(rejected) == 2
    img_a, _ = load_cached(out, 64, REAL)
    img_b, mask_b = load_cached(out, 64, "mono1")
    assert img_a.shape == (64, 64) and np.abs(img_a.astype(int) + img_b.astype(int) - 255).max() <= 1
    assert mask_b.sum() > 0
    truth = pd.read_csv(out / "masks.csv").set_index("ImageId")["EncodedPixels"]
    assert rle.area(rle.decode(truth["mono1"], 1024, 1024)) == 6000 and truth[REAL] == "-1"
    for name in ("splits.csv", "stats.json", "prepare.json"):
        assert (out / name).exists()


def test_strict_stops_with_a_clear_message(siim_tree, tmp_path):
    with pytest.raises(PrepareError, match="annotation without image|cannot decode"):
        prepare(siim_tree, tmp_path / "p", sizes=(64,), strict=True, progress=False, workers=1)
    proc = call(
        "dualstage.segment",
        "prepare",
        "--data",
        siim_tree,
        "--out",
        tmp_path / "q",
        "--sizes",
        64,
        "--strict",
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_sample_jpegs_with_rle_csv_and_rerun_is_idempotent(siim, tmp_path):
    root = tmp_path / "data"
    _link(siim / "sample_images", root / "images")
    _link(siim / "train-rle-sample.csv", root / "train-rle-sample.csv")
    out = tmp_path / "prep"
    first = prepare(root, out, sizes=(128,), progress=False, workers=1)
    assert first["layout"] == "siim" and first["images"] == 10 and first["positive"] == 5
    manifest = pd.read_csv(out / "manifest.csv", dtype={"image_id": str})
    for image_id, area in manifest[["image_id", "mask_area_px"]].itertuples(index=False):
        jpeg = np.asarray(Image.open(siim / "sample_masks" / f"{image_id}.jpg").convert("L")) > 127
        assert area == jpeg.sum()
    before = (out / "manifest.csv").read_bytes()
    second = prepare(root, out, sizes=(128,), progress=False, workers=1)
    assert second["decoded_now"] == 0 and second["reused"] == 10
    assert (out / "manifest.csv").read_bytes() == before


def test_folders_layout_real_samples(siim, tmp_path):
    root = tmp_path / "data"
    _link(siim / "sample_images", root / "sample_images")
    _link(siim / "sample_masks", root / "sample_masks")
    assert detect_layout(root) == "folders"
    summary = prepare(root, tmp_path / "prep", sizes=(64,), progress=False, workers=1)
    assert summary["images"] == 10 and summary["positive"] == 5


def test_png_layout_and_label_disagreement(tmp_path):
    root = tmp_path / "data"
    (root / "png_images").mkdir(parents=True)
    (root / "png_masks").mkdir()
    rows = []
    for i in range(4):
        name = f"{i}_train_{int(i % 2)}_.png"
        Image.fromarray(np.full((40, 50), 60 + i, np.uint8)).save(root / "png_images" / name)
        mask = np.zeros((40, 50), np.uint8)
        if i % 2:
            mask[5:10, 5:15] = 255
        Image.fromarray(mask).save(root / "png_masks" / name)
        rows.append((name, f"1.2.{i}", i % 2))
    rows.append(("3_train_1_.png", "1.2.99", 0))  # same file, wrong label -> rejected
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(root / "png_images" / "stray.png")
    pd.DataFrame(rows, columns=["new_filename", "ImageId", "has_pneumo"]).to_csv(
        root / "stage_1_train_images.csv", index=False
    )
    out = tmp_path / "prep"
    summary = prepare(root, out, sizes=(32,), progress=False, workers=1)
    assert summary["layout"] == "png" and summary["images"] == 4 and summary["positive"] == 2
    manifest = pd.read_csv(out / "manifest.csv", dtype={"image_id": str}).set_index("image_id")
    assert manifest.loc["1.2.1", "mask_area_px"] == 50 and manifest.loc["1.2.1", "width"] == 50
    reasons = pd.read_csv(out / "rejected.csv")["reason"].tolist()
    assert any("has_pneumo=0" in r for r in reasons) and any("without annotation" in r for r in reasons)


def test_unknown_layout_lists_what_it_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no supported layout"):
        detect_layout(tmp_path / "empty")


@pytest.mark.parametrize("layout", ["siim", "png"])
def test_phantom_to_prepare_through_the_commands(tmp_path, layout):
    data, out = tmp_path / "data", tmp_path / "prep"
    cli(
        "dualstage.data.phantom",
        "--out",
        data,
        "--n",
        24,
        "--size",
        128,
        "--layout",
        layout,
        "--seed",
        1,
        "--quiet",
    )
    proc = cli("dualstage.segment", "prepare", "--data", data, "--out", out, "--sizes", 64, "--folds", 3)
    summary = json.loads(proc.stdout)
    assert summary["layout"] == layout and summary["images"] == 24 and summary["rejected"] == 0
    index = pd.read_csv(data / "phantom_index.csv", dtype={"image_id": str}).set_index("image_id")
    manifest = pd.read_csv(out / "manifest.csv", dtype={"image_id": str}).set_index("image_id")
    assert manifest.index.sort_values().tolist() == index.index.sort_values().tolist()
    assert (manifest["mask_area_px"] == index.loc[manifest.index, "area_px"]).all()
    if layout == "siim":
        assert manifest["patient_id"].notna().all() and set(manifest["view_position"]) <= {"PA", "AP"}
        assert (manifest["transfer_syntax"] == "1.2.840.10008.1.2.4.50").any()
    splits = pd.read_csv(out / "splits.csv")
    assert (
        set(splits["split"]) <= {"train", "val", "test"}
        and (splits.groupby("group")["split"].nunique() == 1).all()
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sizes": (0,)}, r"--sizes 0: each cache size must be an integer in \[32, 4096\] px"),
        ({"sizes": (64, 100000)}, "--sizes 100000"),
        ({"sizes": ()}, "at least one"),
        ({"n_folds": 1}, "--folds 1: k folds need k >= 2"),
        ({"workers": -1}, "--workers -1"),
        ({"test_fraction": 0.0}, r"--test-fraction 0.0: must be in \(0, 1\)"),
        ({"val_fraction": 1.0}, "--val-fraction 1.0"),
        ({"test_fraction": 0.5, "val_fraction": 0.5}, "must sum below 1"),
    ],
)
def test_options_are_range_checked_before_anything_is_written(tmp_path, kwargs, message):
    args = {"sizes": (64,), "n_folds": 3, "workers": 1, "test_fraction": 0.1, "val_fraction": 0.1}
    with pytest.raises(ValueError, match=message):
        prepare(tmp_path / "nowhere", tmp_path / "out", progress=False, **{**args, **kwargs})
    assert not (tmp_path / "out").exists()


def test_cache_writer_refuses_paths_outside_out(tmp_path):
    # defence in depth: an item that skipped the id check, and a cache folder linked elsewhere
    save = tmp_path / "img.png"
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(save)
    mask = tmp_path / "mask.png"
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(mask)
    out = tmp_path / "out"
    item = Item("../../../../escaped", str(save), "folders", mask_path=str(mask))
    result = process_item(item, str(out), [32])
    assert "outside the output folder" in result["rejected"]["reason"]
    assert not (tmp_path / "escaped.png").exists()
    (out / "cache" / "32").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", out / "cache" / "32" / "images")
    result = process_item(Item("ok", str(save), "folders", mask_path=str(mask)), str(out), [32])
    assert "outside the output folder" in result["rejected"]["reason"]
    assert not any((tmp_path / "elsewhere").iterdir())


def test_stale_temporary_files_are_removed_on_the_next_run(tmp_path):
    root = tmp_path / "data"
    for name in ("images", "masks"):
        (root / name).mkdir(parents=True)
    for i in range(2):
        Image.fromarray(np.full((40, 40), i * 50, np.uint8)).save(root / "images" / f"a{i}.png")
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "masks" / f"a{i}.png")
    out = tmp_path / "prep"
    stale = [out / ".manifest.csv.k1.tmp", out / "cache" / "32" / "masks" / ".a0.png.123.tmp"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    keep = out / "notes.txt"
    keep.write_text("mine")
    prepare(root, out, sizes=(32,), progress=False, workers=1, n_folds=2)
    assert not any(p.exists() for p in stale) and keep.exists()
