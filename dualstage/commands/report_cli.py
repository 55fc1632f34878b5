"""``python -m dualstage.report --exp models/<exp>`` (or its YAML): write the comparison report."""

from __future__ import annotations

import argparse
import sys

from dualstage.commands.experiment import add_experiment_argument, open_experiment
from dualstage.config import override
from dualstage.core.cli import run_cli
from dualstage.crossfit.compare import crossfit_gates
from dualstage.report import build_report


def _report(args: argparse.Namespace) -> int:
    exp = open_experiment(args.exp)
    r = override(exp, "report", resamples=args.resamples, seed=args.seed, gallery=args.gallery).report
    res = build_report(
        exp.folder,
        out=args.out,
        resamples=r.resamples,
        seed=r.seed,
        gallery=r.gallery,
        allow_partial=args.allow_partial,
        gates=crossfit_gates,
    )
    for bad in res["bad_inputs"]:
        print(f"PARTIAL REPORT (--allow-partial): rows missing, bad input: {bad}", file=sys.stderr)
    print(res["summary_markdown"])
    if res["best"]:
        where = "every study, cross-fitted" if res.get("split") == "crossfit" else "test split"
        print(f"\nbest distinct outcome ({where}): {res['best']}")
    for line in res["outcomes"]:
        print(line)
    for line in res["warnings"]:
        print(f"WARNING: {line}")
    for note in res["notes"]:
        print(f"note: {note}")
    print(f"report: {res['report_html']} ({res['report_md'].name}, {res['metrics_json'].name})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dualstage.report",
        description="Compare the gates on every study, cross-fitted (else on the held-out test split): "
        "mean Dice with bootstrap intervals, "
        "the papers' tables, figures and provenance: report.md, report.html, metrics.json, figures/.",
    )
    add_experiment_argument(parser)
    parser.add_argument("--out", default=None, help="output folder (default <exp>/report)")
    parser.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (report.resamples)")
    parser.add_argument("--seed", type=int, default=None, help="bootstrap seed (report.seed)")
    parser.add_argument("--gallery", type=int, default=None, help="studies in the gallery (report.gallery)")
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="write the report even when a row cannot be computed because an input file is bad (a banner at "
        "the top and summary.json say so); default: stop with the file's name, exit 2",
    )
    parser.set_defaults(func=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)
