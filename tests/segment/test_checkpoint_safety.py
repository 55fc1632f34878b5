"""Nothing a checkpoint or weights file says can run code; checkpoints are sized for their use.

A payload (an object whose ``__reduce__`` runs a shell command that creates a marker file) is
planted in every kind of file the commands read: ``last.pt`` for ``train --resume``,
``best.pt``/``last.pt`` for ``predict``, a ``model.weights`` file and a DenseNet feature weights
file. The marker must never appear and the error must be one line naming the file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dualstage.segment.checkpoint import (
    check_plain,
    inference_resolution,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from helpers.commands import cli

PHASES = [  # the first phase at 64 px, the last at 96 px: best/last after epoch 1 are 64 px models
    {"name": "decoder", "resolution": 64, "unfreeze": "decoder", "loss": "soft_dice", "epochs": 1},
    {"name": "all", "resolution": 96, "unfreeze": "all", "loss": "soft_dice", "epochs": 1},
]


class Payload:
    """Unpickling this runs ``touch <marker>`` (what a hostile checkpoint would do, harmlessly)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _experiment(folder: Path, root: Path, weights: str = "none") -> Path:
    cfg = {
        "name": "tiny",
        "output_root": str(root),
        "data": {"source": "phantom", "phantom_n": 16, "phantom_size": 128, "sizes": [64, 96], "n_folds": 2},
        "model": {"encoder": "resnet18", "weights": weights, "decoder_channels": [16, 16, 8, 8, 8]},
        "train": {"batch_size": {64: 8, 96: 8}, "workers": 0, "amp": "off", "phases": PHASES},
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _cli(*args: object, expect: int = 0) -> str:
    """``python -m dualstage.segment ARGS`` in this process; returns stderr."""
    return cli("dualstage.segment", *args, expect=expect).stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny experiment stopped after its first epoch: segmenter/main/{last,best}.pt, no done.json."""
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = _experiment(tmp, tmp / "models")
    cli("dualstage", "run", cfg, "--steps", "data")
    _cli("train", "--exp", str(cfg), "--fold", "main", "--stop-after", "1", "--no-progress")
    return tmp / "models" / "tiny"


def _copy(trained: Path, tmp: Path, weights: str = "none") -> tuple[Path, Path]:
    """(config, experiment folder): a copy of the trained run sharing its prepared data."""
    root = tmp / "models"
    (root / "tiny" / "segmenter").mkdir(parents=True)
    os.symlink(trained / "prepared", root / "tiny" / "prepared")
    shutil.copytree(trained / "segmenter" / "main", root / "tiny" / "segmenter" / "main")
    return _experiment(tmp, root, weights), root / "tiny"


def _plant(path: Path, marker: Path) -> None:
    """Add a payload to a real checkpoint; check that an unsafe load would indeed run it."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["note"] = Payload(marker)
    torch.save(ckpt, path)
    probe = marker.with_name("probe")
    torch.save({"x": Payload(probe)}, probe.with_suffix(".pt"))
    torch.load(probe.with_suffix(".pt"), weights_only=False)  # the payload is live ...
    assert probe.exists()  # ... so its absence below means it was refused


def _one_line_naming(stderr: str, path: Path) -> None:
    assert str(path) in stderr and "Traceback" not in stderr, stderr
    assert len(stderr.strip().splitlines()) == 1, stderr


# ----------------------------------------------------------------------------- the commands
def test_payload_in_last_pt_never_runs_on_resume(trained, tmp_path):
    cfg, exp = _copy(trained, tmp_path)
    marker, last = tmp_path / "PWNED", exp / "segmenter" / "main" / "last.pt"
    _plant(last, marker)
    err = _cli("train", "--exp", str(cfg), "--fold", "main", "--resume", "--no-progress", expect=2)
    assert not marker.exists()
    _one_line_naming(err, last)
    assert "refused unsafe content" in err


@pytest.mark.parametrize("which", ["best", "last"])
def test_payload_in_checkpoint_never_runs_on_predict(trained, tmp_path, which):
    cfg, exp = _copy(trained, tmp_path)
    marker, path = tmp_path / "PWNED", exp / "segmenter" / "main" / f"{which}.pt"
    _plant(path, marker)
    out = tmp_path / "pred"
    args = ("predict", "--exp", str(cfg), "--split", "val", "--out", str(out), "--checkpoint", which)
    err = _cli(*args, "--workers", "0", expect=2)
    assert not marker.exists()
    _one_line_naming(err, path)
    assert not (out / "maps").exists() or not any((out / "maps").iterdir())


def test_payload_in_model_weights_file_never_runs(trained, tmp_path):
    marker, weights = tmp_path / "PWNED", tmp_path / "encoder.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "note": Payload(marker)}, weights)
    cfg, _ = _copy(trained, tmp_path, weights=str(weights))
    shutil.rmtree(tmp_path / "models" / "tiny" / "segmenter")
    err = _cli("train", "--exp", str(cfg), "--fold", "main", "--no-progress", expect=2)
    assert not marker.exists()
    _one_line_naming(err, weights)


def test_payload_in_densenet_weights_never_runs(tmp_path):
    from dualstage.classify.features import load_densenet

    marker, weights = tmp_path / "PWNED", tmp_path / "densenet121.pth"
    torch.save({"features.conv0.weight": torch.zeros(64, 3, 7, 7), "note": Payload(marker)}, weights)
    with pytest.raises(ValueError) as info:
        load_densenet(weights)
    assert not marker.exists()
    assert str(weights) in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- bad files
def _bad_file(kind: str, path: Path, marker: Path) -> None:
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("epoch,loss\n1,0.5\n")
    elif kind == "truncated":
        save_checkpoint(path, {"model": {"w": torch.arange(50_000.0)}, "encoder": "resnet18"})
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "payload":
        torch.save({"model": {}, "encoder": "resnet18", "note": Payload(marker)}, path)
    elif kind == "tensor":
        torch.save(torch.zeros(3), path)


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "truncated", "payload", "tensor"])
def test_bad_checkpoint_files_give_one_line_naming_the_file(tmp_path, kind):
    path, marker = tmp_path / "last.pt", tmp_path / "PWNED"
    _bad_file(kind, path, marker)
    with pytest.raises(FileNotFoundError if kind == "missing" else ValueError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message and len(message) < 400, message
    assert not marker.exists()


def test_save_refuses_values_a_weights_only_load_would_refuse(tmp_path):
    with pytest.raises(TypeError, match=r"checkpoint\['rng'\]\['numpy'\]"):
        save_checkpoint(tmp_path / "x.pt", {"model": {}, "rng": {"numpy": np.zeros(3)}})
    assert not list(tmp_path.iterdir())
    check_plain({"a": [1, 2.0, "x", None, (torch.zeros(1), {"b": True})], 3: torch.Size([2])})


# ----------------------------------------------------------------------------- sizes, resume
def test_best_is_inference_only_and_records_its_resolution(trained):
    folder = trained / "segmenter" / "main"
    last, best = load_checkpoint(folder / "last.pt"), load_checkpoint(folder / "best.pt")
    assert {"optimizer", "rng", "scaler", "log", "state"} <= set(last)
    assert not {"optimizer", "rng", "scaler", "log", "state", "scheduler"} & set(best)
    assert best["kind"] == "inference" and last["kind"] == "resumable"
    adam = [t for s in last["optimizer"]["state"].values() for t in s.values() if t.dim()]
    adam_bytes = sum(t.numel() * t.element_size() for t in adam)  # decoder only after epoch 1
    assert adam_bytes > 1e5
    assert (folder / "best.pt").stat().st_size < (folder / "last.pt").stat().st_size - 0.9 * adam_bytes
    for ckpt in (last, best):  # saved after the 64 px phase although the last phase is 96 px
        assert ckpt["resolution"] == 64 and inference_resolution(ckpt) == 64
        assert ckpt["experiment"]["train"]["phases"][-1]["resolution"] == 96
        assert {"encoder", "decoder_channels", "normalization"} <= set(ckpt)
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])


