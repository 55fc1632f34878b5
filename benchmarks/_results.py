"""Shared helpers of the benchmark scripts: record a claim, time alternately, describe the machine.

Every ``benchmarks/bench_*.py`` that checks a target writes it with :func:`record` into one JSON
file (``$DUALSTAGE_BENCH_RESULTS``, default ``benchmarks/results.json``)::

    {claim: {"measured": x, "target": y, "unit": "...", "op": ">=", "met": true, "date": "...", ...}}

A claim recorded again replaces its old entry; the other claims are kept (merge). Writes are
atomic (a temporary file moved into place) under an exclusive lock, so scripts may run at once.
``benchmarks/results_md.py`` turns the file into ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["results_path", "record", "load", "alternate", "ratio", "median", "machine", "OPS"]

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda measured, target: measured >= target,
    ">": lambda measured, target: measured > target,
    "<=": lambda measured, target: measured <= target,
    "<": lambda measured, target: measured < target,
}


def results_path() -> Path:
    """``$DUALSTAGE_BENCH_RESULTS``, else ``benchmarks/results.json`` beside this file."""
    env = os.environ.get("DUALSTAGE_BENCH_RESULTS")
    return Path(env) if env else Path(__file__).resolve().parent / "results.json"


def load(path: str | Path | None = None) -> dict:
    """The recorded claims ({} when the file does not exist yet)."""
    path = Path(path) if path is not None else results_path()
    return json.loads(path.read_text()) if path.is_file() else {}


def _plain(value: object) -> object:
    """JSON-able ``value``: numpy scalars made plain, non-finite floats as None."""
    if hasattr(value, "item") and not isinstance(value, list | dict | str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def record(
    claim: str,
    measured: float,
    target: float,
    unit: str,
    op: str = ">=",
    path: str | Path | None = None,
    **info: object,
) -> dict:
    """Merge ``claim`` into the results file (replacing an older entry of it); returns the entry.

    ``op``: how ``measured`` must compare with ``target`` for the claim to be met. ``info``:
    anything that says how it was measured (sizes, seconds, threads), stored beside the figures.
    """
    if op not in OPS:
        raise ValueError(f"op {op!r}: expected one of {', '.join(OPS)}")
    path = Path(path) if path is not None else results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {
        "measured": round(float(measured), 4),
        "target": float(target),
        "unit": unit,
        "op": op,
        "met": bool(OPS[op](float(measured), float(target))),
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        **{k: _plain(v) for k, v in info.items()},
    }
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = load(path)
        results[claim] = entry
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump(dict(sorted(results.items())), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    verdict = "met" if entry["met"] else "NOT met"
    print(f"[record] {claim}: {entry['measured']} {unit} (target {op} {target}: {verdict})")
    return entry


def alternate(
    runs: dict[str, Callable[[], object]], rounds: int = 3, warmup: bool = True
) -> dict[str, list[float]]:
    """Wall seconds of each callable over ``rounds`` rounds, run in turn (a, b, a, b, ...) to share noise.

    With ``warmup`` every callable runs once first, untimed. Returns {name: [seconds per round]}
    and {name + "_cpu": [process CPU seconds per round]} (all threads: writer pools count too).
    """
    if warmup:
        for fn in runs.values():
            fn()
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, fn in runs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times.setdefault(name, []).append(time.perf_counter() - t0)
            times.setdefault(f"{name}_cpu", []).append(time.process_time() - c0)
    return times


def ratio(times: dict[str, list[float]], bare: str, real: str) -> dict[str, float]:
    """bare / real from :func:`alternate`'s times: ``best`` (fastest round of each: the least
    disturbed by other processes on a shared machine; the claimed figure), ``median`` of the
    per-round ratios, and ``cpu`` (best CPU seconds of each)."""
    pairs = [b / r for b, r in zip(times[bare], times[real], strict=True)]
    return {
        "best": min(times[bare]) / min(times[real]),
        "median": float(statistics.median(pairs)),
        "cpu": min(times[f"{bare}_cpu"]) / min(times[f"{real}_cpu"]),
    }


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """CPU model, cores, torch threads, bf16 support and library versions of this machine."""
    import torch

    from dualstage.runtime.precision import cpu_bf16_supported

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_bf16": cpu_bf16_supported(),
        "python": platform.python_version(),
    }
    try:
        import xgboost

        info["xgboost"] = xgboost.__version__
    except ImportError:
        info["xgboost"] = None
    return info
