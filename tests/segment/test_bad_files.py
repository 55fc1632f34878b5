"""One bad file never stops a batch: classify features and the gate, the report's gallery, and
``segment predict --input`` (which under ``--strict`` stops at the first bad file instead)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import torch
from PIL import Image

from dualstage.classify.features import extract_features
from dualstage.classify.gate import apply_gate, fit_gate
from dualstage.classify.tune import tune
from dualstage.commands.experiment import record_experiment
from dualstage.config import Experiment
from dualstage.data.phantom import generate
from dualstage.report.gallery import gallery
from dualstage.segment import predict as predict_module
from dualstage.segment.__main__ import main as segment_main
from dualstage.segment.inference import LoadedModel
from helpers.stage_two import FAST, make_experiment, make_prediction_set

# ---------------------------------------------------------------- classify features


def test_features_reject_bad_images_and_go_on(tmp_path) -> None:
    ids = [f"id{k}" for k in range(5)]
    pred = make_prediction_set(tmp_path, ids, split="input", cache_sizes=(), image_paths=True)
    src = tmp_path / "sources"
    (src / "id1.png").write_bytes(b"not an image")
    (src / "id3.png").unlink()
    (pred / "maps" / "id4.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "features"
    summary = extract_features(pred, out, weights="none", image_size=32, batch_size=2, progress=False)
    assert summary["images"] == 2 and summary["rejected"] == 3 and summary["extracted_now"] == 2
    rejected = pd.read_csv(out / "rejected.csv").sort_values("item")
    assert list(rejected.columns) == ["item", "stage", "reason"]
    assert rejected["item"].tolist() == ["id1", "id3", "id4"]
    assert rejected["stage"].tolist() == ["image", "source", "map"]
    assert str(src / "id1.png") in rejected["reason"].iloc[0]
    with np.load(out / "features.npz") as z:
        assert z["image_id"].tolist() == ["id0", "id2"] and z["X"].shape[0] == 2
    assert pd.read_csv(out / "index.csv")["image_id"].tolist() == ["id0", "id2"]
    # the source fixed: a rerun extracts it and reuses the others
    Image.fromarray(np.full((50, 40), 77, np.uint8)).save(src / "id1.png")
    again = extract_features(pred, out, weights="none", image_size=32, progress=False)
    assert (again["images"], again["rejected"], again["extracted_now"], again["reused"]) == (3, 2, 1, 2)
    for i in ("id0", "id1", "id2"):
        (src / f"{i}.png").unlink()
    with pytest.raises(ValueError, match="no image could be read"):
        extract_features(pred, tmp_path / "none", weights="none", image_size=32, progress=False)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> Path:
    exp = make_experiment(tmp_path_factory.mktemp("nofeat"), n_oof=90, n_test=20, n_new=4)
    tune(exp, n_iter=1, space={"n_estimators": [20], "max_depth": [2]}, progress=False, **FAST)
    fit_gate(exp, mode="classifier", threads=1, train_set="oof")
    return exp


def _drop_feature_row(exp: Path, fset: str, image_id: str, listed: bool) -> None:
    feat = exp / "features" / fset
    with np.load(feat / "features.npz") as z:
        keep = z["image_id"] != image_id
        arrays = {"image_id": z["image_id"][keep], "X": z["X"][keep], "feature_names": z["feature_names"]}
    np.savez(feat / "features.npz", **arrays)
    if listed:
        rows = [{"item": image_id, "stage": "image", "reason": f"/data/{image_id}.dcm: cannot decode DICOM"}]
        pd.DataFrame(rows).to_csv(feat / "rejected.csv", index=False)


def test_gate_gives_no_mask_to_studies_without_features(tuned) -> None:
    _drop_feature_row(tuned, "test", "tst0003", listed=True)
    summary = apply_gate(tuned, "test", progress=False)
    out = tuned / "final" / "test" / "classifier"
    assert summary["n"] == 19 and summary["n_no_features"] == 1 and summary["presence"]["n"] == 19
    assert not (out / "masks" / "tst0003.png").exists()
    assert "tst0003" not in pd.read_csv(out / "decisions.csv")["image_id"].tolist()
    rejected = pd.read_csv(out / "rejected.csv")
    assert rejected[["image_id", "stage"]].values.tolist() == [["tst0003", "features"]]
    assert "cannot decode DICOM" in rejected["reason"].iloc[0]
    assert json.loads((out / "summary.json").read_text())["n_no_features"] == 1
    # a truth study missing from the features without a rejected.csv row is still an error
    _drop_feature_row(tuned, "test", "tst0004", listed=False)
    with pytest.raises(ValueError, match="truth images have no features"):
        apply_gate(tuned, "test", progress=False)


# ---------------------------------------------------------------- report gallery


def _gallery_experiment(root: Path, n: int = 4) -> tuple[Path, dict]:
    """prepared cache (64 px), test maps and a comparison where two gates disagree on every study."""
    exp = root / "exp"
    rows = []
    for k in range(n):
        image_id = f"img{k}"
        for sub, value in (("images", 120), ("masks", 0)):
            path = exp / "prepared" / "cache" / "64" / sub / f"{image_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((64, 64), value, np.uint8)).save(path)
        q = np.zeros((64, 64), np.uint8)
        q[10:20, 10:20] = 200
        maps = exp / "predictions" / "test" / "maps"
        maps.mkdir(parents=True, exist_ok=True)
        Image.fromarray(q).save(maps / f"{image_id}.png")
        rows.append(
            {
                "image_id": image_id,
                "fold": -1,
                "true_area": 0,
                "threshold_pred_area": 100,
                "threshold_dice": 0.0,
                "classifier_pred_area": 0,
                "classifier_dice": 1.0,
                "classifier_decision": 0,
            }
        )
    rule = {"rule": "threshold", "threshold": 0.5}
    gates = {
        "threshold": {"name": "threshold", "params": rule},
        "classifier": {"name": "clf", "params": rule},
    }
    return exp, {"gates": gates, "per_image": pd.DataFrame(rows), "pred_set": "test"}


def test_gallery_skips_unreadable_studies_with_a_note(tmp_path) -> None:
    exp, cmp = _gallery_experiment(tmp_path)
    (exp / "prepared" / "cache" / "64" / "images" / "img0.png").write_bytes(b"garbage")
    (exp / "predictions" / "test" / "maps" / "img2.png").unlink()
    fig = gallery(exp, cmp, tmp_path / "out", n=3)
    assert fig.path is not None and Path(fig.path).is_file()
    assert fig.caption.startswith("Studies where the gates disagree: 2 of 4")
    skipped = fig.caption.splitlines()[-1]
    assert (
        skipped.startswith("Skipped (missing or unreadable files)")
        and "img0" in skipped
        and "img2" in skipped
    )
    for k in (1, 3):
        (exp / "prepared" / "cache" / "64" / "images" / f"img{k}.png").unlink()
    fig = gallery(exp, cmp, tmp_path / "out", n=3)
    assert fig.path is None and fig.note.startswith("not drawn: no readable study")


# ---------------------------------------------------------------- segment predict --input --strict


@pytest.fixture
def fake_model(monkeypatch) -> None:
    """A 1x1-conv 'segmenter' in place of the experiment's trained models (no training needed)."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 1, 1).eval()
    model = LoadedModel("main/best", net, 32, torch.zeros(3), torch.ones(3), {"train": {"amp": "off"}})
    monkeypatch.setattr(predict_module, "select_models", lambda exp, only=None: {"main": Path("main")})
    monkeypatch.setattr(predict_module, "load_models", lambda folders, checkpoint, device: {"main": [model]})


