"""``python -m dualstage run experiments/<name>.yaml [--steps ...]``: the whole pipeline;
``python -m dualstage external --exp models/<name> --data DIR``: its validation on another dataset."""

from __future__ import annotations

import argparse
import sys

from dualstage.cli import run_cli


def _run(args: argparse.Namespace) -> int:
    from dualstage.pipeline import run_pipeline

    run_pipeline(args.experiment, steps=args.steps, data=args.data)
    return 0


def _external(args: argparse.Namespace) -> int:
    from dualstage.external import run_external

    run_external(args.exp, args.data, name=args.set, layout=args.layout, annotations=args.annotations,
                 area=args.area, folds=args.folds, progress=not args.no_progress)  # fmt: skip
    return 0


def _external_parser(sub) -> None:
    from dualstage.experiment import add_experiment_argument, add_progress_argument

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
    from dualstage.pipeline import __doc__ as steps_doc

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
    _external_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
