"""One function per pipeline step, each taking the resolved :class:`Experiment`.

The command line (``python -m dualstage.segment|classify|report``) and ``python -m dualstage
run`` call the same functions: the CLIs after applying their flags to the experiment, ``run``
with the experiment as loaded. Paths come from :class:`~dualstage.artifacts.layout.ExperimentDir`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dualstage.classify.gate import apply_gate, fit_gate
from dualstage.classify.tune import tune
from dualstage.commands.shards import dispatch
from dualstage.config import DataConfig, Experiment, override, to_dict
from dualstage.core.io import write_json_atomic
from dualstage.crossfit.classifier import crossfit_classifier
from dualstage.crossfit.final import crossfit_final
from dualstage.crossfit.rules import crossfit_sweep
from dualstage.data.phantom import generate
from dualstage.data.prepare import prepare
from dualstage.segment.predict import predict
from dualstage.segment.sweep import run_sweep

__all__ = [
    "phantom_data",
    "prepare_experiment",
    "prepare_folder",
    "prediction_sets",
    "predict_experiment",
    "sweep_experiment",
    "features_experiment",
    "tune_experiment",
    "tune_done",
    "gate_experiment",
]


def phantom_data(exp: Experiment, progress: bool = False) -> tuple[Path, str]:
    """Generate the experiment's phantom dataset once; (its folder, a status line)."""
    d, folder = exp.data, exp.dir.phantoms
    params = {
        "n": d.phantom_n,
        "size": d.phantom_size,
        "layout": d.phantom_layout,
        "seed": d.phantom_seed,
        "lesion_contrast": d.phantom_lesion_contrast,
        "subtle_share": d.phantom_subtle_share,
    }
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
    summary = prepare_data(source, out, d, strict, progress)
    summary["settings"] = _prepare_settings(exp)
    write_json_atomic(record, summary)
    return summary


def prepare_folder(args: argparse.Namespace, progress: bool = False) -> dict:
    """``segment prepare --data D --out O`` without an experiment: the config's defaults + flags."""
    exp = with_data_flags(Experiment(name="dataset", data=DataConfig(source=str(args.data))), args)
    return prepare_data(args.data, args.out, exp.data, args.strict, progress)


def with_data_flags(exp: Experiment, args: argparse.Namespace) -> Experiment:
    """``exp`` with ``segment prepare``'s flags over its ``data`` section (one spelling of them)."""
    flags = {"sizes": args.sizes, "layout": args.layout, "annotations": args.annotations}
    flags.update(workers=args.workers, n_folds=args.folds, split_seed=args.seed)
    flags.update(test_fraction=args.test_fraction, val_fraction=args.val_fraction)
    return override(exp, "data", **flags, max_pixels=getattr(args, "max_pixels", None))


def prepare_data(source, out, d, strict: bool, progress: bool) -> dict:
    """``data.prepare.prepare`` of ``source`` into ``out`` with the ``data`` section ``d``."""
    return prepare(
        source,
        out,
        sizes=d.sizes,
        layout=d.layout,
        annotations=d.annotations,
        strict=strict,
        workers=d.workers,
        n_folds=d.n_folds,
        seed=d.split_seed,
        test_fraction=d.test_fraction,
        val_fraction=d.val_fraction,
        progress=progress,
        max_pixels=d.max_pixels,
    )


def crossfit(exp: Experiment) -> bool:
    """Whether the experiment has the cross-fitted view (k fold models)."""
    return exp.train.folds in ("all", "both")


def holdout(exp: Experiment) -> bool:
    """Whether the experiment has the papers' holdout view (the main model: train / val / test)."""
    return exp.train.folds in ("main", "both")


def prediction_sets(exp: Experiment) -> list[str]:
    """The prediction sets ``run`` makes: oof (cross-fitting: every study by the fold model that
    never saw it) and/or val + test (holdout view: the main model alone, the kind its rules are
    chosen on)."""
    return (["oof"] if crossfit(exp) else []) + (["val", "test"] if holdout(exp) else [])


def predict_experiment(exp: Experiment, split: str, progress: bool = False) -> dict:
    """``segment predict --split <split>`` into ``predictions/<split>`` with the experiment's options
    (val and test with the main model only: matched with the maps its rules are chosen on)."""
    only = ["main"] if split in ("val", "test") and holdout(exp) else None
    out = exp.dir.prediction_set(split)
    return predict(exp.folder, out, split=split, progress=progress, only=only, **predict_options(exp))


