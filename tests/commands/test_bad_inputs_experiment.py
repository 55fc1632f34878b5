"""Bad experiments, checkpoints and stage-two files: one line, exit 2, naming the file / key / row.

Cases run the public commands' entry points (``python -m dualstage run``, ``dualstage.segment
train | predict``, ``dualstage.classify tune | gate``, ``dualstage.report``); most in this process
through the same ``main(argv)`` (an escaping exception fails the case as a traceback would), a few
as real processes. Helpers: ``tests/helpers/bad_inputs.py``. Dataset cases: ``tests/data/test_bad_inputs.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dualstage.config import load_experiment, to_dict
from helpers.bad_inputs import assert_confined, assert_error, run, snapshot
from helpers.commands import call, config, copy_exp, write_yaml


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch) -> None:
    monkeypatch.delenv("DUALSTAGE_DEBUG", raising=False)


# ----------------------------------------------------------------------------- experiment YAML values
@pytest.mark.parametrize(
    ("changes", "needles"),
    [
        ({"model": "resnet18"}, ["model: expected a mapping", "'resnet18'"]),
        ({"model__encoder": "resnet43"}, ["model.encoder: unknown encoder 'resnet43'", "resnet18"]),
        (
            {"train__phases__1__loss": "bce+dise"},
            ["train.phases[1].loss: unknown loss 'bce+dise'", "soft_dice"],
        ),
        ({"train__optimizer": "sgd"}, ["train.optimizer: unknown value 'sgd'", "adam"]),
        ({"train__folds": "bogus"}, ["train.folds: unknown value 'bogus'", "main, all, both"]),
        ({"train__phases__2__epochs": -2}, ["train.phases[2].epochs: expected a positive integer, got -2"]),
        ({"train__phases__0__epochs": "three"}, ["train.phases[0].epochs: expected an integer, got 'three'"]),
        ({"train__phases__1__base_lr": "fast"}, ["train.phases[1].base_lr: expected a number, got 'fast'"]),
        ({"trian": {"folds": "main"}}, ["unknown key(s) ['trian']", "valid keys"]),
        ({"data__n_fold": 3}, ["data: unknown key(s) ['n_fold']", "n_folds"]),
    ],
    ids=[
        "model-not-mapping",
        "encoder",
        "loss",
        "optimizer",
        "folds",
        "epochs-negative",
        "epochs-text",
        "lr-text",
        "unknown-top-key",
        "unknown-data-key",
    ],
)
def test_bad_experiment_value(tmp_path: Path, changes: dict, needles: list[str]) -> None:
    path = write_yaml(tmp_path / "exps", config(tmp_path / "models", **changes))
    before = snapshot(tmp_path)
    line = assert_error(call("dualstage", "run", path, "--steps", "data"), str(path), *needles)
    assert ": :" not in line  # no empty key path
    assert_confined(tmp_path, before, None)  # nothing made: not even models/


def test_bad_experiment_value_in_a_real_process(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, config(tmp_path / "models", train__phases__2__epochs=-2))
    line = assert_error(run("dualstage", "run", path, "--steps", "data", process=True))
    assert line == f"error: {path}: train.phases[2].epochs: expected a positive integer, got -2"


def test_base_loop(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\ntrain: {folds: main}\n")
    assert_error(call("dualstage", "run", tmp_path / "a.yaml"), "a.yaml", "'base:' chain loops back")


def test_base_missing(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("base: gone.yaml\n")
    assert_error(call("dualstage", "run", tmp_path / "a.yaml"), str(tmp_path / "gone.yaml"), "not found")


def test_yaml_syntax_error_for_segment_train(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text("train:\n  phases: [\n    {epochs: 1}\n  folds: main\n")
    assert_error(call("dualstage.segment", "train", "--exp", path), str(path), "line 4", "YAML syntax error")


def test_yaml_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_bytes("description: caf\u00e9\n".encode("latin-1"))
    assert_error(call("dualstage.segment", "train", "--exp", path), str(path), "not UTF-8")


# ----------------------------------------------------------------------------- --exp
def test_exp_folder_without_experiment_json(tmp_path: Path) -> None:
    folder = tmp_path / "models" / "tiny"
    folder.mkdir(parents=True)
    assert_error(call("dualstage.segment", "train", "--exp", folder), str(folder), "no experiment.json")


def test_exp_missing(tmp_path: Path) -> None:
    gone = tmp_path / "gone.yaml"
    line = assert_error(call("dualstage.classify", "tune", "--exp", gone), str(gone))
    assert "neither an experiment YAML file nor an experiment folder" in line


def test_report_on_a_folder_that_is_not_an_experiment(tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "x.txt").write_text("hello")
    before = snapshot(tmp_path)
    assert_error(call("dualstage.report", "--exp", folder), str(folder), "no experiment.json")
    assert_confined(tmp_path, before, None)


def test_report_on_an_experiment_never_run(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, config(tmp_path / "models"))
    before = snapshot(tmp_path)
    assert_error(call("dualstage.report", "--exp", path), str(tmp_path / "models" / "tiny"), "not found")
    assert_confined(tmp_path, before, None)


# ----------------------------------------------------------------------------- checkpoints


def _bad_last(prepared: Path, tmp: Path, content: bytes) -> tuple[Path, Path]:
    """(YAML, last.pt): a copy of the prepared experiment with a bad ``segmenter/main/last.pt``."""
    root = tmp / "models"
    exp = root / "tiny"
    shutil.copytree(Path(load_experiment(prepared).folder), exp, symlinks=True)
    path = write_yaml(tmp, config(root))
    run_dir = exp / "segmenter" / "main"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(to_dict(load_experiment(path))))
    (run_dir / "last.pt").write_bytes(content)
    return path, run_dir / "last.pt"


CONTENTS = {"empty": b"", "text": b"epoch,loss\n1,0.5\n"}
SAYS = {"empty": "empty file (0 bytes)", "text": "not a dualstage checkpoint"}


@pytest.mark.parametrize("kind", list(CONTENTS))
def test_bad_last_pt_for_resume(tiny_prepared: Path, tmp_path: Path, kind: str) -> None:
    path, last = _bad_last(tiny_prepared, tmp_path, CONTENTS[kind])
    args = ("train", "--exp", path, "--fold", "main", "--resume", "--no-progress", "--device", "cpu")
    assert_error(call("dualstage.segment", *args), str(last), SAYS[kind])
    assert last.read_bytes() == CONTENTS[kind]


@pytest.mark.parametrize("kind", list(CONTENTS))
def test_bad_last_pt_for_predict(tiny_prepared: Path, tmp_path: Path, kind: str) -> None:
    path, last = _bad_last(tiny_prepared, tmp_path, CONTENTS[kind])
    args = (
        "predict",
        "--exp",
        path,
        "--split",
        "test",
        "--folds",
        "main",
        "--checkpoint",
        "last",
        "--workers",
        "0",
        "--device",
        "cpu",
    )
    assert_error(call("dualstage.segment", *args), str(last), SAYS[kind])
    maps = last.parents[2] / "predictions" / "test" / "maps"
    assert not maps.is_dir() or not any(maps.iterdir())  # no map written from a bad model


# ----------------------------------------------------------------------------- stage two


def test_corrupt_classifier_model(gated: Path, tmp_path: Path) -> None:
    exp = copy_exp(gated, tmp_path)
    model = exp / "classifier" / "model.ubj"
    model.write_bytes(b"{not an xgboost model")
    gate = json.loads((exp / "classifier" / "gate.json").read_text())
    for mode in ("classifier", "classifier_and_area"):  # as a gate fitted before the hash was recorded
        gate[mode].pop("model_sha256", None)
    (exp / "classifier" / "gate.json").write_text(json.dumps(gate))
    line = assert_error(
        call("dualstage.classify", "gate", "apply", "--exp", exp, "--set", "test"), str(model)
    )
    assert "XGBoost model" in line
    assert not (exp / "final").exists()


def test_changed_classifier_model(gated: Path, tmp_path: Path) -> None:
    exp = copy_exp(gated, tmp_path)
    model = exp / "classifier" / "model.ubj"
    model.write_bytes(b"{not an xgboost model")
    line = assert_error(
        call("dualstage.classify", "gate", "apply", "--exp", exp, "--set", "test"), str(model)
    )
    assert "changed since the gate was fit" in line


@pytest.mark.parametrize(
    ("action", "text", "needle"),
    [
        ("apply", '{"best_params": {"max_depth": 3}, "base": ', "not valid JSON"),
        ("apply", '{"best_params": {"max_depth": NaN}, "base": {"seed": 0, "max_bin": 64}}', "NaN"),
        ("fit", '{"best_params": {"max_depth": NaN}, "base": {"seed": 0, "max_bin": 64}}', "NaN"),
    ],
    ids=["apply-truncated", "apply-nan", "fit-nan"],
)
def test_bad_params_json(gated: Path, tmp_path: Path, action: str, text: str, needle: str) -> None:
    exp = copy_exp(gated, tmp_path)
    params = exp / "classifier" / "params.json"
    params.write_text(text)
    args = ("gate", action, "--exp", exp, "--threads", "1", *(["--set", "test"] if action == "apply" else []))
    line = assert_error(call("dualstage.classify", *args), str(params), "not valid JSON")
    assert needle in line


def test_tune_with_fewer_positives_than_folds(gated: Path, tmp_path: Path) -> None:
    import pandas as pd

    exp = copy_exp(gated, tmp_path)
    index_path = exp / "features" / "val" / "index.csv"
    index = pd.read_csv(index_path, dtype={"image_id": str})
    positives = index.index[index["has_pneumothorax"] == 1]
    index.loc[positives[3:], "has_pneumothorax"] = 0  # 3 positive studies for 5 folds
    index.to_csv(index_path, index=False)
    before = snapshot(exp / "classifier")
    line = assert_error(
        call("dualstage.classify", "tune", "--exp", exp, "--n-iter", "1", "--threads", "1", "--force")
    )
    assert "3 positive studies for 5 folds" in line and "features" in line
    assert snapshot(exp / "classifier") == before