def _inputs(root: Path, header_error: bool) -> Path:
    """plain.png, good.dcm, half.dcm (pixel data cut short: a header row) [, bad.dcm (no DICOM header)]."""
    new = root / "new"
    table = generate(root / "ph", n=1, size=64, layout="siim", jpeg_share=0.0, progress=False)
    ds = pydicom.dcmread(root / "ph" / table["path"].iloc[0])
    new.mkdir()
    ds.save_as(new / "good.dcm")
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(new / "half.dcm")
    Image.fromarray(np.full((40, 30), 99, np.uint8)).save(new / "plain.png")
    if header_error:
        (new / "bad.dcm").write_bytes(b"not a dicom at all")
    return new


def test_predict_input_rejects_bad_files_and_goes_on(fake_model, tmp_path) -> None:
    new = _inputs(tmp_path, header_error=True)
    summary = predict_module.predict(
        tmp_path / "exp", tmp_path / "out", input_dir=new, workers=0, progress=False
    )
    assert summary["images"] == 2 and summary["rejected"] == 2
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv").sort_values("item")
    assert [Path(p).name for p in rejected["item"]] == ["bad.dcm", "half.dcm"]
    assert rejected["stage"].tolist() == ["header", "header"]  # pixel data shorter than declared: header
    assert sorted(pd.read_csv(tmp_path / "out" / "index.csv")["image_id"]) == ["good", "plain"]


