"""One function per pipeline step, each taking the resolved :class:`Experiment`.

The command line (``python -m dualstage.segment|classify|report``) and ``python -m dualstage
run`` call the same functions: the CLIs after applying their flags to the experiment, ``run``
with the experiment as loaded. Paths come from :class:`~dualstage.layout.ExperimentDir`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dualstage.config import Experiment, to_dict
from dualstage.io import write_json_atomic

__all__ = [
    "phantom_data",
    "prepare_experiment",
    "prepare_folder",
    "prediction_sets",
    "predict_experiment",
    "sweep_experiment",
    "features_experiment",
    "tune_experiment",
    "gate_experiment",
]


def phantom_data(exp: Experiment, progress: bool = False) -> tuple[Path, str]:
    """Generate the experiment's phantom dataset once; (its folder, a status line)."""
    from dualstage.data.phantom import generate

    d, folder = exp.data, exp.dir.phantoms
    params = {"n": d.phantom_n, "size": d.phantom_size, "layout": d.phantom_layout, "seed": d.phantom_seed,
              "lesion_contrast": d.phantom_lesion_contrast}  # fmt: skip
    marker = folder / "phantom.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        return folder, f"phantoms done already: {folder}"
    table = generate(folder, preview=exp.dir.phantom_preview, workers=d.workers, progress=progress, **params)
    write_json_atomic(marker, params)
    return (
        folder,
        f"{len(table)} phantom images ({int(table['has_pneumothorax'].sum())} positive) -> {folder}",
    )


def _prepare_settings(exp: Experiment) -> dict:
    keep = ("layout", "annotations", "sizes", "n_folds", "split_seed", "test_fraction", "val_fraction")
    return {k: v for k, v in to_dict(exp.data).items() if k in keep}


def prepare_experiment(exp: Experiment, strict: bool = False, progress: bool = False) -> dict:
    """Prepare ``data.source`` (or the phantoms) into ``models/<exp>/prepared``.

    When the source folder is absent but a prepare with the same settings finished, that prepare is
    used (a dataset may be unmounted after preparing it); otherwise the error names ``data.source``.
    """
    from dualstage.data.prepare import prepare

    d, out = exp.data, exp.dir.prepared
    record = out / "prepare.json"
    if d.source == "phantom":
        source, _ = phantom_data(exp, progress)
    else:
        source = Path(d.source)
        if not source.is_dir():
            done = json.loads(record.read_text()) if record.is_file() else {}
            if done.get("settings") == _prepare_settings(exp) and (out / "manifest.csv").is_file():
                return {**done, "decoded_now": 0, "note": f"data.source {source} not found: using {out}"}
            raise FileNotFoundError(
                f"data.source {str(source)!r} is not a folder: set data.source in the experiment YAML "
                "to your dataset folder, or pass --data DIR"
            )
    summary = prepare(
        source, out, sizes=d.sizes, layout=d.layout, annotations=d.annotations, strict=strict,
        workers=d.workers, n_folds=d.n_folds, seed=d.split_seed, test_fraction=d.test_fraction,
        val_fraction=d.val_fraction,
        progress=progress,
    )  # fmt: skip
    summary["settings"] = _prepare_settings(exp)
    write_json_atomic(record, summary)
    return summary


def prepare_folder(args: argparse.Namespace, progress: bool = False) -> dict:
    """``segment prepare --data D --out O`` without an experiment: the config's defaults + flags."""
    from dualstage.config import DataConfig, override
    from dualstage.data.prepare import prepare

    exp = override(Experiment(name="dataset", data=DataConfig(source=str(args.data))), "data",
                   sizes=args.sizes, layout=args.layout, annotations=args.annotations, workers=args.workers,
                   n_folds=args.folds, split_seed=args.seed, test_fraction=args.test_fraction,
                   val_fraction=args.val_fraction)  # fmt: skip
    d = exp.data
    return prepare(
        args.data, args.out, sizes=d.sizes, layout=d.layout, annotations=d.annotations, strict=args.strict,
        workers=d.workers, n_folds=d.n_folds, seed=d.split_seed, test_fraction=d.test_fraction,
        val_fraction=d.val_fraction, progress=progress,
    )  # fmt: skip


def prediction_sets(exp: Experiment) -> list[str]:
    """The prediction sets ``run`` makes: oof (fold models) and/or val (main model), and test."""
    sets = []
    if exp.train.folds in ("all", "both"):
        sets.append("oof")
    if exp.train.folds in ("main", "both"):
        sets.append("val")
    return [*sets, "test"]


def predict_experiment(exp: Experiment, split: str, progress: bool = False) -> dict:
    """``segment predict --split <split>`` into ``predictions/<split>`` with the experiment's options."""
    from dualstage.segment.predict import predict

    p = exp.predict
    return predict(
        exp.folder, exp.dir.prediction_set(split), split=split, tta=p.tta, checkpoint=p.checkpoint,
        batch_size=p.batch_size, workers=p.workers, progress=progress,
    )  # fmt: skip


def sweep_experiment(exp: Experiment, progress: bool = False) -> dict:
    """Operating points chosen on oof / val; ``default`` is ``train.val_threshold``."""
    from dualstage.segment.sweep import run_sweep

    d = exp.dir
    if exp.sweep.lcc:
        d.require(d.masks_csv, "segment prepare")
    return run_sweep(
        d.predictions, d.root, select_on=exp.sweep.select_on, lcc=exp.sweep.lcc,
        truth=d.masks_csv if exp.sweep.lcc else None, progress=progress,
        default_threshold=exp.train.val_threshold,
    )  # fmt: skip


def features_experiment(exp: Experiment, pred_set: str, progress: bool = False) -> dict:
    """``classify features`` of ``predictions/<set>`` into ``features/<set>`` with ``features.*``."""
    from dualstage.classify.features import extract_features

    d, f = exp.dir, exp.features
    pset = d.require(d.prediction_set(pred_set), f"segment predict (set {pred_set})")
    return extract_features(
        pset, d.feature_set(pred_set), prepared=d.prepared if d.prepared.is_dir() else None,
        weights=f.weights, image_size=f.image_size, batch_size=f.batch_size, workers=f.workers,
        progress=progress,
    )  # fmt: skip


def tune_experiment(exp: Experiment, progress: bool = False) -> dict:
    """``classify tune`` with ``tune.*``."""
    from dualstage.classify.tune import tune

    t = exp.tune
    return tune(
        exp.folder, n_iter=t.n_iter, scoring=t.scoring, seed=t.seed, n_jobs=t.n_jobs, max_bin=t.max_bin,
        dice_rule=t.dice_rule, threads=t.threads, progress=progress,
    )  # fmt: skip


def gate_experiment(exp: Experiment, pred_set: str = "test", progress: bool = False) -> dict:
    """Fit every ``gate.modes`` on oof, apply each to ``pred_set`` into ``final/<set>/<mode>/``."""
    from dualstage.classify.gate import apply_gate, fit_gate

    fit_gate(exp.folder, mode=list(exp.gate.modes), threads=exp.gate.threads)
    return {m: apply_gate(exp.folder, pred_set, mode=m, progress=progress) for m in exp.gate.modes}
