"""A synthetic cross-fitted experiment: N studies in K folds (maps, histograms, features, splits),
then the per-fold sweep, classifier and final decisions."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dualstage.config import Experiment, ReportConfig, TuneConfig
from dualstage.core import gating
from dualstage.crossfit.classifier import crossfit_classifier
from dualstage.crossfit.final import crossfit_final
from dualstage.crossfit.rules import crossfit_sweep

SIDE, N, K = 32, 90, 3
REPORT = ReportConfig(resamples=200)  # Table 2's bootstrap CI: 2000 resamples by default, 200 here


def _study(rng, signal: bool, positive: bool) -> tuple[np.ndarray, np.ndarray]:
    """(map, truth): the map is the segmenter's output (fixed by ``signal``), the truth the label."""
    q, t = rng.integers(0, 60, (SIDE, SIDE)).astype(np.uint8), np.zeros((SIDE, SIDE), bool)
    r, c, h = rng.integers(2, 14), rng.integers(2, 14), rng.integers(4, 12)
    if signal:
        q[r : r + h - 1, c : c + h] = rng.integers(140, 240)
    if positive:
        t[r : r + h, c : c + h] = True
    blob = rng.integers(0, 4)
    q[28 : 28 + blob, 2 : 2 + blob] = rng.integers(120, 220)  # false-positive specks of 0..9 px
    return q, t


def write_oof(exp: Path, labels: np.ndarray, signal: np.ndarray, seed: int = 0) -> None:
    """predictions/oof, features/oof and prepared/splits.csv of N studies in K folds."""
    rng = np.random.default_rng(seed)
    ids = np.array([f"s{i:03d}" for i in range(N)])
    folds = np.arange(N) % K
    pred, feat = exp / "predictions" / "oof", exp / "features" / "oof"
    (pred / "maps").mkdir(parents=True, exist_ok=True)
    feat.mkdir(parents=True, exist_ok=True)
    hists = []
    for i, image_id in enumerate(ids):
        q, t = _study(np.random.default_rng([seed, i]), bool(signal[i]), bool(labels[i]))
        Image.fromarray(q).save(pred / "maps" / f"{image_id}.png")
        hists.append(gating.histogram(q, t))
    gating.write_histograms(pred / "histograms.npz", ids, np.stack(hists), [SIDE] * N, [SIDE] * N)
    index = pd.DataFrame(
        {
            "image_id": ids,
            "split": "train",
            "fold_model": [f"fold_{f}" for f in folds],
            "height": SIDE,
            "width": SIDE,
            "has_truth": 1,
            "has_pneumothorax": labels,
            "true_area_px": [h[1].sum() for h in hists],
        }
    )
    index.to_csv(pred / "index.csv", index=False)
    X = rng.normal(size=(N, 12)).astype(np.float32)
    X[:, 0] += 1.5 * signal  # the image and map features: fixed, whatever the label says
    names = np.array([f"f{j}" for j in range(X.shape[1])])
    np.savez(feat / "features.npz", image_id=ids, X=X, feature_names=names)
    index[["image_id", "split", "fold_model", "has_truth", "has_pneumothorax"]].to_csv(
        feat / "index.csv", index=False
    )
    (exp / "prepared").mkdir(exist_ok=True)
    pd.DataFrame(
        {"image_id": ids, "group": ids, "has_pneumothorax": labels, "split": "train", "fold": folds}
    ).to_csv(exp / "prepared" / "splits.csv", index=False)


def run_crossfit(root: Path, labels: np.ndarray, signal: np.ndarray | None = None) -> Experiment:
    exp = Experiment(name="cf", output_root=str(root), tune=TuneConfig(n_iter=2, threads=1), report=REPORT)
    shutil.rmtree(exp.folder, ignore_errors=True)
    write_oof(exp.folder, labels, labels if signal is None else signal)
    crossfit_sweep(exp)
    crossfit_classifier(exp)
    crossfit_final(exp)
    return exp


def copy_crossfit(exp: Experiment, root: Path) -> Experiment:
    """A private copy under ``root`` of a (shared) cross-fitted experiment, for a test that writes."""
    copy = Experiment(name=exp.name, output_root=str(root), tune=exp.tune, report=exp.report)
    shutil.copytree(exp.folder, copy.folder, symlinks=True)
    return copy
