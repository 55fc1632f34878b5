"""``python -m dualstage run experiments/<name>.yaml``: every step in order, skipping finished ones.

    data      phantoms (when data.source is "phantom") and prepare
    train     the fold models (pipeline.folds: main | all | both)
    predict   oof (fold models) and/or val (main), and test
    sweep     operating points chosen on oof / val
    evaluate  the papers' stage-one tables
    features  DenseNet features of image + map for every prediction set
    tune      XGBoost random search on the out-of-fold features (Table 2)
    gate      classifier gate fitted on oof, applied to test (classifier, and classifier AND area)
    report    the comparison of every gate on test with bootstrap intervals (report.md / .html)

One line per step with its time; the whole run's time at the end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from dualstage.config import Experiment, load_experiment
from dualstage.io import write_json_atomic

__all__ = ["run_pipeline", "STEPS"]


def phantom_step(exp: Experiment) -> Path:
    """Generate the experiment's phantom dataset once; returns its folder."""
    from dualstage.data.phantom import generate

    d = exp.data
    folder = exp.folder / "phantoms"
    params = {
        "n": d.phantom_n,
        "size": d.phantom_size,
        "layout": d.phantom_layout,
        "seed": d.phantom_seed,
        "lesion_contrast": d.phantom_lesion_contrast,
    }
    marker = folder / "phantom.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        print(f"[phantoms] done already: {folder}")
        return folder
    t0 = time.perf_counter()
    table = generate(folder, preview=exp.folder / "phantom_preview.png", workers=d.workers, **params)
    write_json_atomic(marker, params)
    print(
        f"[phantoms] {len(table)} images ({int(table['has_pneumothorax'].sum())} positive) "
        f"in {time.perf_counter() - t0:.1f}s -> {folder}"
    )
    return folder


def prepare_step(exp: Experiment, data: Path) -> dict:
    """Prepare the dataset folder into ``models/<exp>/prepared``."""
    from dualstage.data.prepare import prepare

    d = exp.data
    out = exp.folder / "prepared"
    summary = prepare(
        data,
        out,
        sizes=d.sizes,
        layout=d.layout,
        annotations=d.annotations,
        workers=d.workers,
        n_folds=d.n_folds,
        seed=d.split_seed,
        test_fraction=d.test_fraction,
        val_fraction=d.val_fraction,
    )
    print(
        f"[prepare] {summary['images']} images ({summary['positive']} positive, "
        f"{summary['rejected']} rejected), "
        f"splits {summary['split_counts']}, {summary['decoded_now']} decoded now "
        f"({summary['images_per_second']} img/s) -> {out}"
    )
    return summary


def _data(exp: Experiment) -> str:
    data = phantom_step(exp) if exp.data.source == "phantom" else Path(exp.data.source)
    summary = prepare_step(exp, data)
    return f"{summary['images']} images, {summary['positive']} positive, {summary['rejected']} rejected"


def _fold_args(exp: Experiment) -> list[str]:
    return {"main": ["main"], "all": ["all"], "both": ["main", "all"]}[exp.pipeline.folds]


def _train(exp: Experiment) -> str:
    from dualstage.segment.train import train

    runs = []
    for fold in _fold_args(exp):
        resume = any((exp.folder / "segmenter").glob("*/last.pt"))
        runs += train(exp, fold=fold, resume=resume)
    done = [
        f"{r['fold']}: " + ("done before" if r.get("skipped") else f"{r['epochs_run']} epochs") for r in runs
    ]
    return ", ".join(done)


def _prediction_sets(exp: Experiment) -> list[str]:
    sets = []
    if exp.pipeline.folds in ("all", "both"):
        sets.append("oof")
    if exp.pipeline.folds in ("main", "both"):
        sets.append("val")
    return [*sets, "test"]


def _predict(exp: Experiment) -> str:
    from dualstage.segment.predict import predict

    parts = []
    for split in _prediction_sets(exp):
        s = predict(
            exp.folder,
            exp.folder / "predictions" / split,
            split=split,
            tta=exp.pipeline.tta,
            batch_size=exp.pipeline.predict_batch_size,
            workers=0,
            progress=False,
        )
        parts.append(f"{split} {s['images']} ({s['predicted_now']} new)")
    return ", ".join(parts)


def _sweep(exp: Experiment) -> str:
    from dualstage.segment.sweep import run_sweep

    truth = exp.folder / "prepared" / "masks.csv" if exp.pipeline.lcc else None
    s = run_sweep(exp.folder / "predictions", exp.folder, lcc=exp.pipeline.lcc, truth=truth, progress=False)
    return f"chosen on {s['chosen_on']}: best rule {s['best_rule']}"


def _evaluate(exp: Experiment) -> str:
    from dualstage.segment.evaluate import evaluate

    return f"tables in {evaluate([exp.folder])['out']}"


def _features(exp: Experiment) -> str:
    from dualstage.classify.features import extract_features

    c = exp.classify
    for split in _prediction_sets(exp):
        extract_features(
            exp.folder / "predictions" / split,
            exp.folder / "features" / split,
            weights=c.weights,
            image_size=c.image_size,
            batch_size=c.batch_size,
            progress=False,
        )
    return f"sets {', '.join(_prediction_sets(exp))} (weights {c.weights}, {c.image_size} px)"


def _tune(exp: Experiment) -> str:
    from dualstage.classify.tune import tune

    if (exp.folder / "classifier" / "model.ubj").exists():
        return "done before"
    c = exp.classify
    s = tune(
        exp.folder, n_iter=c.n_iter, scoring=c.scoring, max_bin=c.max_bin, threads=c.threads, progress=False
    )
    return f"{c.n_iter} candidates, best CV {c.scoring} {s.get('best_cv_score', float('nan')):.4f}"


def _gate(exp: Experiment) -> str:
    from dualstage.classify.gate import apply_gate, fit_gate

    fit_gate(exp.folder, mode="both", threads=exp.classify.threads)
    a = apply_gate(exp.folder, "test", mode="classifier", progress=False)
    b = apply_gate(
        exp.folder, "test", mode="classifier_and_area", out=exp.folder / "final" / "test_area", progress=False
    )
    return f"test: {a['n_nonempty']} / {b['n_nonempty']} non-empty masks of {a['n']} (classifier / and area)"


def _report(exp: Experiment) -> str:
    from dualstage.report import build_report

    res = build_report(exp.folder)
    print(res["summary_markdown"], flush=True)
    return f"best gate: {res['best']}; report: {res['report_html']}"


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


def run_pipeline(path: str | Path, steps: list[str] | None = None) -> dict:
    """Run the experiment's steps in order; returns {step: (message, seconds)}."""
    exp = load_experiment(path)
    chosen = steps or list(STEPS)
    unknown = sorted(set(chosen) - set(STEPS))
    if unknown:
        raise ValueError(f"unknown step(s) {unknown}; valid steps: {', '.join(STEPS)}")
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
