"""``segment train --resume`` from the middle of a multi-epoch cyclic phase continues its LR triangle
(issue 9, item 8): the kill test in ``tests/segment/test_segment_e2e.py`` stops only at phase boundaries,
where the scheduler starts afresh anyway; here the run stops inside the phase, so a resume that
skipped the scheduler's state would restart the triangle. The LRs are checked against hand-computed
values and against the same experiment run uninterrupted."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from helpers.commands import cli

# One optimizer step per epoch (every training image fits one batch of 32). One phase of 3 epochs,
# cycle_epochs unset: one triangle per phase of 3 steps, 1 up (3 // 2) and 2 down:
#   after step 1: max_lr 2e-4; step 2: 2e-5 + (2e-4 - 2e-5) / 2 = 1.1e-4; step 3: base_lr 2e-5.
# (A triangle per epoch would give 2e-4, 2e-5, 2e-4; a restarted one after a resume at step 1,
# 2e-4, 2e-4, 1.1e-4.)
PHASES = [
    {
        "name": "all",
        "resolution": 64,
        "unfreeze": "all",
        "loss": "soft_dice",
        "epochs": 3,
        "base_lr": 2e-5,
        "max_lr": 2e-4,
    },
]
EXPECTED_LR = [2e-4, 1.1e-4, 2e-5]


def _yaml(folder: Path, root: Path) -> Path:
    cfg = {
        "name": "midphase",
        "output_root": str(root),
        "data": {
            "source": "phantom",
            "phantom_n": 16,
            "phantom_size": 64,
            "sizes": [64],
            "n_folds": 2,
            "workers": 1,
            "val_fraction": 0.25,
            "test_fraction": 0.25,
        },
        "model": {"encoder": "resnet18", "weights": "none", "decoder_channels": [16, 16, 8, 8, 8]},
        "train": {"batch_size": {64: 32}, "workers": 0, "amp": "off", "phases": PHASES, "folds": "main"},
    }
    path = folder / "midphase.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _train(cfg: Path, *args: str) -> None:
    args = ("train", "--exp", cfg, *args, "--fold", "main", "--no-progress", "--device", "cpu")
    cli("dualstage.segment", *args)


@pytest.fixture
def one_thread():
    """One torch thread: on a busy 2-core machine this is ~10x faster than oversubscribing."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_resume_in_the_middle_of_a_cyclic_phase_continues_its_triangle(tmp_path, one_thread) -> None:
    cfg = _yaml(tmp_path, tmp_path / "models")
    cli("dualstage", "run", cfg, "--steps", "data")  # phantoms -> prepare
    exp = tmp_path / "models" / "midphase"
    splits = pd.read_csv(exp / "prepared" / "splits.csv")
    assert 1 <= (splits["split"] == "train").sum() <= 32  # one batch: one step per epoch
    _train(cfg, "--stop-after", "1")
    run_dir = exp / "segmenter" / "main"
    last = torch.load(run_dir / "last.pt", map_location="cpu", weights_only=True)
    assert (last["state"]["phase"], last["state"]["epoch_in_phase"]) == (0, 1)  # stopped mid-phase
    _train(cfg, "--resume")
    resumed = pd.read_csv(run_dir / "log.csv")
    assert resumed["phase"].tolist() == [0, 0, 0]
    assert resumed["lr"].to_numpy() == pytest.approx(EXPECTED_LR, rel=1e-9)
    # the same experiment uninterrupted (the same prepared data through a link)
    other = tmp_path / "straight"
    (other / "models" / "midphase").mkdir(parents=True)
    os.symlink(exp / "prepared", other / "models" / "midphase" / "prepared")
    _train(_yaml(other, other / "models"))
    straight = pd.read_csv(other / "models" / "midphase" / "segmenter" / "main" / "log.csv")
    assert resumed["lr"].tolist() == straight["lr"].tolist()
    np.testing.assert_allclose(resumed["train_loss"], straight["train_loss"], rtol=1e-6)
