"""Issue 19, item 5: every hand-off file is read through its owner and checked; errors name the file
and the field; a report that cannot compute a row because an input is bad stops (exit 2) or, with
``--allow-partial``, says so in a banner at the top and in summary.json.

Each case mistypes or truncates one file of a tuned and gated synthetic experiment (the ``gated``
session fixture in ``tests/conftest.py``) and runs the public command that reads it.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dualstage.artifacts.prediction_set import INDEX_COLUMNS
from dualstage.core.cli import describe_error
from dualstage.core.io import HandoffError, write_json_atomic
from helpers.bad_inputs import assert_error, assert_ok, run
from helpers.commands import call, copy_exp

APPLY = ("gate", "apply", "--set", "test", "--no-progress")
REPORT = ("--resamples", "20", "--gallery", "0")


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ----------------------------------------------------------------------------- operating_point.json
@pytest.mark.parametrize(
    ("value", "shown"), [("abc", "'abc'"), (7.0, "7.0"), (True, "True"), (None, "None")], ids=str
)
def test_operating_point_mistyped(gated: Path, tmp_path: Path, value, shown: str) -> None:
    exp = copy_exp(gated, tmp_path)
    op = exp / "operating_point.json"
    _edit_json(op, lambda d: d["threshold"].__setitem__("threshold", value))
    needles = (str(op), f"threshold.threshold: expected a number in [0, 1], got {shown}")
    for args in (("gate", "fit", "--threads", "1"), APPLY):
        assert_error(call("dualstage.classify", *args, "--exp", exp), *needles)
    assert not (exp / "final").exists()
    assert_error(call("dualstage.report", "--exp", exp, *REPORT), *needles)
    assert not (exp / "report").exists()  # stopped before writing anything


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d.pop("chosen_on"), "chosen_on: missing"),
        (lambda d: d.__setitem__("n_images", "60"), "n_images: expected int, got '60'"),
        (lambda d: d.__setitem__("best_rule", "magic"), "best_rule: 'magic' is not one of"),
        (lambda d: d["threshold_area"].__setitem__("min_area", -5), "threshold_area.min_area: expected a"),
        (lambda d: d.__setitem__("triplet", {"rule": "triplet", "top": 0.2}), "triplet"),
    ],
    ids=["chosen_on", "n_images", "best_rule", "min_area", "triplet"],
)
def test_operating_point_fields(gated: Path, tmp_path: Path, edit, needle: str) -> None:
    exp = copy_exp(gated, tmp_path)
    _edit_json(exp / "operating_point.json", edit)
    assert_error(call("dualstage.classify", *APPLY, "--exp", exp), str(exp / "operating_point.json"), needle)


def test_operating_point_truncated_in_a_real_process(gated: Path, tmp_path: Path) -> None:
    exp = copy_exp(gated, tmp_path)
    _truncate(exp / "operating_point.json")
    assert_error(
        run("dualstage.classify", *APPLY, "--exp", exp, process=True),
        str(exp / "operating_point.json"),
        "not valid JSON",
    )


def test_report_allow_partial_says_so_at_the_top(gated: Path, tmp_path: Path) -> None:
    exp = copy_exp(gated, tmp_path)
    assert_ok(call("dualstage.classify", *APPLY, "--exp", exp))
    op = exp / "operating_point.json"
    _edit_json(op, lambda d: d["threshold"].__setitem__("threshold", "abc"))
    proc = call("dualstage.report", "--exp", exp, *REPORT, "--allow-partial")
    assert_ok(proc)
    assert "PARTIAL REPORT" in proc.stderr and str(op) in proc.stderr
    md = (exp / "report" / "report.md").read_text().splitlines()
    assert md[0].endswith("(PARTIAL: an input is bad)") and md[2] == "## Partial report"
    assert str(op) in "\n".join(md[:10])
    for name in ("summary.json", "metrics.json"):
        record = json.loads((exp / "report" / name).read_text())
        assert record["partial"] is True and any(str(op) in b for b in record["bad_inputs"])
    assert "Partial report" in (exp / "report" / "report.html").read_text().split("Which gate wins")[0]


# ----------------------------------------------------------------------------- gate records, classifier files
@pytest.mark.parametrize("kind", ["mistyped", "truncated"])
def test_decisions_csv(gated: Path, tmp_path: Path, kind: str) -> None:
    exp = copy_exp(gated, tmp_path)
    assert_ok(call("dualstage.classify", *APPLY, "--exp", exp))
    path = exp / "final" / "test" / "classifier" / "decisions.csv"
    if kind == "mistyped":
        table = pd.read_csv(path, dtype=str)
        table.loc[3, "decision"] = "abc"
        table.to_csv(path, index=False)
    else:
        _truncate(path, 0.6)
    assert_error(call("dualstage.report", "--exp", exp, *REPORT), str(path), "decision: expected 0 or 1")
    assert_ok(call("dualstage.report", "--exp", exp, *REPORT, "--allow-partial"))
    summary = json.loads((exp / "report" / "summary.json").read_text())
    assert summary["partial"] is True and "classifier gate" in summary["bad_inputs"][0]
    assert "classifier" not in summary["gates"] and "threshold_area" in summary["gates"]


GATE, PARAMS = "gate.json", "params.json"


@pytest.mark.parametrize(
    ("file", "edit", "needle"),
    [
        (GATE, lambda d: d["classifier"].__setitem__("threshold", "abc"), "classifier.threshold: expected"),
        (GATE, lambda d: d["classifier"]["pixel_rule"].__setitem__("threshold", 2), "pixel_rule.threshold"),
        (PARAMS, lambda d: d["best_params"].__setitem__("max_depth", "deep"), "best_params.max_depth"),
        (PARAMS, lambda d: d.__setitem__("base", []), "base: expected an object"),
    ],
    ids=["gate-threshold", "gate-rule", "params-depth", "params-base"],
)
def test_classifier_files(gated: Path, tmp_path: Path, file: str, edit, needle: str) -> None:
    exp = copy_exp(gated, tmp_path)
    path = exp / "classifier" / file
    _edit_json(path, edit)
    assert_error(call("dualstage.classify", *APPLY, "--exp", exp), str(path), needle)
    assert not (exp / "final").exists()


# ----------------------------------------------------------------------------- feature and prediction sets
@pytest.mark.parametrize("kind", ["truncated", "mistyped", "nan"])
def test_features_npz(gated: Path, tmp_path: Path, kind: str) -> None:
    exp = copy_exp(gated, tmp_path)
    path = exp / "features" / "test" / "features.npz"
    if kind == "truncated":
        _truncate(path)
        needle = "unreadable features file"
    else:
        with np.load(path) as z:
            arrays = dict(z)
        arrays["X"] = arrays["X"].astype(str) if kind == "mistyped" else np.full_like(arrays["X"], np.nan)
        np.savez(path, **arrays)
        needle = "must be numeric" if kind == "mistyped" else "NaN or infinite"
    assert_error(call("dualstage.classify", *APPLY, "--exp", exp), str(path), needle)


@pytest.mark.parametrize("kind", ["mistyped", "truncated", "repeated"])
def test_prediction_index(gated: Path, tmp_path: Path, kind: str) -> None:
    exp = copy_exp(gated, tmp_path)
    path = exp / "predictions" / "test" / "index.csv"
    ids = sorted(p.stem for p in (path.parent / "maps").iterdir())
    table = pd.DataFrame({c: "0" for c in INDEX_COLUMNS}, index=range(len(ids)))
    table = table.assign(image_id=ids, split="test", fold_model="main", height="32", width="32")
    if kind == "mistyped":
        table.loc[2, "height"] = "abc"
        needle = "height: expected positive integers, got 'abc'"
    elif kind == "repeated":
        table = pd.concat([table, table.iloc[[0]]])
        needle = "listed twice"
    table.to_csv(path, index=False)
    if kind == "truncated":
        _truncate(path, 0.55)
        needle = "re-run `segment predict`"
    args = ("features", "--exp", exp, "--set", "test", "--weights", "none", "--image-size", "32")
    assert_error(call("dualstage.classify", *args, "--no-progress"), str(path), needle)


def test_histograms_truncated(gated: Path, tmp_path: Path) -> None:
    exp = copy_exp(gated, tmp_path)
    path = exp / "predictions" / "test" / "histograms.npz"
    _truncate(path)
    assert_error(call("dualstage.report", "--exp", exp, *REPORT), str(path), "unreadable histograms file")


# ----------------------------------------------------------------------------- OS errors name the path
def test_disk_full_names_the_file(tmp_path: Path, monkeypatch) -> None:
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write through a file object: no name

    monkeypatch.setattr(Path, "write_text", full)
    target = tmp_path / "x" / "summary.json"
    with pytest.raises(OSError) as info:
        write_json_atomic(target, {"a": 1})
    assert describe_error(info.value) == f"{target}: no space left on the device"
    assert not list(target.parent.glob(".*.tmp"))


def test_disk_full_through_a_command(gated: Path, tmp_path: Path, monkeypatch) -> None:
    exp = copy_exp(gated, tmp_path)

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    line = assert_error(call("dualstage.classify", *APPLY, "--exp", exp), "no space left on the device")
    assert str(exp / "final" / "test" / "classifier") in line
    assert issubclass(HandoffError, ValueError)
