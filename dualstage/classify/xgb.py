"""The project's XGBoost presence classifier settings and its gated-Dice score (one home for
:mod:`dualstage.classify.tune` and :mod:`dualstage.classify.halving`)."""

from __future__ import annotations

import numpy as np
import torch
import xgboost
from xgboost import XGBClassifier

from dualstage.core.metrics import summarize_counts

__all__ = ["resolve_device", "make_classifier", "gated_dice"]


def resolve_device(device: str = "auto") -> str:
    """Device for XGBoost: "auto" is "cuda" when torch sees a GPU and this XGBoost build has CUDA
    (the default ``xgboost-cpu`` has not), else "cpu"; others pass through."""
    if device != "auto":
        return device
    if not xgboost.build_info().get("USE_CUDA", False):
        return "cpu"

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_classifier(
    seed: int = 0, max_bin: int = 64, device: str = "auto", n_jobs: int | None = None, **params
) -> XGBClassifier:
    """XGBClassifier(tree_method="hist", logloss) with the project's fixed settings + ``params``."""
    return XGBClassifier(
        tree_method="hist",
        max_bin=max_bin,
        device=resolve_device(device),
        eval_metric="logloss",
        random_state=seed,
        n_jobs=n_jobs,
        **params,
    )


def gated_dice(y_true, prob, counts) -> float:
    """Challenge mean Dice of masks (counts (n, 4)) emptied where prob < 0.5."""
    keep = np.asarray(prob) >= 0.5
    c = np.asarray(counts)
    return float(summarize_counts(c[:, 0] * keep, c[:, 1] * keep, c[:, 2], c[:, 3])["mean_dice"])