def predict_options(exp: Experiment) -> dict:
    """The one spelling of ``predict``'s settings from the experiment's ``predict`` section (the
    checkpoint falls back to ``train.checkpoint``; the pixel limit is ``data.max_pixels``)."""
    p = exp.predict
    checkpoint = p.checkpoint or exp.train.checkpoint
    options = {"tta": p.tta, "checkpoint": checkpoint, "batch_size": p.batch_size, "workers": p.workers}
    return {**options, "precision": p.precision, "max_pixels": exp.data.max_pixels}


def sweep_experiment(exp: Experiment, progress: bool = False) -> dict:
    """Cross-fitted operating points per fold (oof), and the holdout view's (chosen on val).

    ``default`` is ``train.val_threshold``.
    """
    d = exp.dir
    if exp.sweep.lcc:
        d.require(d.masks_csv, "segment prepare")
    out = {}
    if crossfit(exp) and (d.prediction_set("oof") / "histograms.npz").is_file():
        out["crossfit"] = crossfit_sweep(exp, progress)
    if holdout(exp) and (d.prediction_set("val") / "histograms.npz").is_file():
        select = "val" if exp.sweep.select_on == "auto" else exp.sweep.select_on
        out["holdout"] = run_sweep(
            d.predictions,
            d.root,
            select_on=select,
            lcc=exp.sweep.lcc,
            truth=d.masks_csv if exp.sweep.lcc else None,
            progress=progress,
            default_threshold=exp.train.val_threshold,
        )
    if not out:
        raise FileNotFoundError(f"{d.predictions}: no oof or val predictions; run `segment predict` first")
    return out


def features_experiment(
    exp: Experiment,
    pred_set: str,
    progress: bool = False,
    shard: str | None = None,
    merge: bool = False,
    device: str = "auto",
) -> dict:
    """``classify features`` of ``predictions/<set>`` into ``features/<set>`` with ``features.*``;
    ``shard`` (``"I/N"``) / ``merge`` / ``torchrun``: see :mod:`dualstage.commands.shards`."""
    d = exp.dir
    pset = d.require(d.prediction_set(pred_set), f"segment predict (set {pred_set})")
    prepared = d.prepared if d.prepared.is_dir() else None
    kwargs = dict(pred_dir=pset, out_dir=d.feature_set(pred_set), prepared=prepared, device=device)
    return dispatch("features", {**kwargs, **features_options(exp), "progress": progress}, shard, merge)


def features_options(exp: Experiment) -> dict:
    """``classify features``'s settings from the experiment (one spelling of them)."""
    f = exp.features
    options = {"weights": f.weights, "image_size": f.image_size, "batch_size": f.batch_size}
    return {**options, "workers": f.workers, "precision": f.precision, "max_pixels": exp.data.max_pixels}


def tune_done(exp: Experiment) -> bool:
    """Whether every classifier ``tune`` makes exists (per-fold gates; the holdout classifier)."""
    d = exp.dir
    folds = d.crossfit_folds()
    done_cf = (
        not crossfit(exp)
        or bool(folds)
        and all((d.crossfit_fold(k) / "classifier" / "gate.json").is_file() for k in folds)
    )
    return bool(done_cf and (not holdout(exp) or (d.classifier / "model.ubj").is_file()))


def tune_experiment(exp: Experiment, progress: bool = False) -> dict:
    """Per-fold classifiers (cross-fitting) and the holdout classifier (on val), with ``tune.*``."""
    d, t, out = exp.dir, exp.tune, {}
    if crossfit(exp) and (d.feature_set("oof") / "features.npz").is_file():
        out["crossfit"] = crossfit_classifier(exp, progress)
    if holdout(exp) and (d.feature_set("val") / "features.npz").is_file():
        out["holdout"] = tune(
            exp.folder,
            n_iter=t.n_iter,
            scoring=t.scoring,
            seed=t.seed,
            n_jobs=t.n_jobs,
            max_bin=t.max_bin,
            dice_rule=t.dice_rule,
            threads=t.threads,
            progress=progress,
            train_set="val",
            search=t.search,
            halving=(t.halving_eta, t.halving_min_rounds),
        )
    if not out:
        raise FileNotFoundError(f"{d.features}: no oof or val features; run `classify features` first")
    return out


def gate_experiment(exp: Experiment, progress: bool = False) -> dict:
    """Final masks: cross-fitted over every study (final/oof/<mode>/) and the holdout view's
    gate fitted on val, applied to test (final/test/<mode>/)."""
    out = {}
    if crossfit(exp) and exp.dir.crossfit_folds():
        out["crossfit"] = crossfit_final(exp, progress)
    if holdout(exp) and (exp.dir.classifier / "model.ubj").is_file():
        fit_gate(exp.folder, mode=list(exp.gate.modes), threads=exp.gate.threads, train_set="val")
        out["holdout"] = {
            m: apply_gate(exp.folder, "test", mode=m, progress=progress) for m in exp.gate.modes
        }
    return out
