"""Per-study gate counts under cross-fitting: each study scored with its own fold's rules.

Study i of fold k gets fold k's operating points (chosen on the other folds) applied to its
out-of-fold map, and the classifier gates use fold k's classifier and thresholds. The result has
the shape of :func:`dualstage.report.compare.load_gates` (plus ``fold``), so the same bootstrap,
tables and figures apply.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from dualstage.artifacts.classifier_files import load_gate
from dualstage.artifacts.gate_table import BAD_INPUT, Gate, describe_rule, gate_table
from dualstage.artifacts.gates import GATES, gate_name
from dualstage.artifacts.layout import ExperimentDir
from dualstage.core import gating
from dualstage.core.io import HandoffError
from dualstage.crossfit.collapse import collapse_check, validation_collapse
from dualstage.crossfit.rules import oof_histograms, read_fold_rules, subset
from dualstage.segment.sweep import make_grids

__all__ = ["crossfit_gates", "fold_decisions"]


def fold_decisions(exp: ExperimentDir, k: int, mode: str) -> tuple[pd.DataFrame, float] | None:
    """(probabilities of fold k's studies, fold k's threshold of ``mode``); None when not fitted."""
    cdir = exp.crossfit_fold(k) / "classifier"
    if not (cdir / "probabilities.csv").is_file() or not (cdir / "gate.json").is_file():
        return None
    gate = load_gate(cdir / "gate.json")
    if mode not in gate:
        return None
    path = cdir / "probabilities.csv"
    try:
        probs = pd.read_csv(path, dtype={"image_id": str})
        values = pd.to_numeric(probs["probability"], errors="coerce")
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise HandoffError(f"{path}: unreadable probabilities ({exc!r})") from None
    if values.isna().any() or not values.between(0, 1).all():
        raise HandoffError(f"{path}: probability: expected numbers in [0, 1]; re-run `classify tune`")
    return probs.assign(probability=values), float(gate[mode]["threshold"])


def _gate_counts(
    exp: ExperimentDir, spec, hist, folds, rules
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str, dict]:
    """(inter (N,), pred_area (N,), decision (N,) or None, text, params) of one gate over every
    study; params = {per_fold: {k: rule}, gate_threshold: {k: classifier threshold}}."""
    inter, area = np.zeros(folds.size, np.int64), np.zeros(folds.size, np.int64)
    decision = np.ones(folds.size, np.int64) if spec.classifier else None
    texts, per_fold, thresholds = [], {}, {}
    for k, op in rules.items():
        rows = folds == k
        if spec.rule not in op.rules:
            raise KeyError(f"no {spec.rule!r} rule in {exp.crossfit_fold(k) / 'operating_point.json'}")
        rule = per_fold[k] = op.rule(spec.rule)
        part = subset(hist, rows)
        i, a, _, _ = gating.rule_counts(part.hist, part.height, part.width, rule)
        if spec.classifier:
            found = fold_decisions(exp, k, spec.key)
            if found is None:
                raise FileNotFoundError(f"fold {k}: classifier not fitted (classify tune)")
            probs, thr = found
            thresholds[k] = thr
            p = probs.set_index("image_id")["probability"].reindex(part.image_id)
            if p.isna().any():
                raise ValueError(f"fold {k}: {int(p.isna().sum())} studies have no classifier probability")
            keep = (p.to_numpy() >= thr).astype(np.int64)
            decision[rows] = keep
            i, a = i * keep, a * keep
        inter[rows], area[rows] = i, a
        texts.append(f"fold {k}: {describe_rule(rule)}")
    params = {"per_fold": per_fold, **({"gate_threshold": thresholds} if spec.classifier else {})}
    return inter, area, decision, "; ".join(texts), params


def crossfit_gates(exp_dir: str | Path) -> dict:
    """Per-study counts of every gate over all out-of-fold studies (see the module docstring)."""
    exp = ExperimentDir(exp_dir)
    hist, folds = oof_histograms(exp)
    rules = read_fold_rules(exp)
    missing = sorted(set(np.unique(folds).tolist()) - set(rules))
    if missing:
        raise FileNotFoundError(f"{exp.crossfit}: no rules for folds {missing}; run `segment sweep` first")
    any_rule = {"rule": "threshold", "threshold": 0.5}  # true areas and sizes do not depend on the rule
    _, _, true_area, n_pix = gating.rule_counts(hist.hist, hist.height, hist.width, any_rule)
    gates, skipped = [], {}
    for spec in GATES:
        try:
            inter, area, decision, text, params = _gate_counts(exp, spec, hist, folds, rules)
        except HandoffError as exc:
            skipped[spec.label] = f"{BAD_INPUT}{exc}"
            continue
        except (FileNotFoundError, KeyError, ValueError) as exc:
            skipped[spec.label] = f"not run: {exc}"
            continue
        name = gate_name(spec, next(iter(params["per_fold"].values()), None))  # "no gate": one key
        gates.append(Gate(spec.key, name, text, params, inter, area, decision))
    chosen = "the other folds' out-of-fold maps (cross-fitted)"
    default = next(iter(rules.values())).rule("default")["threshold"]
    lowest = float(make_grids()["fine"].min())  # the lowest threshold any tuned rule may choose
    models = {f"fold_{k}": exp.model_dir(f"fold_{k}") for k in sorted(rules)}
    collapse = validation_collapse(models) + collapse_check(hist, folds, default, lowest)
    folds_named = [f"fold_{k}" for k in sorted(rules)]
    extra = {"fold": folds, "pred_set": "oof", "collapse": collapse}
    return gate_table(hist.image_id, true_area, n_pix, gates, skipped, chosen, folds_named, **extra)
