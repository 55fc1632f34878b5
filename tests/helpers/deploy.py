"""A tiny deployable cross-fitted experiment for the predictor and ``dualstage predict`` tests.

Phantom radiographs (64 px, 3 folds of 6 studies) cached at 32 px; per fold k: an untrained U-Net
(ResNet18, narrow decoder, 32 px) whose head bias makes every map bright (so the masks and SEGs
exist), a hand-set operating point and gate threshold, an XGBoost classifier fit on random rows;
``features/oof`` holds the real DenseNet trunk's (weights none) features of the cached images, so
the training profile built from it is the real thing. Seconds to build, no training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from xgboost import XGBClassifier

from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.classify.densenet import embed, load_densenet
from dualstage.classify.features import STAT_NAMES, feature_names
from dualstage.classify.tune import save_model
from dualstage.data.phantom import generate
from dualstage.segment import models
from dualstage.segment.checkpoint import FORMAT, save_checkpoint

SIZE, K, PER_FOLD = 32, 3, 6
SETTINGS = {"weights": "none", "weights_sha256": None, "image_size": SIZE, "version": 1}


def phantoms(folder: Path, n: int, seed: int, layout: str = "png") -> list[Path]:
    """``n`` 64 px phantom radiographs (PNG, or the challenge's DICOM tree); their paths."""
    table = generate(folder, n=n, size=64, layout=layout, seed=seed, progress=False, workers=1)
    return [folder / p for p in table["path"]]


def _segmenter(exp: Path, k: int, bias: float) -> None:
    torch.manual_seed(k)
    net = models.build_model("resnet18", "none", decoder_channels=[16, 8, 8, 8, 8])
    with torch.no_grad():
        net.segmentation_head[0].bias.fill_(bias)
    payload = {
        "format": FORMAT,
        "kind": "inference",
        "model": net.state_dict(),
        "encoder": "resnet18",
        "decoder_channels": [16, 8, 8, 8, 8],
        "normalization": {"mean": [0.5] * 3, "std": [0.25] * 3},
        "resolution": SIZE,
        "experiment": {},
        "fold": f"fold_{k}",
        "epoch": 0,
        "val_mean_dice": 0.0,
    }
    save_checkpoint(exp / "segmenter" / f"fold_{k}" / "last.pt", payload)  # best.pt falls back to it


def _fold_pipeline(exp: Path, k: int, gate: float, pixel: float) -> None:
    rules = {
        "threshold": {"rule": "threshold", "threshold": pixel},
        "threshold_area": {"rule": "threshold_area", "threshold": pixel, "min_area": 10.0},
    }
    OperatingPoints("test kit", 12, "threshold", rules).write(
        exp / "crossfit" / f"fold_{k}" / "operating_point.json"
    )
    cdir = exp / "crossfit" / f"fold_{k}" / "classifier"
    rng = np.random.default_rng(k)
    clf = XGBClassifier(n_estimators=2, max_depth=2, n_jobs=1)
    clf.fit(rng.normal(size=(20, len(feature_names()))).astype(np.float32), np.arange(20) % 2)
    save_model(clf, cdir / "model.ubj")
    params = {"features": SETTINGS, "best_params": {}, "base": {"seed": 0, "max_bin": 64}}
    (cdir / "params.json").write_text(json.dumps(params))
    entry = {"threshold": gate, "pixel_rule": rules["threshold"]}
    (cdir / "gate.json").write_text(json.dumps({"classifier": entry, "classifier_and_area": entry}))


def _training_features(exp: Path, sources: list[Path]) -> None:
    """prepared/cache/32, splits.csv and features/oof of the training phantoms."""
    ids = [f"t{i:02d}" for i in range(len(sources))]
    cache = exp / "prepared" / "cache" / str(SIZE) / "images"
    cache.mkdir(parents=True)
    small = []
    for image_id, path in zip(ids, sources, strict=True):
        image = Image.open(path).convert("L").resize((SIZE, SIZE), Image.BILINEAR, reducing_gap=2.0)
        image.save(cache / f"{image_id}.png")
        small.append(np.asarray(image))
    folds = np.arange(len(ids)) % K
    pd.DataFrame({"image_id": ids, "fold": folds, "split": "train"}).to_csv(
        exp / "prepared" / "splits.csv", index=False
    )
    with torch.no_grad():
        phi = embed(
            load_densenet("none")[0], torch.from_numpy(np.stack(small) / 255.0).float()[:, None]
        ).numpy()
    X = np.concatenate([phi, np.zeros_like(phi), np.zeros((len(ids), len(STAT_NAMES)))], axis=1).astype(
        np.float32
    )
    feat = exp / "features" / "oof"
    feat.mkdir(parents=True)
    np.savez(feat / "features.npz", image_id=np.array(ids), X=X, feature_names=np.array(feature_names()))
    index = pd.DataFrame(
        {
            "image_id": ids,
            "split": "train",
            "fold_model": [f"fold_{f}" for f in folds],
            "has_truth": 1,
            "has_pneumothorax": 0,
        }
    )
    index.to_csv(feat / "index.csv", index=False)
    (feat / "features.json").write_text(json.dumps({**SETTINGS, "cache_size": SIZE, "status": "complete"}))


def deployable(root: Path, gate: float = 0.0, pixel: float = 0.5, bias: float = 4.0) -> Path:
    """Build the experiment folder under ``root``; its path. ``gate``: every fold's classifier
    threshold (0: always present), ``pixel``: the rule's threshold, ``bias``: the U-Net head's bias."""
    exp = root / "exp"
    sources = phantoms(root / "train_phantoms", K * PER_FOLD, seed=0)
    _training_features(exp, sources)
    for k in range(K):
        _segmenter(exp, k, bias)
        _fold_pipeline(exp, k, gate, pixel)
    config = {
        "gate": {"modes": ["classifier"]},
        "predict": {"batch_size": 4},
        "train": {"checkpoint": "best"},
    }
    (exp / "experiment.json").write_text(json.dumps({"config": config}))
    return exp
