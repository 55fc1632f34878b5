"""Per-fold operating points: for fold k, every rule is chosen on the other folds' OOF maps only.

Writes ``crossfit/fold_<k>/operating_point.json`` (with ``fitted_ids``) and the selection tables
``crossfit/fold_<k>/sweep/*.csv``. The maps are single-model out-of-fold maps, the same kind the
rules are then applied to (fold model k's maps of fold k).
"""

from __future__ import annotations

import numpy as np

from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.config import Experiment
from dualstage.core import gating
from dualstage.core.progress import progress as progress_iter
from dualstage.data.annotations import truth_from_rle_csv
from dualstage.data.splits import read_folds
from dualstage.segment.sweep import (
    best_rule,
    choose_rules,
    grid_record,
    make_grids,
    score_rules,
    sweep_tables,
    write_tables,
)

__all__ = ["oof_histograms", "subset", "fold_rules", "crossfit_sweep", "read_fold_rules"]


def oof_histograms(exp: ExperimentDir) -> tuple[gating.Histograms, np.ndarray]:
    """(histograms of every out-of-fold study (N,), fold of each (N,) int) from predictions/oof."""
    hist = PredictionSet(exp.prediction_set("oof")).histograms()
    folds = read_folds(exp.splits_csv, hist.image_id, allow_test=True)
    return hist, folds


def subset(hist: gating.Histograms, keep: np.ndarray) -> gating.Histograms:
    """The rows of ``hist`` where ``keep`` (N,) is true."""
    return gating.Histograms(hist.image_id[keep], hist.hist[keep], hist.height[keep], hist.width[keep])


def fold_rules(
    hist: gating.Histograms,
    folds: np.ndarray,
    k: int,
    grids: dict,
    default_threshold: float,
    lcc_truth=None,
    set_dir=None,
) -> tuple[OperatingPoints, dict]:
    """(operating points for fold k chosen on folds != k, their tables)."""
    train = subset(hist, folds != k)
    if train.image_id.size == 0:
        raise ValueError(f"fold {k}: no study in the other folds to choose its operating points on")
    tables = sweep_tables(train, grids, lcc_truth, set_dir)
    rules = choose_rules(tables, default_threshold)
    scored = score_rules(rules, train, tables)
    others = sorted(int(f) for f in np.unique(folds) if f != k)
    op = OperatingPoints(
        f"oof folds {others}",
        int(train.image_id.size),
        best_rule(scored),
        rules,
        scored,
        grid_record(grids, lcc_truth is not None),
        fitted_ids=tuple(train.image_id.tolist()),
    )
    return op, tables


def crossfit_sweep(exp: Experiment, progress: bool = False) -> dict:
    """Choose and write every fold's operating points; returns {fold: best rule}."""
    d = exp.dir
    hist, folds = oof_histograms(d)
    grids = make_grids()
    truth = truth_from_rle_csv(d.masks_csv) if exp.sweep.lcc else None
    out = {}
    for k in progress_iter(sorted(np.unique(folds).tolist()), desc="crossfit rules", enabled=progress):
        op, tables = fold_rules(
            hist, folds, k, grids, exp.train.val_threshold, truth, d.prediction_set("oof")
        )
        write_tables(tables, d.crossfit_fold(k) / "sweep")
        op.write(d.crossfit_fold(k) / "operating_point.json")
        out[int(k)] = op.best_rule
    # the single-model curves over every study, for the report only (nothing is chosen on them)
    write_tables(sweep_tables(hist, grids), d.sweep / "oof")
    return {"folds": out, "n_studies": int(hist.image_id.size)}


def read_fold_rules(exp: ExperimentDir) -> dict[int, OperatingPoints]:
    """{fold: its operating points}; FileNotFoundError naming the step when none were chosen."""
    folds = exp.crossfit_folds()
    if not folds:
        raise FileNotFoundError(f"{exp.crossfit}: no cross-fitted rules; run `segment sweep` first")
    return {k: OperatingPoints.read(exp.crossfit_fold(k) / "operating_point.json") for k in folds}
