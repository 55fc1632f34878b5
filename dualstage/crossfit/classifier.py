"""Per-fold classifier and gate: for fold k, fitted on the other folds' out-of-fold features only.

For each fold k (:func:`dualstage.crossfit.search.tune_fold`): the ``tune`` section's search
(successive halving by default, or the plain random search; same candidates and scoring) over
inner folds made of the other folds (at most ``tune.inner_folds``), the best model refit on all
their rows; the winner's inner out-of-fold probabilities choose each gate mode's threshold with
fold k's own pixel rules; then fold k's studies get their probabilities. Writes
``crossfit/fold_<k>/classifier/`` (model.ubj, params.json and gate.json with ``fitted_ids``,
cv_results.csv, probabilities.csv).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dualstage.artifacts.feature_set import labels_of, load_feature_table, read_settings
from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.classify.gate import GATE_MODES, choose_gate
from dualstage.classify.tune import _save_search, check_labels, save_model, scorer_for, search_space
from dualstage.config import Experiment, to_dict
from dualstage.core.io import write_csv_atomic, write_json_atomic
from dualstage.core.progress import progress as progress_iter
from dualstage.crossfit.rules import read_fold_rules
from dualstage.crossfit.search import base_settings, tune_fold
from dualstage.crossfit.table2 import fold_table2_models, write_table2
from dualstage.data.splits import read_folds

__all__ = ["crossfit_classifier", "fit_fold"]


def fit_fold(exp: Experiment, k: int, data: dict, rules, progress: bool = False) -> dict:
    """Tune, refit and gate the classifier of fold k on the other folds' rows; returns its record."""
    t = exp.tune
    ids, X, y, folds = data["ids"], data["X"], data["y"], data["folds"]
    rows = folds != k
    n_pos, n_neg = check_labels(y[rows], folds[rows], f"{exp.dir.feature_set('oof')} without fold {k}")
    if t.scoring == "dice":
        raise ValueError("tune.scoring: dice is not available for cross-fitting; use roc_auc or f1")
    parts = scorer_for(t.scoring, exp.folder, ids[rows], t.dice_rule)
    res = tune_fold(t, X, y, folds, k, parts)
    inner = res["inner"]
    params = {
        "best_params": res["best_params"],
        "base": {"seed": t.seed, "max_bin": t.max_bin},
        "threads": t.threads,
    }
    fitted = ids[rows].tolist()
    gate = {}
    for mode in exp.gate.modes:
        rule = rules[k].rule(GATE_MODES[mode])
        counts = data["pset"].rule_counts(ids[rows], rule).T
        choice = choose_gate(inner, counts)
        gate[mode] = {
            "threshold": choice["threshold"],
            "pixel_rule": rule,
            "mean_dice_inner_oof": choice["mean_dice"],
            "chosen_on": f"inner out-of-fold probabilities of folds != {k}",
        }
    out = exp.dir.crossfit_fold(k) / "classifier"
    save_model(res["estimator"], out / "model.ubj")
    _save_search(out, res["cv_results"], search_space(n_neg / n_pos))
    keys = ("search", "halving_eta", "halving_min_rounds", "inner_folds")
    search = {key: v for key, v in to_dict(t).items() if key in keys}
    grouping = sorted(set(zip(folds[rows].tolist(), res["inner_folds"].tolist(), strict=True)))
    record = {
        **params,
        "best_cv_score": res["best_cv_score"],
        "default_cv_score": res["default_cv_score"],
        "scoring": t.scoring,
        "n_iter": t.n_iter,
        "n_rows": int(rows.sum()),
        "n_pos": n_pos,
        **search,
        "inner_fold_of": {str(f): int(g) for f, g in grouping},
        "search_seconds": round(res["search_seconds"], 3),
        "features": data["settings"],
        "fitted_ids": fitted,
    }
    write_json_atomic(out / "params.json", record)
    write_json_atomic(out / "gate.json", {**gate, "fitted_ids": fitted})
    frame = pd.DataFrame(
        {"image_id": ids[~rows], "fold": k, "has_pneumothorax": y[~rows], "probability": res["probabilities"]}
    )
    write_csv_atomic(frame, out / "probabilities.csv")
    table2 = None
    if t.table2:
        base = base_settings(t)  # the gate classifier's configuration: every Table 2 cell shares it
        table2 = fold_table2_models(exp, k, data, parts, (res["estimator"], inner), res["inner_folds"], base)
    return {"gate": gate, "probabilities": frame, "cv_score": record["best_cv_score"], "table2": table2}


def crossfit_classifier(exp: Experiment, progress: bool = False) -> dict:
    """Fit every fold's classifier and gate; returns {fold: {mode: threshold}}."""
    d = exp.dir
    fdir = d.feature_set("oof")
    ids, X, names, index = load_feature_table(fdir)
    data = {
        "ids": ids,
        "X": X,
        "y": labels_of(index, str(fdir)),
        "names": names,
        "folds": read_folds(d.splits_csv, ids, allow_test=True),
        "settings": read_settings(fdir),
        "pset": PredictionSet(d.prediction_set("oof")),
    }
    rules = read_fold_rules(d)
    missing = sorted(set(np.unique(data["folds"]).tolist()) - set(rules))
    if missing:
        raise FileNotFoundError(f"{d.crossfit}: no rules for folds {missing}; run `segment sweep` first")
    out, frames, table2 = {}, [], []
    for k in progress_iter(sorted(rules), desc="crossfit classifier", enabled=progress):
        res = fit_fold(exp, k, data, rules, progress)
        out[k] = {m: g["threshold"] for m, g in res["gate"].items()}
        frames.append(res["probabilities"])
        table2.append(res["table2"])
    if exp.tune.table2:
        write_table2(exp, table2)
    write_csv_atomic(pd.concat(frames, ignore_index=True), d.crossfit / "probabilities.csv")
    write_json_atomic(
        d.crossfit / "gate_thresholds.json",
        {m: {str(k): v[m] for k, v in out.items()} for m in exp.gate.modes},
    )
    return out
