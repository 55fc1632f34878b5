"""``python -m dualstage run experiments/<name>.yaml [--steps ...]``: the whole pipeline."""

from __future__ import annotations

import argparse
import sys

from dualstage.cli import run_cli


def _run(args: argparse.Namespace) -> int:
    from dualstage.pipeline import run_pipeline

    run_pipeline(args.experiment, steps=args.steps, data=args.data)
    return 0


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
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
