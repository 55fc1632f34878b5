"""The tiny end-to-end experiment (``tests/segment/test_segment_e2e.py``): 48 phantoms at 128 px,
3 folds, a 64 px ResNet18 U-Net trained 1 + 1 + 2 epochs (``train.folds: both``). Built by the
session fixtures ``e2e_prepared`` and ``e2e_trained`` in ``tests/conftest.py``."""

from __future__ import annotations

from pathlib import Path

import yaml

from helpers.commands import copy_exp

PHASES = [
    {
        "name": "decoder",
        "resolution": 64,
        "unfreeze": "decoder",
        "epochs": 1,
        "base_lr": 1e-4,
        "max_lr": 1e-3,
        "loss": {"name": "weighted_bce", "pos_weight": 5.0},
    },
    {
        "name": "block4",
        "resolution": 64,
        "unfreeze": "block4",
        "epochs": 1,
        "base_lr": 1e-4,
        "max_lr": 1e-3,
        "loss": "soft_dice",
        "positive_share": 0.5,
    },
    {
        "name": "all",
        "resolution": 64,
        "unfreeze": "all",
        "epochs": 2,
        "base_lr": 1e-5,
        "max_lr": 1e-4,
        "loss": "symmetric_lovasz",
    },
]
N_PHANTOMS = 48


def e2e_yaml(tmp: Path, root: Path, name: str = "tiny") -> Path:
    """``tmp/<name>.yaml``: the tiny experiment with output_root ``root``."""
    cfg = {
        "name": name,
        "output_root": str(root),
        "data": {
            "source": "phantom",
            "phantom_n": N_PHANTOMS,
            "phantom_size": 128,
            "sizes": [64],
            "n_folds": 3,
            "workers": 1,
            "val_fraction": 0.3,
            "test_fraction": 0.2,
        },
        "model": {"encoder": "resnet18", "weights": "none", "decoder_channels": [32, 16, 16, 8, 8]},
        "train": {"batch_size": {64: 8}, "workers": 0, "amp": "off", "phases": PHASES, "folds": "both"},
        "features": {"weights": "none", "image_size": 64},
        "report": {"resamples": 100},  # bootstrap CIs (2000 by default)
    }
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def linked_copy(
    exp: Path, tmp: Path, name: str = "tiny", link: tuple[str, ...] = ("prepared",)
) -> tuple[Path, Path]:
    """(YAML, folder): a private copy of the experiment folder ``exp`` as ``tmp/models/<name>``; the
    folders named in ``link`` (read-only inputs) are symbolic links to the shared ones."""
    folder = copy_exp(exp, tmp / "models", name, link)
    return e2e_yaml(tmp, tmp / "models", name), folder
