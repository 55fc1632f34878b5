"""dualstage.commands.shards: predict / features in shards + merge equal one process; bad --shard,
merges refused."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from dualstage.artifacts.shard_records import Shard, parse_shard, shard_jobs, shard_rows
from dualstage.commands.shards import dispatch
from dualstage.config import load_experiment, to_dict
from dualstage.segment import models
from dualstage.segment.checkpoint import FORMAT, save_checkpoint
from helpers.commands import call

MODELS = ("main", "fold_0", "fold_1", "fold_2")
FEATURES = {"weights": "none", "image_size": 32, "batch_size": 4, "workers": 0, "progress": False}


def _checkpoint(exp, name: str, seed: int) -> None:
    """An untrained model saved as a trained one would be (what predict reads)."""
    torch.manual_seed(seed)
    channels = list(exp.model.decoder_channels)
    net = models.build_model(exp.model.encoder, "none", decoder_channels=channels)
    mean, std = models.normalization("encoder")
    payload = {
        "format": FORMAT,
        "kind": "inference",
        "model": net.state_dict(),
        "encoder": exp.model.encoder,
        "decoder_channels": channels,
        "normalization": {"mean": list(mean), "std": list(std)},
        "resolution": 64,
        "experiment": to_dict(exp),
        "fold": name,
        "epoch": 0,
        "val_mean_dice": 0.0,
    }
    save_checkpoint(exp.dir.segmenter / name / "last.pt", payload)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A prepared phantom experiment with four untrained models, and a folder of new images."""
    from dualstage.commands.steps import prepare_experiment

    tmp = tmp_path_factory.mktemp("shards")
    cfg = {
        "name": "shardy",
        "output_root": str(tmp / "models"),
        "data": {
            "source": "phantom",
            "phantom_n": 21,
            "phantom_size": 96,
            "sizes": [64],
            "n_folds": 3,
            "workers": 1,
            "val_fraction": 0.3,
            "test_fraction": 0.2,
        },
        "model": {"encoder": "resnet18", "weights": "none", "decoder_channels": [16, 8, 8, 8, 8]},
        "train": {"batch_size": {64: 4}, "workers": 0, "amp": "off", "folds": "both"},
        "features": {"weights": "none", "image_size": 32},
    }
    path = tmp / "shardy.yaml"
    path.write_text(yaml.safe_dump(cfg))
    exp = load_experiment(path)
    prepare_experiment(exp)
    for seed, name in enumerate(MODELS):
        _checkpoint(exp, name, seed)
    new = tmp / "new"
    new.mkdir()
    rng = np.random.default_rng(0)
    for k in range(5):
        Image.fromarray(rng.integers(0, 256, (70 + k, 60), np.uint8)).save(new / f"n{k}.png")
    broken = (new / "n2.png").read_bytes()
    (new / "n2.png").write_bytes(broken[: len(broken) // 2])  # header reads, pixels do not: a decode failure
    return exp, path, new


def _predict_kwargs(exp, out: Path, **extra) -> dict:
    return {
        "exp_dir": exp.folder,
        "out": out,
        "batch_size": 3,
        "workers": 0,
        "device": "cpu",
        "progress": False,
        **extra,
    }


def _same_images(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names and names == sorted(p.name for p in b.iterdir())
    for name in names:
        with Image.open(a / name) as x, Image.open(b / name) as y:
            assert np.array_equal(np.asarray(x), np.asarray(y)), name


def _same_arrays(a: Path, b: Path) -> None:
    with np.load(a) as x, np.load(b) as y:
        assert x.files == y.files and all(np.array_equal(x[k], y[k]) for k in x.files)


def _same_prediction_sets(a: Path, b: Path) -> None:
    """index.csv and rejected.csv byte for byte, every map and histograms.npz array-equal."""
    for name in ("index.csv", "rejected.csv"):
        assert (a / name).exists() == (b / name).exists()
        assert not (a / name).exists() or (a / name).read_bytes() == (b / name).read_bytes()
    _same_images(a / "maps", b / "maps")
    if (a / "histograms.npz").exists():
        _same_arrays(a / "histograms.npz", b / "histograms.npz")
    assert not list((b / "shards").glob("*.json"))  # merged records are removed


def _sharded(step: str, kwargs: dict, n: int) -> dict:
    for i in range(n):
        dispatch(step, kwargs, shard=f"{i}/{n}")
    return dispatch(step, kwargs, merge=True)


@pytest.mark.parametrize("split", ["oof", "test"])
def test_predict_shards_equal_one_process(tiny, tmp_path, split):
    exp, _, _ = tiny
    one = dispatch("predict", _predict_kwargs(exp, tmp_path / "one", split=split))
    merged = _sharded("predict", _predict_kwargs(exp, tmp_path / "two", split=split), 2)
    _same_prediction_sets(tmp_path / "one", tmp_path / "two")
    assert merged["predicted_now"] == one["predicted_now"] == one["images"]
    assert [s["shard"] for s in merged["shards"]] == ["0/2", "1/2"]
    assert (tmp_path / "two" / "histograms.npz").is_file()


def test_predict_shards_of_new_images_with_a_broken_file(tiny, tmp_path):
    exp, _, new = tiny
    extra = {"input_dir": new, "only": ["main"]}
    one = dispatch("predict", _predict_kwargs(exp, tmp_path / "one", **extra))
    _sharded("predict", _predict_kwargs(exp, tmp_path / "two", **extra), 2)
    assert one["rejected"] == 1
    _same_prediction_sets(tmp_path / "one", tmp_path / "two")


def test_features_shards_equal_one_process(tiny, tmp_path):
    exp, _, _ = tiny
    pred = tmp_path / "pred"
    dispatch("predict", _predict_kwargs(exp, pred, split="oof"))
    (pred / "maps" / f"{sorted(os.listdir(pred / 'maps'))[4]}").write_bytes(b"not a png")  # one rejected
    base = {"pred_dir": pred, "prepared": exp.dir.prepared, "device": "cpu", **FEATURES}
    one = dispatch("features", {**base, "out_dir": tmp_path / "f1"})
    merged = _sharded("features", {**base, "out_dir": tmp_path / "f2"}, 2)
    a, b = tmp_path / "f1", tmp_path / "f2"
    _same_arrays(a / "features.npz", b / "features.npz")
    for name in ("index.csv", "rejected.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert one["rejected"] == merged["rejected"] == 1 and merged["extracted_now"] == one["extracted_now"]
    assert not list((b / "shards").glob("*.json"))


def test_merge_refuses_missing_changed_and_foreign_shards(tiny, tmp_path):
    exp, _, _ = tiny
    kwargs = _predict_kwargs(exp, tmp_path / "set", split="test", batch_size=1, only=["main"])
    with pytest.raises(FileNotFoundError, match="no predict shard records"):
        dispatch("predict", kwargs, merge=True)
    dispatch("predict", kwargs, shard="1/3")
    with pytest.raises(
        ValueError, match=r"missing shards 0/3, 2/3 of 3 \(no predict.0of3.json, predict.2of3"
    ):
        dispatch("predict", kwargs, merge=True)
    dispatch("predict", {**kwargs, "tta": True}, shard="0/3")  # another run's shard
    with pytest.raises(ValueError, match="shard records of different runs"):
        dispatch("predict", kwargs, merge=True)
    dispatch("predict", kwargs, shard="0/3")
    dispatch("predict", kwargs, shard="2/3")
    victim = json.loads((tmp_path / "set" / "shards" / "predict.2of3.json").read_text())["ids"][-1]
    (tmp_path / "set" / "maps" / f"{victim}.png").unlink()  # shard 2/3 lost an image
    with pytest.raises(ValueError, match=rf"shard 2/3 did not write 1 images \(e.g. \['{victim}'\]\)"):
        dispatch("predict", kwargs, merge=True)
    with pytest.raises(ValueError, match="--shard and --merge together"):
        dispatch("predict", kwargs, shard="0/3", merge=True)


@pytest.mark.parametrize("bad", ["3/2", "0/0", "a/b", "1", "-1/2", "2/2"])
def test_bad_shard_syntax_is_one_line(tmp_path, bad):
    for module, args in (("segment", ["predict", "--split", "test"]), ("classify", ["features"])):
        proc = call(f"dualstage.{module}", *args, "--exp", tmp_path / "nowhere.yaml", f"--shard={bad}")
        code, err = proc.returncode, proc.stderr
        assert err.startswith(f"error: --shard {bad!r}: expected I/N") and err.count("\n") == 1, err
        assert code == 2


def test_shards_take_every_nth_batch():
    ids = [f"x{k:02d}" for k in range(11)]
    shares = [Shard(i, 3).pick(ids, batch=2) for i in range(3)]
    assert shares == [["x00", "x01", "x06", "x07"], ["x02", "x03", "x08", "x09"], ["x04", "x05", "x10"]]
    assert parse_shard(" 1/4 ") == Shard(1, 4)
    jobs = shard_jobs([(["fold_0"], ["b", "a", "e"]), (["fold_1"], ["c", "d"])], Shard(1, 2), batch=1)
    assert jobs == [(["fold_0"], ["a"]), (["fold_1"], ["d"])]
    assert shard_rows(Shard(0, 2), ["s", None, "s", "s", "s"], [0, 2, 3, 4], batch=2) == [0, 2]


@contextlib.contextmanager
def _threads(n: int):
    """torch at ``n`` threads (CPU kernels' float results can depend on the thread count)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_torchrun_two_processes_predict_and_features(tiny, tmp_path):
    """torchrun: ranks take shards, rank 0 merges after the barrier; equal to one process at the
    same threads per process (1: OMP_NUM_THREADS of the ranks)."""
    shared, shared_yaml, _ = tiny  # a private copy: this test writes the test prediction and feature sets
    root = tmp_path / "models"
    shutil.copytree(shared.folder, root / shared.name, symlinks=True)
    path = tmp_path / "shardy.yaml"
    path.write_text(yaml.safe_dump({**yaml.safe_load(shared_yaml.read_text()), "output_root": str(root)}))
    exp = load_experiment(path)
    one = tmp_path / "one"
    with _threads(1):
        dispatch("predict", _predict_kwargs(exp, one, split="test", only=["main"]))
        features = {
            "pred_dir": one,
            "out_dir": tmp_path / "f1",
            "prepared": exp.dir.prepared,
            "device": "cpu",
        }
        single = dispatch("features", {**features, **FEATURES})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    commands = (
        ("dualstage.segment", "predict", "--split", "test", "--batch-size", "3"),
        ("dualstage.classify", "features", "--set", "test", "--batch-size", "4"),
    )
    for module, *args in commands:
        common = ["--exp", str(path), "--device", "cpu", "--no-progress", "--workers", "0"]
        proc = subprocess.run([*run, "-m", module, *args, *common], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stdout.count('"shards"') == 1  # rank 0 alone prints the merged summary
    _same_prediction_sets(one, exp.dir.prediction_set("test"))
    _same_arrays(tmp_path / "f1" / "features.npz", exp.dir.feature_set("test") / "features.npz")
    assert single["images"] == len(pd.read_csv(tmp_path / "f1" / "index.csv"))


def test_merge_keeps_the_shards_precision(tiny, tmp_path):
    exp, _, _ = tiny
    kwargs = _predict_kwargs(
        exp, tmp_path / "set", split="test", batch_size=2, only=["main"], precision="bf16"
    )
    _sharded("predict", kwargs, 2)
    assert json.loads((tmp_path / "set" / "predict.json").read_text())["precision"] == "bf16"
    base = {"pred_dir": tmp_path / "set", "prepared": exp.dir.prepared, "device": "cpu", **FEATURES}
    _sharded("features", {**base, "out_dir": tmp_path / "f", "precision": "bf16"}, 2)
    assert json.loads((tmp_path / "f" / "features.json").read_text())["precision"] == "bf16"
