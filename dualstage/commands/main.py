"""``python -m dualstage run experiments/<name>.yaml [--steps ...]``: the whole pipeline;
``python -m dualstage predict IN... --exp models/<name> --out OUT``: new radiographs
(:mod:`dualstage.commands.new_images`);
``python -m dualstage external --exp models/<name> --data DIR``: its validation on another dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from dualstage.commands.experiment import add_experiment_argument, add_progress_argument
from dualstage.commands.external import run_external
from dualstage.commands.new_images import predict_new
from dualstage.commands.pipeline import __doc__ as steps_doc
from dualstage.commands.pipeline import run_pipeline
from dualstage.config import load_experiment
from dualstage.core.cli import run_cli


def _run(args: argparse.Namespace) -> int:
    run_pipeline(args.experiment, steps=args.steps, data=args.data)
    return 0


def _predict(args: argparse.Namespace) -> int:
    exp = args.exp
    if Path(exp).suffix.lower() in (".yaml", ".yml"):
        exp = load_experiment(exp).folder
    options = {"mode": args.mode, "device": args.device, "batch_size": args.batch_size}
    summary = predict_new(args.inputs, exp, args.out, progress=not args.no_progress, **options)
    print(json.dumps({k: v for k, v in summary.items() if k != "setup"}, indent=2))
    print(f"open {summary['page']} to review the {summary['studies']} studies", file=sys.stderr)
    return 0


def _external(args: argparse.Namespace) -> int:
    run_external(
        args.exp,
        args.data,
        name=args.set,
        layout=args.layout,
        annotations=args.annotations,
        area=args.area,
        folds=args.folds,
        progress=not args.no_progress,
    )
    return 0


def _external_parser(sub) -> None:
    p = sub.add_parser("external", help="validate a trained experiment on another annotated dataset")
    add_experiment_argument(p)
    p.add_argument("--data", required=True, help="the external dataset folder (any layout prepare reads)")
    p.add_argument("--set", default="external", help="its set name in the experiment (default: external)")
    p.add_argument("--layout", default="auto", help="auto | siim | png | folders (as segment prepare)")
    p.add_argument("--annotations", default=None, help="the RLE CSV, when --data holds several")
    p.add_argument("--area", default="auto", help="auto | grid | spacing: how a minimum area carries over")
    p.add_argument("--folds", type=int, default=None, help="the set's own folds (data.n_folds)")
    add_progress_argument(p)
    p.set_defaults(func=_external)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dualstage",
        description=steps_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run every step of an experiment, skipping finished ones")
    p.add_argument("experiment", help="experiments/<name>.yaml (or an experiment folder models/<name>)")
    p.add_argument("--steps", nargs="+", default=None, help="only these steps (in pipeline order)")
    p.add_argument("--data", default=None, help="dataset folder (overrides data.source)")
    p.set_defaults(func=_run)
    p = sub.add_parser(
        "predict",
        help="new radiographs in: final masks, decisions with reasons, overlays and a review page",
        description="New radiographs through an experiment's predictor (every fold pipeline and their vote "
        "in a cross-fitted experiment): OUT gets masks/, seg/ (DICOM inputs), overlays/, decisions.csv, "
        "rejected.csv and review.html. Resumable: finished studies are skipped.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="IN", help="image files, folders, DICOM study / series folders"
    )
    p.add_argument("--exp", required=True, help="experiment folder models/<name> (or its YAML)")
    p.add_argument("--out", required=True, help="output folder (created; not inside an input folder)")
    p.add_argument("--mode", default=None, help="gate mode (default: the experiment's first gate.modes)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:k]")
    p.add_argument(
        "--batch-size", type=int, default=None, help="images per batch (default: predict.batch_size)"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar / log lines")
    p.set_defaults(func=_predict)
    _external_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)