def test_predict_strict_stops_at_the_first_bad_file(fake_model, tmp_path) -> None:
    new = _inputs(tmp_path, header_error=False)
    with pytest.raises(ValueError) as err:
        predict_module.predict(
            tmp_path / "exp", tmp_path / "out", input_dir=new, workers=0, progress=False, strict=True
        )
    text = str(err.value)
    assert text.startswith(f"{new / 'half.dcm'}: rejected at the header stage (") and "\n" not in text
    assert "less than expected" in text  # the header's size checked against the pixel data's length
    assert not (tmp_path / "out" / "index.csv").exists() and not (tmp_path / "out" / "rejected.csv").exists()
    (new / "bad.dcm").write_bytes(b"not a dicom at all")  # header failures stop it before any prediction
    exp = Experiment(name="strict", output_root=str(tmp_path / "models"))
    record_experiment(exp)
    err_out = io.StringIO()
    args = [
        "predict",
        "--exp",
        str(exp.folder),
        "--input",
        str(new),
        "--out",
        str(tmp_path / "cli"),
        "--workers",
        "0",
        "--no-progress",
        "--strict",
    ]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err_out):
        code = segment_main(args)
    lines = err_out.getvalue().strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {new / 'bad.dcm'}: rejected at the header stage (")
    assert "Traceback" not in err_out.getvalue() and not (tmp_path / "cli" / "maps").exists()


def test_predict_input_over_every_transfer_syntax_and_broken_file(fake_model, tmp_path) -> None:
    """Issue 11's folder: every decodable DICOM kind is predicted, every broken or non-image file is
    one rejected.csv row with a reason, exit 0 (no exception)."""
    from helpers.dicom_files import make_bad, make_good

    folder = tmp_path / "pacs"
    folder.mkdir()
    make_good(folder)
    good = {p.stem for p in folder.iterdir()}
    make_bad(folder)
    bad = {p.name for p in folder.iterdir() if p.stem not in good}
    summary = predict_module.predict(
        tmp_path / "exp", tmp_path / "out", input_dir=folder, workers=0, progress=False
    )
    index = pd.read_csv(tmp_path / "out" / "index.csv", dtype={"image_id": str})
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv")
    assert set(index["image_id"]) == good and summary["images"] == len(good)
    assert sorted(Path(p).name for p in rejected["item"]) == sorted(bad) and len(bad) >= 10  # one row each
    assert rejected["reason"].str.len().gt(0).all() and set(rejected["stage"]) <= {"header", "decode", "id"}
    for image_id in good:
        assert (tmp_path / "out" / "maps" / f"{image_id}.png").is_file()
