"""New radiographs through a cross-fitted experiment: every fold pipeline, then a majority vote.

A cross-fitted experiment has no single model whose rules were chosen on its own kind of map:
fold pipeline k is fold model k, its operating points and its classifier (all chosen on
single-model out-of-fold maps). So a new image goes through each fold pipeline unchanged —
model k's map (``predictions/<set>_fold_<k>``), its features (``features/<set>_fold_<k>``),
classifier k and its gate threshold, rule k — and the final mask keeps the pixels that more
than half of the K fold pipelines keep. ``final/<set>/<mode>/decisions.csv`` lists each fold's
probability and decision beside the vote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dualstage.artifacts.classifier_files import load_classifier, load_gate, read_params
from dualstage.artifacts.feature_set import check_same_settings, load_feature_table
from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.classify.dicom_seg import seg_sources, write_segs
from dualstage.classify.gate import GATE_MODES
from dualstage.core import gating, rle
from dualstage.core.io import write_csv_atomic, write_json_atomic, write_png_atomic
from dualstage.crossfit.rules import read_fold_rules

__all__ = ["fold_set_names", "crossfit_apply"]


def fold_set_names(exp: ExperimentDir, name: str) -> dict[int, str]:
    """{fold: ``<name>_fold_<k>``} for every fold with cross-fitted rules."""
    return {k: f"{name}_fold_{k}" for k in exp.crossfit_folds()}


def _fold_probabilities(exp: ExperimentDir, k: int, set_name: str) -> pd.Series:
    """Classifier k's probability of each image of ``features/<set_name>`` (index image_id)."""
    cdir = exp.crossfit_fold(k) / "classifier"
    fdir = exp.feature_set(set_name)
    check_same_settings(read_params(cdir).get("features") or {}, fdir, f"the classifier in {cdir}")
    ids, X, _, _ = load_feature_table(fdir)
    return pd.Series(load_classifier(cdir).predict_proba(X)[:, 1], index=ids)


def crossfit_apply(exp_dir: str | Path, name: str, mode: str, progress: bool = False) -> dict:
    """Final masks of the new-image set ``name`` under gate ``mode`` by majority of the fold pipelines."""
    exp = ExperimentDir(exp_dir)
    rules = read_fold_rules(exp)
    sets = fold_set_names(exp, name)
    missing = [s for s in sets.values() if not exp.feature_set(s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"{exp.features}: no features for {missing}; run `segment predict --input ... --set {name}` "
            f"and `classify features --set {name}` first"
        )
    probs, thresholds = {}, {}
    for k, s in sets.items():
        probs[k] = _fold_probabilities(exp, k, s)
        gate = load_gate(exp.crossfit_fold(k) / "classifier" / "gate.json")
        thresholds[k] = float(gate[mode]["threshold"])
    ids = [i for i in probs[next(iter(sets))].index if all(i in p.index for p in probs.values())]
    dst = exp.final(name, mode)
    rows, rles = [], []
    for image_id in ids:
        votes = []
        for k, s in sets.items():
            q = PredictionSet(exp.prediction_set(s)).read_map(image_id)
            keep = probs[k][image_id] >= thresholds[k]
            rule = rules[k].rule(GATE_MODES[mode])
            votes.append(gating.apply_rule(q, rule) if keep else np.zeros(q.shape, bool))
        mask = np.sum(votes, axis=0) * 2 > len(votes)  # more than half of the fold pipelines
        write_png_atomic(dst / "masks" / f"{image_id}.png", mask.astype(np.uint8) * 255)
        rles.append((image_id, rle.encode(mask)))
        row = {"image_id": image_id, "mask_area_px": int(mask.sum()), "decision": int(mask.any())}
        for k in sets:
            row[f"probability_fold_{k}"] = float(probs[k][image_id])
            row[f"decision_fold_{k}"] = int(probs[k][image_id] >= thresholds[k])
        rows.append(row)
    write_csv_atomic(pd.DataFrame(rles, columns=["ImageId", "EncodedPixels"]), dst / "submission.csv")
    write_csv_atomic(pd.DataFrame(rows), dst / "decisions.csv")
    first = PredictionSet(exp.prediction_set(next(iter(sets.values()))))
    segs = write_segs(dst, ids, seg_sources(exp.root, first), progress=progress)
    summary = {
        "set": name,
        "mode": mode,
        "protocol": "crossfit: majority of the fold pipelines",
        "n": len(ids),
        "n_nonempty": int(sum(r["decision"] for r in rows)),
        "thresholds": {str(k): v for k, v in thresholds.items()},
        "out_dir": str(dst),
        **segs,
    }
    write_json_atomic(dst / "summary.json", summary)
    return summary
