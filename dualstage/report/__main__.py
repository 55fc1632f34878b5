"""``python -m dualstage.report --exp models/<exp>``: write the comparison report of one experiment."""

from __future__ import annotations

import argparse
import sys

from dualstage.cli import run_cli


def _report(args: argparse.Namespace) -> int:
    from dualstage.report import build_report

    res = build_report(args.exp, out=args.out, resamples=args.resamples, seed=args.seed, gallery=args.gallery)
    print(res["summary_markdown"])
    if res["best"]:
        print(f"\nbest gate on test: {res['best']}")
    for note in res["notes"]:
        print(f"note: {note}")
    print(f"report: {res['report_html']} ({res['report_md'].name}, {res['metrics_json'].name})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dualstage.report",
        description="Compare the gates on the held-out test split (mean Dice with bootstrap intervals), "
        "the papers' tables, figures and provenance: report.md, report.html, metrics.json, figures/.",
    )
    parser.add_argument("--exp", required=True, help="experiment folder, e.g. models/demo")
    parser.add_argument("--out", default=None, help="output folder (default <exp>/report)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument(
        "--gallery", type=int, default=8, help="studies in the disagreement gallery (default 8)"
    )
    parser.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
