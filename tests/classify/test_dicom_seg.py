"""DICOM SEG of the final masks: written by ``gate apply`` for DICOM sources, read back and checked
against the source's references and the final mask; empty decisions and bad sources."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from dualstage.artifacts.prediction_set import INDEX_COLUMNS, PredictionSet
from dualstage.classify.dicom_seg import package_version, seg_sources, write_seg
from dualstage.classify.gate import apply_gate, fit_gate
from dualstage.classify.tune import tune
from dualstage.data.phantom import generate
from helpers.stage_two import FAST, make_experiment

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LESION = (slice(10, 30), slice(12, 40))


def _sources(root: Path) -> dict[str, Path]:
    """{image_id: source}: 3 phantom Secondary Captures (one JPEG), pydicom's CT and MR, a PNG, a
    truncated DICOM and a DICOM path that does not exist."""
    table = generate(root / "phantoms", n=3, size=64, layout="siim", seed=1, jpeg_share=0.4, progress=False)
    out = {f"ph{k}": root / "phantoms" / p for k, p in enumerate(table["path"])}
    src = root / "src"
    src.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        out[name[:2].lower()] = Path(shutil.copy(get_testdata_file(name), src / name))
    out["png"] = src / "plain.png"
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(out["png"])
    out["broken"] = src / "broken.dcm"
    out["broken"].write_bytes(out["ph0"].read_bytes()[:300])  # header cut short
    out["gone"] = src / "gone.dcm"
    return out


def _grid(path: Path) -> tuple[int, int]:
    if path.suffix == ".png" or not path.is_file():
        return 64, 64
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return (int(ds.Rows), int(ds.Columns)) if "Rows" in ds else (64, 64)


def _add_set(exp: Path, name: str, sources: dict[str, Path], with_paths: bool, empty=("ph2",)) -> None:
    """predictions/<name> (maps on each source's grid, a lesion but for ``empty``) and features/<name>."""
    ids = list(sources)
    pred, feat = exp / "predictions" / name, exp / "features" / name
    (pred / "maps").mkdir(parents=True)
    feat.mkdir(parents=True)
    for i in ids:
        q = np.zeros(_grid(sources[i]), np.uint8)
        if i not in empty:
            q[LESION] = 220
        Image.fromarray(q).save(pred / "maps" / f"{i}.png")
    index = pd.DataFrame(
        {
            "image_id": ids,
            "split": "input",
            "fold_model": "main",
            "height": [_grid(sources[i])[0] for i in ids],
            "width": [_grid(sources[i])[1] for i in ids],
            "has_truth": 0,
            "has_pneumothorax": 0,
            "true_area_px": np.nan,
        }
    )
    if with_paths:
        index["image_path"] = [str(sources[i]) for i in ids]
    index[[*INDEX_COLUMNS, *(["image_path"] if with_paths else [])]].to_csv(pred / "index.csv", index=False)
    X = np.random.default_rng(5).normal(size=(len(ids), 20)).astype(np.float32)
    names = np.array([f"f{j}" for j in range(20)])
    np.savez(feat / "features.npz", image_id=np.asarray(ids), X=X, feature_names=names)
    index[["image_id", "split", "fold_model", "has_truth", "has_pneumothorax"]].to_csv(
        feat / "index.csv", index=False
    )


def _gate_at(exp: Path, threshold: float) -> Path:
    """A copy of gate.json whose classifier threshold is ``threshold``."""
    gate = json.loads((exp / "classifier" / "gate.json").read_text())
    gate["classifier"]["threshold"] = threshold
    path = exp / "classifier" / f"gate_{threshold}.json"
    path.write_text(json.dumps(gate))
    return path


@pytest.fixture(scope="module")
def applied(tmp_path_factory) -> tuple[Path, dict[str, Path], dict]:
    root = tmp_path_factory.mktemp("seg")
    exp = make_experiment(root, n_oof=90, n_test=20, n_new=4)
    tune(exp, n_iter=1, space={"n_estimators": [20], "max_depth": [2]}, progress=False, **FAST)
    fit_gate(exp, mode="classifier", threads=1, train_set="oof")
    sources = _sources(root)
    _add_set(exp, "dcm", sources, with_paths=True)
    summary = apply_gate(exp, "dcm", gate_path=_gate_at(exp, 0.0), progress=False)
    return exp, sources, summary


def _check_seg(seg_path: Path, source: Path, mask: np.ndarray) -> None:
    src = pydicom.dcmread(source, stop_before_pixels=True)
    ds = pydicom.dcmread(seg_path)
    assert ds.SOPClassUID == SEG_STORAGE and ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.get("PatientID", "")
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in ref.ReferencedInstanceSequence] == [src.SOPInstanceUID]
    frame_ref = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert frame_ref.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert frame_ref.SpatialLocationsPreserved == "YES"
    assert ds.NumberOfFrames == 1 and (ds.Rows, ds.Columns) == (src.Rows, src.Columns)
    assert np.array_equal(ds.pixel_array.astype(bool), mask)
    segment = ds.SegmentSequence
    assert len(segment) == 1 and segment[0].SegmentLabel == "Pneumothorax"
    assert segment[0].SegmentAlgorithmType == "AUTOMATIC" and segment[0].SegmentAlgorithmName == "dualstage"
    assert segment[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "36118008"
    assert segment[0].SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    algorithm = segment[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "dualstage" and algorithm.AlgorithmVersion == package_version()
    seg = hd.seg.segread(seg_path)  # highdicom maps the frame back onto the source instance
    pixels = seg.get_pixels_by_source_instance([src.SOPInstanceUID], segment_numbers=[1])
    assert pixels.shape == (1, *mask.shape, 1) and np.array_equal(pixels[0, :, :, 0].astype(bool), mask)


def test_gate_apply_writes_a_seg_per_dicom_study(applied) -> None:
    exp, sources, summary = applied
    out = exp / "final" / "dcm" / "classifier"
    written = sorted(p.stem for p in (out / "seg").glob("*.dcm"))
    assert written == ["ct", "mr", "ph0", "ph1"]  # ph2: empty mask; png: not DICOM; broken, gone: rejected
    assert summary["n_seg"] == 4 and summary["n_seg_rejected"] == 2 and summary["n_present"] == 8
    for image_id in written:
        mask = np.asarray(Image.open(out / "masks" / f"{image_id}.png")) > 0
        assert mask.any()
        _check_seg(out / "seg" / f"{image_id}.dcm", sources[image_id], mask)
    assert json.loads((out / "summary.json").read_text())["n_seg"] == 4


def test_bad_source_is_a_rejected_row_and_the_rest_go_on(applied) -> None:
    exp, sources, _ = applied
    rejected = pd.read_csv(exp / "final" / "dcm" / "classifier" / "rejected.csv")
    assert list(rejected.columns) == ["image_id", "stage", "reason"]
    assert rejected["image_id"].tolist() == ["broken", "gone"] and set(rejected["stage"]) == {"seg"}
    for image_id, reason in zip(rejected["image_id"], rejected["reason"], strict=True):
        assert reason.startswith(f"{sources[image_id]}: cannot write DICOM SEG") and "\n" not in reason


def test_empty_decisions_write_no_seg_and_remove_stale_ones(applied, tmp_path) -> None:
    exp, _, _ = applied
    out = tmp_path / "final"
    shutil.copytree(exp / "final" / "dcm" / "classifier", out)
    assert len(list((out / "seg").glob("*.dcm"))) == 4
    summary = apply_gate(exp, "dcm", out=out, gate_path=_gate_at(exp, 2.0), progress=False)
    assert summary["n_present"] == 0 and summary["n_seg"] == 0 and summary["n_seg_rejected"] == 0
    assert list((out / "seg").glob("*.dcm")) == []  # no SEG for an empty decision, none left over
    assert pd.read_csv(out / "rejected.csv").empty


def test_sources_from_the_prepared_manifest(applied) -> None:
    exp, sources, _ = applied
    _add_set(exp, "dcm_prepared", sources, with_paths=False)
    pd.DataFrame({"image_id": list(sources), "image_path": [str(p) for p in sources.values()]}).to_csv(
        exp / "prepared" / "manifest.csv", index=False
    )
    found = seg_sources(exp, PredictionSet(exp / "predictions" / "dcm_prepared"))
    assert sorted(found) == sorted(set(sources) - {"png"}) and found["ct"] == (sources["ct"], 0)
    summary = apply_gate(exp, "dcm_prepared", gate_path=_gate_at(exp, 0.0), progress=False)
    assert summary["n_seg"] == 4
    out = exp / "final" / "dcm_prepared" / "classifier"
    _check_seg(out / "seg" / "mr.dcm", sources["mr"], np.asarray(Image.open(out / "masks" / "mr.png")) > 0)


def test_write_seg_errors_are_one_line_naming_the_source(applied, tmp_path) -> None:
    _, sources, _ = applied
    ct = sources["ct"]
    mask = np.zeros((128, 128), bool)
    mask[5:9, 5:9] = True
    cases = [
        (ct, np.zeros((128, 128), bool), "empty mask"),
        (ct, np.ones((64, 64), bool), "mask is 64x64, source frame 128x128"),
        (ct, np.ones((2, 128, 128), bool), "must be 2-D"),
        (sources["gone"], mask, "No such file"),
        (sources["broken"], mask, "cannot write DICOM SEG"),
    ]
    for source, m, needle in cases:
        with pytest.raises(ValueError, match=r"cannot write DICOM SEG") as err:
            write_seg(source, m, tmp_path / "x.dcm", algorithm_version="1")
        text = str(err.value)
        assert text.startswith(str(source)) and needle in text and "\n" not in text
    assert not (tmp_path / "x.dcm").exists()
    with pytest.raises(ValueError, match="frame 1 out of range"):
        write_seg(ct, mask, tmp_path / "x.dcm", algorithm_version="1", frame=1)


def test_sources_without_spacing_or_patient_module(applied, tmp_path) -> None:
    """A Secondary Capture without Pixel Spacing, Patient ID or a valid study time, and a DX
    with Imager Pixel Spacing only: SEGs on the source grid that highdicom reads back."""
    _, sources, _ = applied
    ds = pydicom.dcmread(sources["ph0"])
    for keyword in ("PixelSpacing", "PatientID", "PatientName"):
        delattr(ds, keyword)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the value it is told to store
        ds.StudyTime = "14:04:38"  # old ACR-NEMA form
    bare = tmp_path / "bare.dcm"
    ds.save_as(bare)
    dx = pydicom.dcmread(sources["ph1"])
    del dx.PixelSpacing
    dx.ImagerPixelSpacing, dx.Modality = [0.2, 0.2], "DX"
    dx.SOPClassUID = dx.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    dx.save_as(tmp_path / "dx.dcm")
    mask = np.zeros((64, 64), bool)
    mask[20:40, 8:30] = True
    for source in (bare, tmp_path / "dx.dcm"):
        out = write_seg(source, mask, tmp_path / f"seg_{source.name}", algorithm_version=package_version())
        _check_seg(out, source, mask)
    assert pydicom.dcmread(tmp_path / "seg_bare.dcm").StudyTime == "140438"


def test_crossfit_final_writes_segs(crossfit_base, tmp_path) -> None:
    """``gate apply --set oof`` (cross-fitted): SEGs for the studies whose prepared source is DICOM."""
    from dualstage.crossfit.final import crossfit_final
    from helpers.crossfit import SIDE, copy_crossfit

    exp = copy_crossfit(crossfit_base[1], tmp_path / "cf")
    final = exp.dir.final("oof", "classifier")
    area = pd.read_csv(final / "decisions.csv", dtype={"image_id": str}).set_index("image_id")["mask_area_px"]
    ids = [*area.index[area > 0][:2], area.index[area == 0][0]]  # two masks, one empty decision
    table = generate(tmp_path / "ph", n=3, size=64, layout="siim", seed=2, jpeg_share=0.0, progress=False)
    paths = []
    for image_id, rel in zip(ids, table["path"], strict=True):
        ds = pydicom.dcmread(tmp_path / "ph" / rel)
        small = np.ascontiguousarray(ds.pixel_array[::2, ::2])  # on the studies' 32 px grid
        ds.Rows, ds.Columns, ds.PixelData = SIDE, SIDE, small.tobytes()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        paths.append(tmp_path / f"{image_id}.dcm")
        ds.save_as(paths[-1])
    pd.DataFrame({"image_id": ids, "image_path": [str(p) for p in paths]}).to_csv(
        exp.dir.prepared / "manifest.csv", index=False
    )
    summary = crossfit_final(exp)["classifier"]
    assert summary["n_seg"] == 2 and summary["n_seg_rejected"] == 0
    assert sorted(p.stem for p in (final / "seg").glob("*.dcm")) == sorted(ids[:2])
    for image_id, path in zip(ids[:2], paths[:2], strict=True):
        mask = np.asarray(Image.open(final / "masks" / f"{image_id}.png")) > 0
        _check_seg(final / "seg" / f"{image_id}.dcm", path, mask)


def test_seg_on_the_real_challenge_dicom(siim, tmp_path):
    """A SEG on the real challenge file (JPEG Baseline Secondary Capture): references and frame."""
    import highdicom as hd

    src = siim / "dicom" / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    mask = np.zeros((1024, 1024), bool)
    mask[300:420, 100:260] = True
    out = write_seg(src, mask, tmp_path / "real_seg.dcm", algorithm_version="test")
    seg, source = hd.seg.segread(out), pydicom.dcmread(src)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == source.SeriesInstanceUID
    assert ref.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    np.testing.assert_array_equal(seg.pixel_array.astype(bool).reshape(mask.shape), mask)
