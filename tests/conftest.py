"""Shared fixtures: the real challenge files (skipped with a reason when absent), offline env, and the
tiny experiments several test modules read (built once per test run; a test that writes into one
works on a copy: ``helpers.commands.copy_exp``). Builders live in ``tests/helpers/``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

# after the offline settings above: these import smp / albumentations (benchmarks/ is on pythonpath)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _setup import save_model  # noqa: E402

from dualstage.config import Experiment, TrainConfig, load_experiment, to_dict  # noqa: E402
from helpers.commands import call, cli, config, copy_exp, write_yaml  # noqa: E402
from helpers.crossfit import N, run_crossfit  # noqa: E402
from helpers.deploy import deployable  # noqa: E402
from helpers.e2e import e2e_yaml, linked_copy  # noqa: E402
from helpers.stage_two import make_experiment  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):  # make test: a pytest-xdist worker per core
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

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
    """A tiny deployable cross-fitted experiment (helpers/deploy.py), built once per test run."""
    return deployable(tmp_path_factory.mktemp("deployable"))


@pytest.fixture(scope="session")
def tiny_prepared(tmp_path_factory) -> Path:
    """The YAML of a prepared tiny phantom experiment (``helpers.commands.CONFIG``: 12 phantoms at
    64 px, 2 folds; ``dualstage run --steps data``), no model trained. Read-only: copy to write."""
    tmp = tmp_path_factory.mktemp("prepared")
    path = write_yaml(tmp, config(tmp / "models"))
    proc = call("dualstage", "run", path, "--steps", "data")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_prepared) -> Path:
    """A copy of ``tiny_prepared`` with an untrained ``main`` U-Net: ``segment predict`` runs without
    training (benchmarks/_setup.save_model). Returns the experiment folder."""
    tmp = tmp_path_factory.mktemp("tiny_model")
    shutil.copytree(load_experiment(tiny_prepared).folder, tmp / "models" / "tiny", symlinks=True)
    path = write_yaml(tmp, config(tmp / "models"))

    exp = load_experiment(path)
    save_model(exp, "main")
    return exp.folder


@pytest.fixture
def own_tiny_model(tiny_model, tmp_path) -> Path:
    """A private copy of ``tiny_model`` (its prepared data and model linked) for a test that writes."""
    return copy_exp(tiny_model, tmp_path / "models", tiny_model.name, link=("prepared", "segmenter"))


@pytest.fixture(scope="session")
def gated(tmp_path_factory) -> Path:
    """A tuned and gated synthetic experiment folder (features, maps, classifier, gate.json), holdout
    view (stage two learns from val). Read-only: copy to write."""
    exp = make_experiment(tmp_path_factory.mktemp("stage2"), n_oof=60, n_test=20, n_new=4)
    for kind in ("features", "predictions"):
        (exp / kind / "oof").rename(exp / kind / "val")
    record = to_dict(Experiment(name="exp", output_root=str(exp.parent), train=TrainConfig(folds="main")))
    record.pop("output_root")
    (exp / "experiment.json").write_text(json.dumps({"config": record}))
    for args in (["tune", "--n-iter", "1", "--threads", "1"], ["gate", "fit", "--threads", "1"]):
        proc = call("dualstage.classify", *args, "--exp", exp)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return exp


@pytest.fixture(scope="session")
def e2e_prepared(tmp_path_factory) -> tuple[Path, Path]:
    """(YAML, folder) of the tiny end-to-end experiment (helpers/e2e.py) after ``dualstage run
    --steps data`` (phantoms -> prepare), no model trained. Read-only: link ``prepared`` to train."""
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = e2e_yaml(tmp, tmp / "models")
    cli("dualstage", "run", cfg, "--steps", "data")
    return cfg, tmp / "models" / "tiny"


@pytest.fixture(scope="session")
def e2e_trained(tmp_path_factory, e2e_prepared) -> tuple[Path, Path]:
    """(YAML, folder): ``e2e_prepared`` (its ``prepared`` linked) with the main model trained
    uninterrupted, then the three fold models; oof / val / test predicted; swept with ``--lcc``.
    Read-only: ``helpers.e2e.linked_copy`` for a test that writes."""
    cfg, exp = linked_copy(e2e_prepared[1], tmp_path_factory.mktemp("e2e_trained"))
    for fold in ("main", "all"):
        cli("dualstage.segment", "train", "--exp", cfg, "--fold", fold, "--no-progress")
    for split in ("oof", "val", "test"):
        cli("dualstage.segment", "predict", "--exp", exp, "--split", split, "--workers", "0")
    cli("dualstage.segment", "sweep", "--exp", exp, "--lcc")
    return cfg, exp


@pytest.fixture(scope="session")
def crossfit_base(tmp_path_factory):
    """(labels, Experiment): the synthetic cross-fitted experiment of helpers/crossfit.py (labels of
    seed 7, maps carrying the labels) after the per-fold sweep, classifier and final decisions.
    Read-only: ``helpers.crossfit.copy_crossfit`` for a test that writes."""
    labels = (np.random.default_rng(7).random(N) < 0.35).astype(int)
    return labels, run_crossfit(tmp_path_factory.mktemp("cf"), labels)
