"""Shared fixtures: the real challenge files (skipped with a reason when absent), offline env."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

ROOT = Path(__file__).resolve().parents[1]
SIIM = Path(os.environ.get("DUALSTAGE_SIIM_DIR", ROOT.parent / "shared" / "data" / "siim"))


@pytest.fixture(scope="session")
def siim() -> Path:
    """../shared/data/siim, the real challenge sample files."""
    if not (SIIM / "README.md").exists():
        pytest.skip(f"real SIIM-ACR sample files not found at {SIIM} (set DUALSTAGE_SIIM_DIR)")
    return SIIM


@pytest.fixture(scope="session")
def deployable_exp(tmp_path_factory) -> Path:
    """A tiny deployable cross-fitted experiment (tests/deploy_kit.py), built once per test run."""
    from deploy_kit import deployable

    return deployable(tmp_path_factory.mktemp("deployable"))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A prepared tiny phantom experiment (64 px) with an untrained ``main`` U-Net: ``segment predict``
    runs without training (benchmarks/_setup.save_model). Returns the experiment folder."""
    import sys

    from test_bad_inputs_experiment import call, config, write_yaml

    from dualstage.config import load_experiment

    tmp = tmp_path_factory.mktemp("tiny_model")
    path = write_yaml(tmp, config(tmp / "models"))
    proc = call("dualstage", "run", path, "--steps", "data")
    assert proc.returncode == 0, proc.stderr[-2000:]
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _setup import save_model

    exp = load_experiment(path)
    save_model(exp, "main")
    return exp.folder
