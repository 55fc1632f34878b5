"""Small phantom experiments for the ratio benchmarks, built with the package's public functions.

:func:`phantom_experiment` writes phantom radiographs, an experiment YAML and its prepared cache
into a temporary folder; :func:`save_model` gives it a model folder (``segmenter/<fold>/``) with
the checkpoints ``segment train`` writes (weights as initialised: an untrained U-Net), so
``segment predict`` runs without the minutes of training. Used by ``benchmarks/bench_*.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from dualstage.config import Experiment, load_experiment
from dualstage.data.dataset import load_split_table
from dualstage.data.phantom import generate
from dualstage.data.prepare import prepare
from dualstage.runtime.distributed import setup_runtime
from dualstage.segment.checkpoint import inference_checkpoint, save_checkpoint
from dualstage.segment.loop import FoldData, Trainer

__all__ = ["phantom_experiment", "save_model"]


def phantom_experiment(
    root: Path,
    n: int,
    source_size: int,
    resolution: int,
    encoder: str = "resnet34",
    decoder_channels: list[int] | None = None,
    batch_size: int = 8,
    train: dict | None = None,
    extra: dict | None = None,
) -> Experiment:
    """A prepared experiment over ``n`` phantoms of ``source_size`` px cached at ``resolution`` px.

    ``train``: keys merged into the train section (default one all-unfrozen soft Dice epoch,
    fp32 channels_last, workers 0, as the demo); ``extra``: other sections (predict, features).
    """
    data = root / "data"
    if not data.is_dir():
        generate(
            data, n, size=source_size, layout="png", seed=0, workers=2, progress=False, lesion_contrast=2.5
        )
    cfg = {
        "name": f"bench_{encoder}_{resolution}",
        "output_root": str(root / "models"),
        "data": {"source": str(data), "sizes": [resolution], "n_folds": 3},
        "model": {"encoder": encoder, "weights": "none", "decoder_channels": decoder_channels},
        "train": {
            "batch_size": {resolution: batch_size},
            "workers": 0,
            "amp": "off",
            "channels_last": True,
            "folds": "main",
            "phases": [{"resolution": resolution, "unfreeze": "all", "loss": "soft_dice", "epochs": 1}],
            **(train or {}),
        },
        **(extra or {}),
    }
    path = root / f"{cfg['name']}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    exp = load_experiment(path)
    if not (exp.folder / "prepared" / "splits.csv").is_file():
        prepare(data, exp.folder / "prepared", sizes=(resolution,), n_folds=3, workers=2, progress=False)
    return exp


def save_model(exp: Experiment, fold: str = "main", bias: float | None = -3.0) -> Path:
    """Write ``segmenter/<fold>/last.pt`` and ``best.pt`` of the experiment's freshly built U-Net.

    ``bias``: the segmentation head's bias, so the untrained maps are mostly near 0 as a trained
    model's are (PNG sizes and histograms then look like real ones); None keeps smp's init.
    """
    table = load_split_table(exp.folder / "prepared")
    ids = table["image_id"].tolist()
    data = FoldData(ids, ids[:1], table["has_pneumothorax"].to_numpy())
    out = exp.folder / "segmenter" / fold
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    trainer = Trainer(exp, fold, data, exp.folder / "prepared", out, setup_runtime("cpu"), progress=False)
    if bias is not None:
        with torch.no_grad():
            trainer.model.segmentation_head[0].bias.fill_(bias)
    payload = trainer.payload(None, None, exp.train.phases[-1].resolution, 0.0)
    save_checkpoint(out / "last.pt", payload)
    save_checkpoint(out / "best.pt", inference_checkpoint(payload))
    return out
