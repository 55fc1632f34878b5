"""Tests for the synthetic phantom generator (dualstage.data.phantom)."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from dualstage.core.rle import decode
from dualstage.data import phantom

SIZE = 128


def _rle_rows(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "train-rle.csv", dtype=str, keep_default_na=False)


def _pixels(out: Path, table: pd.DataFrame) -> list[np.ndarray]:
    return [pydicom.dcmread(out / p).pixel_array for p in table["path"]]


@pytest.fixture(scope="module")
def siim(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """Seed 3, n=20: images 12 and 15 have two lesions; one patient has 3 images."""
    out = tmp_path_factory.mktemp("siim")
    table = phantom.generate(out, 20, size=SIZE, layout="siim", seed=3, jpeg_share=0.5, progress=False)
    return out, table


# ----------------------------------------------------------------------------- statistics
def test_area_sampler_matches_the_challenge_distribution() -> None:
    a = phantom.sample_lesion_area(np.random.default_rng(0), n=200_000)
    assert abs(np.median(a) / 8600 - 1) < 0.15
    assert 0.06 < (a < 2000).mean() < 0.14
    assert a.min() >= 55 and a.max() <= 161_421
    assert (a == 55).any() and (a == 161_421).any()  # the tails are clipped, not redrawn
    small = phantom.sample_lesion_area(np.random.default_rng(0), size=256, n=200_000)
    np.testing.assert_allclose(small, a / 16)
    assert isinstance(phantom.sample_lesion_area(np.random.default_rng(0)), float)


def test_presence_share_is_about_22_percent() -> None:
    drawn = phantom.sample_presence(np.random.default_rng(1), 400)
    assert drawn.dtype == bool and 0.17 < drawn.mean() < 0.27
    specs = phantom.plan_cases(400, seed=0)
    positives = [s for s in specs if s.positive]
    assert 0.17 < len(positives) / 400 < 0.27
    assert all(s.lesion_areas_1024 for s in positives)
    assert not any(s.lesion_areas_1024 for s in specs if not s.positive)
    two = np.mean([len(s.lesion_areas_1024) == 2 for s in positives])
    assert 0.05 < two < 0.3
    per_patient = Counter(s.patient_index for s in specs)
    assert 1 <= max(per_patient.values()) <= 3 and 0.6 < len(per_patient) / 400 < 0.97
    # one patient, one identity
    first = {}
    for s in specs:
        assert first.setdefault(s.patient_index, (s.patient_id, s.sex)) == (s.patient_id, s.sex)


def test_plan_is_prefix_stable_and_ids_are_valid_uids() -> None:
    long, short = phantom.plan_cases(50, seed=7), phantom.plan_cases(10, seed=7)
    assert long[:10] == short
    uid = re.compile(r"^[0-9]+(\.[0-9]+)*$")
    ids = [u for s in long for u in (s.image_id, s.study_uid, s.series_uid)]
    assert len(set(ids)) == len(ids)
    assert all(uid.match(u) and len(u) <= 64 and u.startswith(phantom.UID_PREFIX) for u in ids)


def test_realized_area_tracks_the_target() -> None:
    specs = [s for s in phantom.plan_cases(120, seed=5) if s.positive][:12]
    errors = []
    for spec in specs:
        image, masks = phantom.render_case(spec, 256)
        assert image.shape == (256, 256) and image.dtype == np.uint8
        assert len(masks) == len(spec.lesion_areas_1024)
        assert all(m.shape == (256, 256) and m.dtype == bool and m.any() for m in masks)
        target = sum(spec.lesion_areas_1024) / 16
        errors.append(abs(np.logical_or.reduce(masks).sum() / target - 1))
    assert np.median(errors) < 0.3


def test_lesion_is_darker_than_the_same_lung_without_it() -> None:
    """A positive and its negative twin share anatomy; the air crescent is darker there."""
    specs = [s for s in phantom.plan_cases(80, seed=2) if s.positive][:8]
    darker = []
    for spec in specs:
        image, masks = phantom.render_case(spec, 256)
        twin = dataclasses.replace(spec, positive=False, lesion_areas_1024=())
        plain, no_masks = phantom.render_case(twin, 256)
        assert no_masks == []
        inside = np.logical_or.reduce(masks)
        darker.append(plain[inside].mean() - image[inside].mean())
        assert (plain[~inside] != image[~inside]).mean() < 0.5  # the rest barely changes
    assert np.median(darker) > 8


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = phantom.generate(tmp_path / "a", 8, size=SIZE, seed=11, progress=False)
    b = phantom.generate(tmp_path / "b", 8, size=SIZE, seed=11, workers=2, progress=False)
    c = phantom.generate(tmp_path / "c", 8, size=SIZE, seed=12, progress=False)
    pd.testing.assert_frame_equal(a, b)
    assert (tmp_path / "a/train-rle.csv").read_bytes() == (tmp_path / "b/train-rle.csv").read_bytes()
    for x, y in zip(_pixels(tmp_path / "a", a), _pixels(tmp_path / "b", b), strict=True):
        np.testing.assert_array_equal(x, y)
    assert not set(a["image_id"]) & set(c["image_id"])
    assert any(
        (x != y).mean() > 0.5
        for x, y in zip(_pixels(tmp_path / "a", a), _pixels(tmp_path / "c", c), strict=True)
    )
    # re-running into the same folder rewrites identical files
    before = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    phantom.generate(tmp_path / "a", 8, size=SIZE, seed=11, progress=False)
    after = {p: p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    assert before == after


# ----------------------------------------------------------------------------- siim layout
def test_siim_files_and_tags(siim: tuple[Path, pd.DataFrame]) -> None:
    out, table = siim
    assert len(table) == 20 and table["image_id"].is_unique
    specs = {s.image_id: s for s in phantom.plan_cases(20, seed=3, jpeg_share=0.5)}
    n_jpeg = 0
    for row in table.itertuples():
        spec = specs[row.image_id]
        path = out / row.path
        expected = ("dicom-images-train", spec.study_uid, spec.series_uid, f"{row.image_id}.dcm")
        assert path.parts[-4:] == expected
        raw = path.read_bytes()
        assert raw[128:132] == b"DICM"
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" == ds.file_meta.MediaStorageSOPClassUID
        assert ds.SOPInstanceUID == row.image_id == ds.file_meta.MediaStorageSOPInstanceUID
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (spec.study_uid, spec.series_uid)
        assert (ds.Modality, ds.BodyPartExamined) == ("CR", "CHEST")
        assert ds.PhotometricInterpretation == "MONOCHROME2"
        bits = (ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation)
        assert bits == (1, 8, 8, 7, 0)
        assert (ds.Rows, ds.Columns) == (SIZE, SIZE) and len(ds.PixelSpacing) == 2
        assert ds.PatientID == row.patient_id == str(ds.PatientName)
        assert ds.PatientSex in ("M", "F") and ds.ViewPosition in ("PA", "AP")
        assert str(ds.PatientAge).isdigit()  # bare number, as in the challenge files
        image, _ = phantom.render_case(spec, SIZE)
        pixels = ds.pixel_array
        assert pixels.shape == (SIZE, SIZE) and pixels.dtype == np.uint8
        if ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50":
            n_jpeg += 1
            assert ds.LossyImageCompression == "01"
            assert np.abs(pixels.astype(int) - image).mean() < 3  # lossy, but the same image
        else:
            assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
            np.testing.assert_array_equal(pixels, image)
    assert 0 < n_jpeg < 20 and n_jpeg == int(table["jpeg"].sum())
    assert table["patient_id"].value_counts().max() >= 2


def test_siim_rle_rows_decode_to_the_rendered_masks(siim: tuple[Path, pd.DataFrame]) -> None:
    out, table = siim
    header = (out / "train-rle.csv").read_text().splitlines()[0]
    assert header == "ImageId, EncodedPixels"
    rows = _rle_rows(out)
    assert all(v.startswith(" ") for v in rows[" EncodedPixels"])  # as in the stage-1 file
    groups = rows.groupby("ImageId")[" EncodedPixels"].apply(list)
    assert set(groups.index) == set(table["image_id"])
    specs = {s.image_id: s for s in phantom.plan_cases(20, seed=3)}
    n_multi = 0
    for row in table.itertuples():
        values = groups[row.image_id]
        _, masks = phantom.render_case(specs[row.image_id], SIZE)
        if not row.has_pneumothorax:
            assert values == [" -1"] and masks == []
            continue
        assert len(values) == row.n_lesions == len(masks) and " -1" not in values
        n_multi += len(values) > 1
        union = decode([v.strip() for v in values], SIZE, SIZE)
        np.testing.assert_array_equal(union, np.logical_or.reduce(masks))
        assert union.sum() == row.area_px > 0
        for value, mask in zip(values, masks, strict=True):
            np.testing.assert_array_equal(decode(value, SIZE, SIZE), mask)
    assert n_multi == 2  # images 12 and 15


# ----------------------------------------------------------------------------- png layout
def test_png_layout(tmp_path: Path) -> None:
    table = phantom.generate(tmp_path, 10, size=SIZE, layout="png", seed=3, progress=False)
    csv = pd.read_csv(tmp_path / "stage_1_train_images.csv")
    assert list(csv.columns) == ["new_filename", "ImageId", "has_pneumo"]
    assert list(csv["ImageId"]) == list(table["image_id"])
    specs = phantom.plan_cases(10, seed=3)
    for i, (row, spec) in enumerate(zip(csv.itertuples(), specs, strict=True)):
        assert row.new_filename == f"{i}_train_{row.has_pneumo}_.png"
        image, masks = phantom.render_case(spec, SIZE)
        png = np.asarray(Image.open(tmp_path / "png_images" / row.new_filename))
        mask = np.asarray(Image.open(tmp_path / "png_masks" / row.new_filename))
        np.testing.assert_array_equal(png, image)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
        expected = np.logical_or.reduce(masks) if masks else np.zeros((SIZE, SIZE), bool)
        np.testing.assert_array_equal(mask == 255, expected)
        assert row.has_pneumo == int(expected.any())
    assert csv["has_pneumo"].sum() >= 1


# ----------------------------------------------------------------------------- CLI
def test_cli_writes_dataset_and_preview(tmp_path: Path) -> None:
    preview = tmp_path / "sheet.png"
    cmd = [
        sys.executable,
        "-m",
        "dualstage.data.phantom",
        "--out",
        str(tmp_path / "ds"),
        "--n",
        "6",
        "--size",
        str(SIZE),
        "--seed",
        "4",
        "--preview",
        str(preview),
        "--quiet",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote 6 images" in done.stdout
    sheet = Image.open(preview)
    assert sheet.format == "PNG" and min(sheet.size) > 200
    assert len(_rle_rows(tmp_path / "ds")["ImageId"].unique()) == 6


def test_bad_arguments_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="layout"):
        phantom.generate(tmp_path, 2, size=SIZE, layout="nifti", progress=False)
    with pytest.raises(SystemExit):
        phantom.main(["--out", str(tmp_path), "--layout", "nifti"])