def test_format1_checkpoint_still_loads(trained, tmp_path):
    """Files from before the plain format (numpy RNG arrays, no resolution) load and resume."""
    ckpt = load_checkpoint(trained / "segmenter" / "main" / "last.pt")
    rng = ckpt["rng"]
    py, npy = rng["python"], rng["numpy"]
    old_rng = {
        "python": (py["version"], tuple(py["state"]), py["gauss_next"]),
        "numpy": ("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], 0, 0.0),
        "torch": rng["torch"],
    }
    old = {k: v for k, v in ckpt.items() if k not in ("format", "kind", "resolution", "epoch")}
    torch.save({**old, "rng": old_rng}, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt")
    assert inference_resolution(loaded) == 96  # the config's last phase: the old fallback
    set_rng_state(loaded["rng"])
    a = np.random.random(3)
    set_rng_state(ckpt["rng"])
    np.testing.assert_array_equal(a, np.random.random(3))


def test_resume_removes_stale_temporaries(trained, tmp_path):
    cfg, exp = _copy(trained, tmp_path)
    folder = exp / "segmenter" / "main"
    stale = [folder / ".last.pt.k1ll3d.tmp", folder / ".log.csv.x7.tmp"]
    for path in stale:
        path.write_bytes(b"")
    _cli("train", "--exp", str(cfg), "--fold", "main", "--resume", "--no-progress")
    assert not any(p.exists() for p in stale) and (folder / "done.json").exists()
    assert not list(folder.glob(".*.tmp"))
    assert load_checkpoint(folder / "last.pt")["resolution"] == 96
