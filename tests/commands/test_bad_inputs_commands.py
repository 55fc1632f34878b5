"""Bad options, output folders, other commands and interrupts: one line, exit 2 (130 interrupted).

Cases run the public commands (``segment prepare``, ``data.phantom``, ``dualstage run``);
helpers: ``tests/helpers/bad_inputs.py``. Dataset cases: ``tests/data/test_bad_inputs.py``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.bad_inputs import (
    ENV,
    assert_confined,
    assert_error,
    good_siim,
    prepare,
    prepare_args,
    run,
    siim_layout,
    snapshot,
)


# ----------------------------------------------------------------------------- output folder problems
def test_out_under_a_regular_file(tmp_path: Path) -> None:
    data = good_siim(tmp_path / "data")
    (tmp_path / "afile").write_text("x")
    before = snapshot(tmp_path)
    assert_error(prepare(data, tmp_path / "afile" / "out"), "afile", "not a folder")
    assert_confined(tmp_path, before, None)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_out(tmp_path: Path) -> None:
    data = good_siim(tmp_path / "data")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        assert_error(prepare(data, locked / "out"), "locked", "permission denied")
    finally:
        locked.chmod(0o755)


# ----------------------------------------------------------------------------- option ranges
# The message names the option or its config key (data.sizes, data.n_folds, ...) and the value.
@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--sizes", "0"], r"sizes\b.*\b0\b"),
        (["--sizes", "64", "100000"], r"sizes\b.*\b100000\b"),
        (["--folds", "0"], r"folds\b.*\b0\b"),
        (["--folds", "1"], r"folds\b.*\b1\b"),
        (["--workers", "-1"], r"workers\b.*-1\b"),
        (["--test-fraction", "0"], r"test.fraction\b.*\b0(\.0)?\b"),
        (["--val-fraction", "1.5"], r"val.fraction\b.*\b1\.5\b"),
        (["--test-fraction", "0.6", "--val-fraction", "0.5"], r"fraction\b.*\b0\.[56]\b"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_option_out_of_range(tmp_path: Path, extra: list[str], pattern: str) -> None:
    data = good_siim(tmp_path / "data")
    before = snapshot(tmp_path)
    line = assert_error(prepare(data, tmp_path / "out", *extra))
    assert re.search(pattern, line), line
    assert_confined(tmp_path, before, None)


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    data = good_siim(tmp_path / "data")
    for argv, process in (
        (["--debug", *prepare_args(data, tmp_path / "out", "--sizes", "0")], True),  # the real entry point
        (prepare_args(data, tmp_path / "out", "--sizes", "0", "--debug"), False),
    ):
        proc = run("dualstage.segment", *argv, process=process)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 1 and "Traceback" in proc.stderr and "sizes" in last, proc.stderr


# ----------------------------------------------------------------------------- other commands
def test_yaml_syntax_error(tmp_path: Path) -> None:
    bad = tmp_path / "exp.yaml"
    bad.write_text("data:\n  sizes: [64\n  n_folds: 3\n")
    before = snapshot(tmp_path)
    assert_error(run("dualstage", "run", bad), f"{bad}: line 3", "YAML syntax error")
    assert_confined(tmp_path, before, None)


def test_phantom_bad_count(tmp_path: Path) -> None:
    assert_error(run("dualstage.data.phantom", "--out", tmp_path / "ph", "--n", "0"), "n >= 1", "n=0")
    assert not (tmp_path / "ph").exists()


def test_phantom_out_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    proc = run("dualstage.data.phantom", "--out", tmp_path / "afile" / "ph", "--n", "2", "--size", "64")
    assert_error(proc, "afile", "not a folder")


# ----------------------------------------------------------------------------- interrupts
def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def _pool_processes(pid: int) -> set[int]:
    """The children of ``pid`` that multiprocessing started (workers, resource tracker): not, say, the
    ``ldconfig -p`` that torch's CUDA library finder runs for a moment at import."""
    found = set()
    for child in _children(pid):
        try:
            if b"multiprocessing" in Path(f"/proc/{child}/cmdline").read_bytes():
                found.add(child)
        except OSError:
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _default_sigint() -> None:
    """In the child: SIGINT as in a terminal (a background shell job inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(condition, proc: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
@pytest.mark.parametrize(
    ("sig", "when"),
    [
        (signal.SIGTERM, "starting"),
        (signal.SIGTERM, "working"),
        (signal.SIGINT, "working"),
        (signal.SIGKILL, "working"),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else v,
)
def test_interrupted_prepare_stops_its_workers(tmp_path: Path, sig: signal.Signals, when: str) -> None:
    ids = [f"w{i:03d}" for i in range(240)]
    data, out = siim_layout(tmp_path / "data", ids, [(i, "-1") for i in ids]), tmp_path / "out"
    cmd = [sys.executable, "-m", "dualstage.segment", *map(str, prepare_args(data, out, "--workers", 2))]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=_default_sigint
    )
    cache = out / "cache" / str(64) / "masks"
    if when == "starting":  # while the pool starts its workers
        _wait_for(lambda: bool(_pool_processes(proc.pid)), proc)
    else:  # while the workers write the cache
        _wait_for(lambda: cache.is_dir() and any(cache.iterdir()), proc)
    workers = _pool_processes(proc.pid)
    assert proc.poll() is None and workers, "prepare ended before it could be interrupted"
    proc.send_signal(sig)
    while proc.poll() is None:
        workers |= _children(proc.pid)
    _, stderr = proc.communicate(timeout=30)
    if sig != signal.SIGKILL:
        expected = "error: interrupted (SIGTERM)" if sig == signal.SIGTERM else "error: interrupted"
        assert proc.returncode == 130 and stderr.strip() == expected, stderr
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in workers)
    written = len(list(cache.iterdir())) if cache.is_dir() else 0
    time.sleep(0.5)
    assert (len(list(cache.iterdir())) if cache.is_dir() else 0) == written  # nobody writes on
