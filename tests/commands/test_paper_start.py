"""A paper experiment starts as the README says: the data folder given once, a finished prepare
reused, errors that name what to do. A tiny phantom folder stands in for the SIIM-ACR data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers.commands import call

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "experiments" / "progressive_resnet34.yaml"


def _run(cwd: Path, *args: str):
    """``python -m MODULE ARGS`` run from ``cwd``, in this process (same entry point, no start-up);
    the exit status is the test's to check."""
    assert args[0] == "-m", args
    before = os.getcwd()
    os.chdir(cwd)
    try:
        return call(args[1], *args[2:])
    finally:
        os.chdir(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("siim")
    done = _run(
        root,
        "-m",
        "dualstage.data.phantom",
        "--out",
        str(root / "siim-acr"),
        "--n",
        "12",
        "--size",
        "96",
        "--layout",
        "siim",
        "--seed",
        "1",
    )
    assert done.returncode == 0, done.stderr
    return root / "siim-acr"


def test_paper_experiment_starts_from_the_readme(data, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    missing = _run(work, "-m", "dualstage", "run", str(PAPER), "--steps", "data")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "data.source" in missing.stderr and "--data" in missing.stderr
    assert not (work / "models" / "progressive_resnet34" / "prepared" / "manifest.csv").exists()

    first = _run(work, "-m", "dualstage", "run", str(PAPER), "--data", str(data), "--steps", "data")
    assert first.returncode == 0, first.stderr
    exp = work / "models" / "progressive_resnet34"
    assert (exp / "prepared" / "cache" / "1024").is_dir() and (exp / "experiment.json").is_file()
    saved = json.loads((exp / "experiment.json").read_text())["config"]
    assert saved["data"]["source"] == str(data) and saved["report"]["paper_table"] == "progressive"

    # the folder now stands for the experiment; a finished prepare is reused even without the data
    os.rename(data, data.with_name("unmounted"))
    try:
        again = _run(work, "-m", "dualstage", "run", str(exp), "--steps", "data")
        assert again.returncode == 0, again.stderr
        assert "using" in again.stdout and "0 decoded now" in again.stdout
    finally:
        os.rename(data.with_name("unmounted"), data)


def test_train_before_prepare_names_the_step(tmp_path):
    work = tmp_path / "w"
    work.mkdir()
    proc = _run(work, "-m", "dualstage.segment", "train", "--exp", str(PAPER), "--fold", "main")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "segment prepare" in proc.stderr
