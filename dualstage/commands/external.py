"""``python -m dualstage external``: a trained experiment validated on another annotated dataset.

    python -m dualstage external --exp models/<exp> --data DIR [--set NAME] [--layout auto|siim|png|folders]
                                 [--annotations CSV] [--area auto|grid|spacing] [--folds K]

Steps (each resumable; finished work is skipped):

    prepare    DIR -> models/<exp>/external/<set>/prepared (any layout ``prepare`` reads; the
               experiment's cache sizes; the set's own patient-grouped folds, ``--folds`` or data.n_folds)
    predict    the deployed pipeline's maps: the main model (``predictions/<set>``) or every fold
               model (``predictions/<set>_fold_<k>``), with truth histograms
    features   the classifier's features of each of those sets (the experiment's ``features`` settings)
    score      frozen and re-chosen gates per study (:mod:`dualstage.crossfit.external_eval`)
    report     the experiment's report, with a section and ``summary.json`` keys per external set
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from dualstage.artifacts.operating_points import configured_threshold
from dualstage.artifacts.prediction_set import check_input_set_name
from dualstage.classify.features import extract_features
from dualstage.commands.experiment import open_experiment
from dualstage.commands.steps import features_options, predict_options, prepare_data
from dualstage.config import Experiment
from dualstage.crossfit.compare import crossfit_gates
from dualstage.crossfit.external import AREA_MODES, Pipeline, deployed_pipelines
from dualstage.crossfit.external_eval import evaluate_set
from dualstage.data.ids import check_image_id
from dualstage.report import build_report
from dualstage.report.document import markdown_table
from dualstage.report.external import transfer_frame
from dualstage.report.readme import LABELS
from dualstage.segment.predict import predict

__all__ = ["run_external", "check_set_name"]


def check_set_name(name: str) -> str:
    """``name`` for an external set: a safe file name the pipeline does not own (ValueError otherwise)."""
    check_image_id(name)
    return check_input_set_name(name)


def _prepare(exp: Experiment, data: Path, name: str, opts: dict, progress: bool) -> str:
    d = dataclasses.replace(exp.data, layout=opts["layout"], annotations=opts["annotations"])
    d = dataclasses.replace(d, n_folds=opts["folds"] or d.n_folds)
    s = prepare_data(data, exp.dir.external_prepared(name), d, False, progress)
    return f"{s['images']} studies ({s['positive']} positive, {s['rejected']} rejected), layout {s['layout']}"


def _predict(exp: Experiment, name: str, pipes: list[Pipeline], progress: bool) -> str:
    parts, prepared = [], exp.dir.external_prepared(name)
    for pipe in pipes:
        out = exp.dir.prediction_set(pipe.set_name(name))
        opts = {"split": "all", "only": [pipe.name], "progress": progress, "prepared": prepared}
        s = predict(exp.folder, out, **opts, **predict_options(exp))
        parts.append(f"{pipe.name} {s['predicted_now']} new")
    return ", ".join(parts)


def _features(exp: Experiment, name: str, pipes: list[Pipeline], progress: bool) -> str:
    parts = []
    if not all((pipe.classifier / "model.ubj").is_file() for pipe in pipes):
        return "no classifier: classifier gates not scored"
    for pipe in pipes:
        set_name = pipe.set_name(name)
        s = extract_features(
            exp.dir.prediction_set(set_name),
            exp.dir.feature_set(set_name),
            prepared=exp.dir.external_prepared(name),
            progress=progress,
            **features_options(exp),
        )
        parts.append(f"{pipe.name} {s['extracted_now']} new")
    return ", ".join(parts)


def _report(exp: Experiment, name: str) -> tuple[str, dict]:
    r = exp.report
    res = build_report(
        exp.folder, resamples=r.resamples, seed=r.seed, gallery=r.gallery, gates=crossfit_gates
    )
    summary = res["external"][name]
    print(markdown_table(transfer_frame(summary, LABELS)), flush=True)
    return f"{res['report_html']}", summary


def _score(exp: Experiment, name: str, default: float, area: str, progress: bool) -> str:
    record = evaluate_set(exp.folder, name, exp.train.folds, default, area, progress)
    return f"{record['n']} studies, {record['deployed']}; {record['area']['mode']} areas"


def run_external(
    exp_arg: str | Path,
    data: str | Path,
    name: str = "external",
    layout: str = "auto",
    annotations: str | None = None,
    area: str = "auto",
    folds: int | None = None,
    progress: bool = True,
) -> dict:
    """Prepare, predict, score and report one annotated external set; returns its summary.json entry."""
    exp = open_experiment(exp_arg)
    check_set_name(name)
    if area not in AREA_MODES:
        raise ValueError(f"--area {area!r}: valid choices: {', '.join(AREA_MODES)}")
    if not Path(data).is_dir():
        raise FileNotFoundError(f"--data {data}: not a folder")
    pipes = deployed_pipelines(exp.dir, exp.train.folds)
    opts = {"layout": layout, "annotations": annotations, "folds": folds}
    default = configured_threshold(exp.folder)
    steps = {
        "prepare": lambda: _prepare(exp, Path(data), name, opts, progress),
        "predict": lambda: _predict(exp, name, pipes, progress),
        "features": lambda: _features(exp, name, pipes, progress),
        "score": lambda: _score(exp, name, default, area, progress),
    }
    t_all = time.perf_counter()
    for step, fn in steps.items():
        t0 = time.perf_counter()
        message = fn()
        print(f"[{step:8s}] {time.perf_counter() - t0:7.1f}s  {message}", flush=True)
    t0 = time.perf_counter()
    where, summary = _report(exp, name)
    print(f"[report  ] {time.perf_counter() - t0:7.1f}s  {where}", flush=True)
    print(f"[total   ] {time.perf_counter() - t_all:7.1f}s  external set {name} of {exp.name}", flush=True)
    return summary
