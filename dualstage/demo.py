"""``python -m dualstage.demo``: phantoms -> prepare, skipping what is already done.

Later stages (train, predict, sweep, classify, report) join this pipeline as they land.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dualstage.cli import run_cli
from dualstage.config import Experiment, load_experiment
from dualstage.io import write_json_atomic


def phantom_step(exp: Experiment) -> Path:
    """Generate the experiment's phantom dataset once; returns its folder."""
    from dualstage.data.phantom import generate

    d = exp.data
    folder = exp.folder / "phantoms"
    params = {"n": d.phantom_n, "size": d.phantom_size, "layout": d.phantom_layout, "seed": d.phantom_seed}
    marker = folder / "phantom.json"
    if marker.exists() and json.loads(marker.read_text()) == params:
        print(f"[phantoms] done already: {folder}")
        return folder
    t0 = time.perf_counter()
    table = generate(folder, preview=exp.folder / "phantom_preview.png", workers=d.workers, **params)
    write_json_atomic(marker, params)
    print(
        f"[phantoms] {len(table)} images ({int(table['has_pneumothorax'].sum())} positive) "
        f"in {time.perf_counter() - t0:.1f}s -> {folder}"
    )
    return folder


def prepare_step(exp: Experiment, data: Path) -> dict:
    """Prepare the dataset folder into ``models/<exp>/prepared``."""
    from dualstage.data.prepare import prepare

    d = exp.data
    out = exp.folder / "prepared"
    summary = prepare(
        data,
        out,
        sizes=d.sizes,
        layout=d.layout,
        annotations=d.annotations,
        workers=d.workers,
        n_folds=d.n_folds,
        seed=d.split_seed,
    )
    print(
        f"[prepare] {summary['images']} images ({summary['positive']} positive, "
        f"{summary['rejected']} rejected), "
        f"splits {summary['split_counts']}, {summary['decoded_now']} decoded now "
        f"({summary['images_per_second']} img/s) -> {out}"
    )
    return summary


def _main(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    exp = load_experiment(args.exp)
    data = phantom_step(exp) if exp.data.source == "phantom" else Path(exp.data.source)
    prepare_step(exp, data)
    print(f"[demo] finished in {time.perf_counter() - t0:.1f}s; outputs in {exp.folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dualstage.demo", description=__doc__)
    parser.add_argument("--exp", default="experiments/demo.yaml", help="experiment YAML")
    parser.set_defaults(func=_main)
    return run_cli(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
