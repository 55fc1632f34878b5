"""``python -m dualstage.segment <command>``: thin command line over importable functions."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dualstage.cli import run_cli


def _prepare(args: argparse.Namespace) -> int:
    from dualstage.data.prepare import prepare

    summary = prepare(
        args.data,
        args.out,
        sizes=tuple(args.sizes),
        layout=args.layout,
        annotations=args.annotations,
        strict=args.strict,
        workers=args.workers,
        n_folds=args.folds,
        seed=args.seed,
        test_fraction=args.test_fraction,
        val_fraction=args.val_fraction,
        progress=sys.stderr.isatty(),  # a bar for people; logs and pipes get the summary only
    )
    print(json.dumps(summary, indent=2))
    if summary["rejected"]:
        print(f"{summary['rejected']} item(s) rejected: see {args.out}/rejected.csv", file=sys.stderr)
    return 0


def _train(args: argparse.Namespace) -> int:
    from dualstage.config import load_experiment
    from dualstage.segment.train import train

    results = train(
        load_experiment(args.config),
        fold=args.fold,
        resume=args.resume,
        stop_after=args.stop_after,
        device=args.device,
        progress=not args.no_progress,
    )
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(results, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from dualstage.segment.predict import predict

    summary = predict(
        args.model,
        args.out,
        split=args.split,
        input_dir=args.input,
        tta=args.tta,
        checkpoint=args.checkpoint,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from dualstage.segment.sweep import run_sweep

    out = args.out or str(Path(args.pred).parent)
    truth = args.truth or Path(args.pred).parent / "prepared" / "masks.csv"
    if args.lcc and not Path(truth).exists():
        raise FileNotFoundError(f"--lcc needs the true masks: {truth} not found (pass --truth masks.csv)")
    summary = run_sweep(
        args.pred, out, select_on=args.select_on, lcc=args.lcc, truth=truth if args.lcc else None
    )
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from dualstage.segment.evaluate import evaluate

    summary = evaluate(args.exp, out=args.out)
    print(summary["text"])
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dualstage.segment", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="read a dataset folder into manifest, splits and a decoded cache")
    p.add_argument(
        "--data", required=True, help="dataset folder (SIIM DICOM tree + RLE CSV, PNG conversion, ...)"
    )
    p.add_argument("--out", required=True, help="output folder for manifest.csv, splits.csv, cache/")
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[256, 512, 1024], help="cache sides, each in [32, 4096] px"
    )
    p.add_argument("--layout", default="auto", choices=["auto", "siim", "png", "folders"])
    p.add_argument(
        "--annotations", default=None, help="RLE CSV to use (siim layout); default: found in --data"
    )
    p.add_argument("--strict", action="store_true", help="stop at the first bad item instead of reporting it")
    p.add_argument("--workers", type=int, default=2, help="decoding processes (0 or 1: in-process)")
    p.add_argument("--folds", type=int, default=10, help="k (>= 2) of the k-fold ids over train+val")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--test-fraction", type=float, default=1068 / 10675, help="default: the paper's 1068 / 10675"
    )
    p.add_argument("--val-fraction", type=float, default=964 / 10675, help="default: the paper's 964 / 10675")
    p.set_defaults(func=_prepare)

    p = sub.add_parser(
        "train", help="train a U-Net with the experiment's curriculum (torchrun for several GPUs)"
    )
    p.add_argument("--config", required=True, help="experiments/<name>.yaml")
    p.add_argument("--fold", default="main", help="main (train/val split), K (one fold), or all")
    p.add_argument("--resume", action="store_true", help="continue from last.pt exactly where it stopped")
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after N epochs (checkpointed), e.g. for a time slot",
    )
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.set_defaults(func=_train)

    p = sub.add_parser("predict", help="probability maps (+ truth histograms) for a split or new images")
    p.add_argument("--model", required=True, help="models/<exp> (all its fold models) or one fold folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", choices=["oof", "val", "test", "all"])
    src.add_argument("--input", help="folder of new DICOM / PNG / JPEG radiographs (no annotations needed)")
    p.add_argument("--out", required=True, help="output folder, e.g. models/<exp>/predictions/test")
    p.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    p.add_argument("--checkpoint", default="best", choices=["best", "last", "both"])
    p.add_argument("--folds", nargs="+", default=None, help="only these models (main, fold_K); default: all")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_predict)

    p = sub.add_parser("sweep", help="threshold / minimum-area / triplet tables; operating_point.json")
    p.add_argument("--pred", required=True, help="models/<exp>/predictions (holding oof/ or val/, and test/)")
    p.add_argument(
        "--out", default=None, help="where operating_point.json and sweep/ go (default: --pred's parent)"
    )
    p.add_argument("--select-on", default="auto", help="auto (oof, else val) | oof | val; never test")
    p.add_argument("--lcc", action="store_true", help="also sweep the largest-connected-component filter")
    p.add_argument(
        "--truth", default=None, help="true masks CSV for --lcc (default: <exp>/prepared/masks.csv)"
    )
    p.set_defaults(func=_sweep)

    p = sub.add_parser("evaluate", help="the papers' tables for one or more experiments")
    p.add_argument("--exp", nargs="+", required=True, help="models/<exp> folder(s)")
    p.add_argument(
        "--out", default=None, help="folder for the tables (default: the first experiment's evaluation/)"
    )
    p.set_defaults(func=_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
