"""``python -m dualstage run experiments/<name>.yaml``: every step in order, skipping finished ones.

    data      phantoms (when data.source is "phantom") and prepare (skipped when finished)
    train     the fold models (train.folds: main | all | both)
    predict   oof (cross-fitting: every study by the fold model that never saw it) and/or
              val + test (holdout view: the main model)
    sweep     operating points: per fold on the other folds' oof maps; holdout on val
    evaluate  the papers' stage-one tables
    features  DenseNet features of image + map for every prediction set
    tune      XGBoost random search: per fold on the other folds' oof features; holdout on val
    gate      final masks of the classifier gates (gate.modes) for every study / the test split
    report    the comparison of every gate with bootstrap intervals (report.md / .html, summary.json)

One line per step with its time; the whole run's time at the end. ``--data DIR`` overrides
``data.source``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from dualstage.commands import steps
from dualstage.commands.experiment import open_experiment, record_experiment
from dualstage.config import Experiment
from dualstage.crossfit.compare import crossfit_gates
from dualstage.report import build_report
from dualstage.segment.evaluate import evaluate
from dualstage.segment.train import train

__all__ = ["run_pipeline", "STEPS"]


def _data(exp: Experiment) -> str:
    s = steps.prepare_experiment(exp)
    rate = f" ({s['images_per_second']} img/s)" if s.get("images_per_second") else ""
    note = f"; {s['note']}" if s.get("note") else ""
    return (
        f"{s['images']} images ({s['positive']} positive, {s['rejected']} rejected), splits "
        f"{s['split_counts']}, {s['decoded_now']} decoded now{rate}{note}"
    )


def _train(exp: Experiment) -> str:
    runs = []
    for fold in {"main": ["main"], "all": ["all"], "both": ["main", "all"]}[exp.train.folds]:
        resume = any(exp.dir.segmenter.glob("*/last.pt"))
        runs += train(exp, fold=fold, resume=resume, progress=False)
    return ", ".join(
        f"{r['fold']}: " + ("done before" if r.get("skipped") else f"{r['epochs_run']} epochs") for r in runs
    )


def _predict(exp: Experiment) -> str:
    parts = []
    for split in steps.prediction_sets(exp):
        s = steps.predict_experiment(exp, split)
        parts.append(f"{split} {s['images']} ({s['predicted_now']} new)")
    return ", ".join(parts)


def _sweep(exp: Experiment) -> str:
    s = steps.sweep_experiment(exp)
    parts = []
    if "crossfit" in s:
        rules = ", ".join(f"fold {k}: {r}" for k, r in s["crossfit"]["folds"].items())
        parts.append(f"cross-fitted best rules {rules}")
    if "holdout" in s:
        parts.append(f"holdout chosen on {s['holdout']['chosen_on']}: best rule {s['holdout']['best_rule']}")
    return "; ".join(parts)


def _evaluate(exp: Experiment) -> str:
    return f"tables in {evaluate([exp.folder])['out']}"


def _features(exp: Experiment) -> str:
    for split in steps.prediction_sets(exp):
        steps.features_experiment(exp, split)
    f = exp.features
    return f"sets {', '.join(steps.prediction_sets(exp))} (weights {f.weights}, {f.image_size} px)"


def _tune(exp: Experiment) -> str:
    if steps.tune_done(exp):
        return "done before"
    s = steps.tune_experiment(exp)
    parts = [f"{exp.tune.n_iter} candidates per search"]
    if "crossfit" in s:
        parts.append("per-fold gate thresholds " + str(s["crossfit"]))
    if "holdout" in s:
        parts.append(f"holdout best CV {exp.tune.scoring} {s['holdout']['best_cv_score']:.4f}")
    return "; ".join(parts)


def _gate(exp: Experiment) -> str:
    res = steps.gate_experiment(exp)
    parts = []
    for view, modes in res.items():
        n = next(iter(modes.values()))["n"]
        counts = " / ".join(str(r["n_nonempty"]) for r in modes.values())
        parts.append(f"{view}: {counts} non-empty masks of {n} ({' / '.join(modes)})")
    return "; ".join(parts)


def _report(exp: Experiment) -> str:
    r = exp.report
    res = build_report(
        exp.folder, resamples=r.resamples, seed=r.seed, gallery=r.gallery, gates=crossfit_gates
    )
    print(res["summary_markdown"], flush=True)
    for line in res["outcomes"]:
        print(f"[report  ] {line}", flush=True)
    for line in res["warnings"]:
        print(f"[report  ] WARNING: {line}", flush=True)
    return f"best distinct outcome: {res['best']}; report: {res['report_html']}"


STEPS: dict[str, Callable[[Experiment], str]] = {
    "data": _data,
    "train": _train,
    "predict": _predict,
    "sweep": _sweep,
    "evaluate": _evaluate,
    "features": _features,
    "tune": _tune,
    "gate": _gate,
    "report": _report,
}


def run_pipeline(path: str | Path, steps: list[str] | None = None, data: str | None = None) -> dict:
    """Run the experiment's steps in order; returns {step: (message, seconds)}."""
    exp = open_experiment(path, data=data)
    chosen = steps or list(STEPS)
    unknown = sorted(set(chosen) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; valid steps: {', '.join(STEPS)}")
    record_experiment(exp)
    t_all = time.perf_counter()
    results = {}
    for name in STEPS:
        if name not in chosen:
            continue
        t0 = time.perf_counter()
        message = STEPS[name](exp)
        results[name] = (message, round(time.perf_counter() - t0, 1))
        print(f"[{name:8s}] {results[name][1]:7.1f}s  {message}", flush=True)
    total = time.perf_counter() - t_all
    print(f"[total   ] {total:7.1f}s  {exp.name}: outputs in {exp.folder}", flush=True)
    results["total_seconds"] = round(total, 1)
    return results
