"""``python -m dualstage.segment <command>``: thin command line over importable functions.

Every command takes the experiment as ``--exp`` (experiments/<name>.yaml or models/<name>); its
options come from the experiment's config and a flag given here overrides one value.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from dualstage.artifacts.prediction_set import check_input_set_name
from dualstage.artifacts.shard_records import parse_shard, torchrun_shard
from dualstage.commands.experiment import (
    add_experiment_argument,
    add_max_pixels_argument,
    add_progress_argument,
    add_shard_arguments,
    open_experiment,
    record_experiment,
    with_max_pixels,
)
from dualstage.commands.shards import dispatch
from dualstage.commands.steps import (
    predict_options,
    prepare_experiment,
    prepare_folder,
    sweep_experiment,
    with_data_flags,
)
from dualstage.config import override
from dualstage.core.cli import run_cli
from dualstage.crossfit.deploy import fold_set_names
from dualstage.segment.evaluate import evaluate
from dualstage.segment.predict import predict
from dualstage.segment.train import train


def _prepare(args: argparse.Namespace) -> int:
    if args.exp:
        exp = with_max_pixels(open_experiment(args.exp, data=args.data), args.max_pixels)
        exp = with_data_flags(exp, args)
        record_experiment(exp)
        summary = prepare_experiment(exp, strict=args.strict, progress=not args.no_progress)
        out = exp.dir.prepared
    else:
        if not (args.data and args.out):
            raise ValueError("give --exp (an experiment), or both --data and --out (a dataset alone)")
        summary = prepare_folder(args, progress=not args.no_progress)
        out = args.out
    print(json.dumps(summary, indent=2))
    if summary["rejected"]:
        print(f"{summary['rejected']} item(s) rejected: see {out}/rejected.csv", file=sys.stderr)
    return 0


def _train(args: argparse.Namespace) -> int:
    exp = open_experiment(args.exp)
    record_experiment(exp)
    fold = args.fold or {"main": "main", "all": "all", "both": "main"}[exp.train.folds]
    results = train(
        exp,
        fold=fold,
        resume=args.resume,
        stop_after=args.stop_after,
        device=args.device,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(results, indent=2))
    return 0


def default_set_name(split: str | None, folds: list[str] | None, name: str | None) -> str:
    """Set name: ``--set``, else the split (``test_fold_3`` with ``--folds fold_3``), else input."""
    if name:
        return name
    if split is None:
        return "input"
    return f"{split}_{'+'.join(folds)}" if folds and split != "oof" else split


def _predict(args: argparse.Namespace) -> int:
    if args.shard is not None:
        parse_shard(args.shard)  # a bad --shard fails before anything is loaded
    if args.input and args.set:
        check_input_set_name(args.set)
    exp = with_max_pixels(open_experiment(args.exp), args.max_pixels)
    exp = override(
        exp,
        "predict",
        tta=args.tta or None,
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        workers=args.workers,
        precision=args.precision,
    )
    if args.input and not args.out and not args.folds and _crossfit_only(exp):
        if args.shard or args.merge or torchrun_shard():
            raise ValueError(
                "--shard/--merge/torchrun with new images of a cross-fitted experiment: "
                "name one model (--folds fold_K) or --out, one set per run"
            )
        return _predict_per_fold(exp, args)
    out = args.out or exp.dir.prediction_set(default_set_name(args.split, args.folds, args.set))
    only = args.folds
    if only is None and args.split in ("val", "test") and exp.train.folds in ("main", "both"):
        only = ["main"]  # the holdout view: test maps of the kind its rules are chosen on (val, main)
    summary = dispatch(
        "predict",
        dict(
            exp_dir=exp.folder,
            out=out,
            split=args.split,
            input_dir=args.input,
            device=args.device,
            progress=not args.no_progress,
            only=only,
            strict=args.strict,
            **predict_options(exp),
        ),
        shard=args.shard,
        merge=args.merge,
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun rank 0 prints the merged summary
    print(json.dumps({**summary, "out": str(out)}, indent=2))
    if summary.get("rejected"):
        print(f"{summary['rejected']} file(s) rejected: see {out}/rejected.csv", file=sys.stderr)
    return 0


def _crossfit_only(exp) -> bool:
    """A cross-fitted experiment without a main model: new images go through every fold pipeline."""
    trained = exp.dir.trained_models()
    return bool(exp.dir.crossfit_folds()) and "main" not in trained


def _predict_per_fold(exp, args: argparse.Namespace) -> int:
    """``--input`` in a cross-fitted experiment: one map set per fold model, ``<set>_fold_<k>``."""
    name = args.set or "input"
    results = {}
    for k, set_name in fold_set_names(exp.dir, name).items():
        out = exp.dir.prediction_set(set_name)
        opts = {"device": args.device, "progress": not args.no_progress, "strict": args.strict}
        results[set_name] = predict(
            exp.folder, out, input_dir=args.input, only=[f"fold_{k}"], **opts, **predict_options(exp)
        )
    print(json.dumps(results, indent=2))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    exp = override(open_experiment(args.exp), "sweep", select_on=args.select_on, lcc=args.lcc or None)
    summary = sweep_experiment(exp, progress=not args.no_progress)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    folders = [open_experiment(e).folder for e in args.exp]
    summary = evaluate(folders, out=args.out)
    print(summary["text"])
    return 0


def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="read a dataset folder into manifest, splits and a decoded cache")
    add_experiment_argument(p, required=False)
    p.add_argument("--data", help="dataset folder (overrides data.source of --exp)")
    p.add_argument("--out", help="output folder without --exp (with --exp: models/<exp>/prepared)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="cache resolutions (px)")
    p.add_argument("--layout", default=None, choices=["auto", "siim", "png", "folders"])
    p.add_argument("--annotations", default=None, help="RLE CSV to use (siim layout); default: found in data")
    p.add_argument("--strict", action="store_true", help="stop at the first bad item instead of reporting it")
    p.add_argument("--workers", type=int, default=None, help="decoding processes")
    p.add_argument("--folds", type=int, default=None, help="k of the k-fold ids (data.n_folds)")
    p.add_argument("--seed", type=int, default=None, help="split seed (data.split_seed)")
    p.add_argument("--test-fraction", type=float, default=None, help="default: the paper's 1068 / 10675")
    p.add_argument("--val-fraction", type=float, default=None, help="default: the paper's 964 / 10675")
    add_max_pixels_argument(p)
    add_progress_argument(p)
    p.set_defaults(func=_prepare)


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train U-Nets with the experiment's curriculum (torchrun for several GPUs)"
    )
    add_experiment_argument(p)
    p.add_argument(
        "--fold", default=None, help="main (train/val split), K (one fold), or all; default train.folds"
    )
    p.add_argument("--resume", action="store_true", help="continue from last.pt exactly where it stopped")
    p.add_argument("--stop-after", type=int, default=None, help="stop after N epochs (checkpointed)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_progress_argument(p)
    p.set_defaults(func=_train)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="probability maps (+ truth histograms) for a split or new images")
    add_experiment_argument(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", choices=["oof", "val", "test", "all"])
    src.add_argument("--input", help="folder of new DICOM / PNG / JPEG radiographs (no annotations needed)")
    p.add_argument("--set", default=None, help="name of the prediction set (default: the split; input)")
    p.add_argument("--out", default=None, help="output folder (default: models/<exp>/predictions/<set>)")
    p.add_argument("--folds", nargs="+", default=None, help="only these models (main, fold_K); default: all")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--checkpoint", default=None, choices=["best", "last", "both"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument(
        "--precision", default=None, choices=["auto", "fp32", "bf16"], help="default predict.precision"
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--strict", action="store_true", help="--input: stop at the first bad file (exit 2), no rejected.csv"
    )
    add_shard_arguments(p, "index.csv, histograms.npz")
    add_max_pixels_argument(p)
    add_progress_argument(p)
    p.set_defaults(func=_predict)


def _add_sweep_evaluate(sub) -> None:
    p = sub.add_parser("sweep", help="threshold / minimum-area / triplet tables; operating_point.json")
    add_experiment_argument(p)
    p.add_argument("--select-on", default=None, choices=["auto", "oof", "val"], help="never test")
    p.add_argument("--lcc", action="store_true", help="also sweep the largest-connected-component filter")
    add_progress_argument(p)
    p.set_defaults(func=_sweep)

    p = sub.add_parser("evaluate", help="the papers' stage-one tables for one or more experiments")
    p.add_argument("--exp", nargs="+", required=True, help="experiment YAML(s) or folder(s)")
    p.add_argument(
        "--out", default=None, help="folder for the tables (default: the first experiment's evaluation/)"
    )
    p.set_defaults(func=_evaluate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dualstage.segment", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    _add_train(sub)
    _add_predict(sub)
    _add_sweep_evaluate(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)
