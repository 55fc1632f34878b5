"""``python -m dualstage predict IN... --exp --out``: one file, a folder, a DICOM series folder; a
missing path named as missing; no output inside the input; reserved set names; resumable."""

from __future__ import annotations

import html
import re
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from dualstage.__main__ import main
from dualstage.segment.__main__ import main as segment_main
from helpers.deploy import phantoms


def _run(capsys, *args) -> tuple[int, str]:
    code = main(["predict", *map(str, args), "--no-progress"])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def pngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pngs")
    return folder, phantoms(folder / "in", 3, seed=5)


def test_one_file(deployable_exp, pngs, tmp_path, capsys) -> None:
    path = pngs[1][0]
    code, err = _run(capsys, path, "--exp", deployable_exp, "--out", tmp_path / "out")
    assert code == 0, err
    out = tmp_path / "out"
    table = pd.read_csv(out / "decisions.csv", dtype={"image_id": str})
    assert table["image_id"].tolist() == [path.stem]
    mask = np.asarray(Image.open(out / "masks" / f"{path.stem}.png"))
    assert mask.shape == np.asarray(Image.open(path)).shape and set(np.unique(mask)) <= {0, 255}
    for column in ("probability_fold_0", "threshold_fold_1", "vote_fold_2", "mask_area_fold_0", "warning"):
        assert column in table.columns
    links = re.findall(r'(?:href|src)="([^"#]+)"', (out / "review.html").read_text(encoding="utf-8"))
    assert links and all((out / html.unescape(link)).is_file() for link in links)  # every image inside OUT


def test_folder_then_resume(deployable_exp, pngs, tmp_path, capsys) -> None:
    folder = pngs[1][0].parent
    bad = tmp_path / "in"
    shutil.copytree(folder, bad)
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    assert _run(capsys, bad, "--exp", deployable_exp, "--out", tmp_path / "out")[0] == 0
    table = pd.read_csv(tmp_path / "out" / "decisions.csv")
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv")
    assert len(table) == 3 and rejected["item"].str.endswith("broken.png").tolist() == [True]
    main(["predict", str(bad), "--exp", str(deployable_exp), "--out", str(tmp_path / "out"), "--no-progress"])
    summary = capsys.readouterr().out
    assert '"predicted_now": 0' in summary and '"reused": 3' in summary


def test_dicom_series_folder_gets_segs(deployable_exp, tmp_path, capsys) -> None:
    """A study / series folder of DICOM files named without an extension: masks on each image's
    grid and a DICOM SEG per positive study that references its source."""
    sources = phantoms(tmp_path / "tree", 2, seed=6, layout="siim")
    series = tmp_path / "study" / "series"
    series.mkdir(parents=True)
    for k, path in enumerate(sources):
        shutil.copy(path, series / f"IM{k:04d}")
    assert _run(capsys, tmp_path / "study", "--exp", deployable_exp, "--out", tmp_path / "out")[0] == 0
    table = pd.read_csv(tmp_path / "out" / "decisions.csv", keep_default_na=False)
    assert sorted(table["image_id"]) == ["IM0000", "IM0001"] and table["decision"].tolist() == [1, 1]
    for image_id, seg in zip(table["image_id"], table["seg"], strict=True):
        ds = pydicom.dcmread(tmp_path / "out" / seg)
        source = pydicom.dcmread(series / image_id, stop_before_pixels=True)
        assert ds.Modality == "SEG" and ds.StudyInstanceUID == source.StudyInstanceUID
        assert (int(ds.Rows), int(ds.Columns)) == (int(source.Rows), int(source.Columns))


def test_missing_path_is_named_as_missing(deployable_exp, tmp_path, capsys) -> None:
    code, err = _run(capsys, tmp_path / "nope.jpg", "--exp", deployable_exp, "--out", tmp_path / "out")
    assert code == 2 and "nope.jpg: no such file or folder" in err and "found" not in err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no image")
    code, err = _run(capsys, tmp_path / "empty", "--exp", deployable_exp, "--out", tmp_path / "out")
    assert code == 2 and "no DICOM/PNG/JPEG images found" in err


def test_output_inside_the_input_is_refused(deployable_exp, pngs, capsys) -> None:
    folder = pngs[1][0].parent
    code, err = _run(capsys, folder, "--exp", deployable_exp, "--out", folder / "results")
    assert code == 2 and "inside the input folder" in err and len(err.strip().splitlines()) == 1
    assert not (folder / "results").exists()


def test_reserved_set_name_is_refused_for_new_images(deployable_exp, pngs, capsys) -> None:
    folder = pngs[1][0].parent
    for name in ("oof", "test_fold_1"):
        code = segment_main(["predict", "--exp", str(deployable_exp), "--input", str(folder), "--set", name])
        assert code == 2 and "the pipeline owns this set name" in capsys.readouterr().err
