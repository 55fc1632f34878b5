"""``python -m dualstage.segment <command>``: thin command line over importable functions."""

from __future__ import annotations

import argparse
import json
import sys

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
    )
    print(json.dumps(summary, indent=2))
    if summary["rejected"]:
        print(f"{summary['rejected']} item(s) rejected: see {args.out}/rejected.csv", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dualstage.segment", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("prepare", help="read a dataset folder into manifest, splits and a decoded cache")
    p.add_argument(
        "--data", required=True, help="dataset folder (SIIM DICOM tree + RLE CSV, PNG conversion, ...)"
    )
    p.add_argument("--out", required=True, help="output folder for manifest.csv, splits.csv, cache/")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024], help="cache resolutions (px)")
    p.add_argument("--layout", default="auto", choices=["auto", "siim", "png", "folders"])
    p.add_argument(
        "--annotations", default=None, help="RLE CSV to use (siim layout); default: found in --data"
    )
    p.add_argument("--strict", action="store_true", help="stop at the first bad item instead of reporting it")
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.add_argument("--folds", type=int, default=10, help="k of the k-fold ids over train+val")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_prepare)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
