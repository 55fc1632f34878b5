"""Start-up of the commands and of prepare's workers, and Table 2's F1 threshold grid.

(a) ``python -m dualstage.segment`` imports its command module; segmentation-models-pytorch (timm,
    torchvision and with it torch._dynamo) is imported only when a loss or a model is built, and
    torchvision only with the DenseNet. Timed as whole processes, in turn: the command module alone
    vs the command module plus what it imported before (``segmentation_models_pytorch.losses``,
    ``torchvision``), and ``--help`` itself.
(b) A spawned ``segment prepare`` worker imports the module of the function it runs:
    ``dualstage.data.cache`` (with ``data.workers``) vs ``dualstage.data.prepare`` (what it imported
    before: the splits' scikit-learn).
(c) The per-fold F1-maximising threshold of Table 2 on 99 thresholds: one scikit-learn
    ``f1_score`` per threshold vs :func:`dualstage.core.metrics.f1_by_threshold` (one pass), on
    the paper's 9,607 development studies; the two give equal floats (checked).

Claims (merged into $DUALSTAGE_BENCH_RESULTS, default benchmarks/results.json):
cli_start_speedup, prepare_worker_start_speedup, f1_threshold_grid_speedup.
Run: .venv/bin/python benchmarks/bench_startup.py   (about 2 minutes on 2 cores)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from _results import alternate, median, ratio, record
from sklearn.metrics import f1_score

from dualstage.core.metrics import f1_by_threshold

ROOT = Path(__file__).resolve().parents[1]
CLI = "import dualstage.commands.segment_cli"
WORKER = "import dualstage.data.cache, dualstage.data.workers"
N_DEV = 9607  # the progressive paper's train + val studies (10,675 - 1,068 test)


def _process(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _help() -> None:
    cmd = [sys.executable, "-m", "dualstage.segment", "--help"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def starts(rounds: int) -> None:
    """(a) and (b): whole processes, timed in turn."""
    t = alternate(
        {
            "cli": lambda: _process(CLI),
            "cli_before": lambda: _process(f"{CLI}, segmentation_models_pytorch.losses, torchvision"),
            "help": _help,
            "worker": lambda: _process(WORKER),
            "worker_before": lambda: _process("import dualstage.data.prepare"),
        },
        rounds=rounds,
    )
    cli, worker = ratio(t, "cli_before", "cli"), ratio(t, "worker_before", "worker")
    print(
        f"command module: {median(t['cli']):.2f} s; with smp + torchvision (before) "
        f"{median(t['cli_before']):.2f} s: {cli['median']:.2f}x; --help {median(t['help']):.2f} s"
    )
    print(
        f"prepare worker imports: {median(t['worker']):.2f} s; dualstage.data.prepare (before) "
        f"{median(t['worker_before']):.2f} s: {worker['median']:.2f}x"
    )
    seconds = {k: round(median(v), 3) for k, v in t.items() if not k.endswith("_cpu")}
    record("cli_start_speedup", cli["median"], 1.3, "before s / now s", rounds=rounds, seconds=seconds)
    record("prepare_worker_start_speedup", worker["median"], 1.5, "before s / now s", rounds=rounds)


def f1_grid(rounds: int) -> None:
    """(c): 99 thresholds on N_DEV studies, sklearn per threshold vs one pass; equal floats."""
    rng = np.random.default_rng(0)
    y = (rng.random(N_DEV) < 0.22).astype(int)
    p = np.clip(0.35 * y + rng.random(N_DEV) * 0.65, 0, 1)
    grid = np.round(np.arange(1, 100) / 100, 2)
    out = {}
    t = alternate(
        {
            "sklearn": lambda: out.update(a=[f1_score(y, p >= g, zero_division=0) for g in grid]),
            "numpy": lambda: out.update(b=f1_by_threshold(p, y, grid).tolist()),
        },
        rounds=rounds,
    )
    same = out["a"] == out["b"]
    r = ratio(t, "sklearn", "numpy")
    print(
        f"F1 on 99 thresholds x {N_DEV} studies: sklearn {median(t['sklearn']):.3f} s, one pass "
        f"{median(t['numpy']):.4f} s: {r['median']:.0f}x; equal floats: {same}"
    )
    if not same:
        raise SystemExit("f1_by_threshold differs from sklearn's f1_score")
    record("f1_threshold_grid_speedup", r["median"], 10.0, "sklearn s / one pass s", studies=N_DEV)


def main() -> None:
    starts(rounds=5)
    f1_grid(rounds=5)


if __name__ == "__main__":
    main()
