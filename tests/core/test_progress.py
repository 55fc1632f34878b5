"""Progress: tqdm on a terminal, plain timed lines (rate, ETA, no carriage returns) otherwise."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from tqdm.auto import tqdm

from dualstage.core.progress import LineProgress, log_every, progress, progress_write

ROOT = Path(__file__).resolve().parents[2]


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_have_count_rate_eta_and_no_carriage_return():
    buf = io.StringIO()
    seen = list(LineProgress(range(4), desc="prep", unit="img", every=0, file=buf))
    assert seen == [0, 1, 2, 3]
    text = buf.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and len(lines) == 5  # one per update (every=0) and the final one
    assert all(line.startswith("prep: ") and ("img/s" in line or "s/img" in line) for line in lines)
    assert all("ETA" in line and "elapsed" in line for line in lines)
    assert "1/4 img (25%)" in lines[0] and "4/4 img (100%)" in lines[-1] and lines[-1].endswith("(done)")


def test_interval_limits_the_lines_and_close_prints_once():
    buf = io.StringIO()
    with LineProgress(total=1000, desc="x", every=3600, file=buf) as bar:
        for _ in range(1000):
            bar.update(1)
        bar.set_postfix(loss=0.123456, lr="1e-4")
    bar.close()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1 and "1000/1000" in lines[0] and "loss=0.1235, lr=1e-4" in lines[0]


def test_unknown_total_and_disabled():
    buf = io.StringIO()
    bar = LineProgress(iter(range(3)), every=0, file=buf)
    assert sum(bar) == 3
    assert "ETA ?" in buf.getvalue().splitlines()[0] and "3 it" in buf.getvalue()
    quiet = io.StringIO()
    assert list(LineProgress(range(3), every=0, disable=True, file=quiet)) == [0, 1, 2]
    assert quiet.getvalue() == ""


def test_progress_picks_bar_or_lines(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert isinstance(progress(range(2), desc="a"), LineProgress)
    monkeypatch.setattr(sys, "stderr", _Tty())
    bar = progress(range(2), desc="a", enabled=False)
    assert isinstance(bar, tqdm) and list(bar) == [0, 1]


def test_log_every_from_env(monkeypatch):
    monkeypatch.setenv("DUALSTAGE_LOG_EVERY", "2.5")
    assert log_every() == 2.5 and LineProgress(total=1).every == 2.5
    monkeypatch.setenv("DUALSTAGE_LOG_EVERY", "soon")
    assert log_every() == 10.0
    monkeypatch.delenv("DUALSTAGE_LOG_EVERY")
    assert log_every() == 10.0


def test_write_goes_to_the_given_file():
    buf = io.StringIO()
    progress_write("epoch 1 done", file=buf)
    LineProgress.write("epoch 2 done", file=buf)
    assert buf.getvalue() == "epoch 1 done\nepoch 2 done\n"


def test_piped_stderr_gets_plain_lines():
    code = (
        "from dualstage.core.progress import progress\n"
        "for _ in progress(range(3), desc='loop', unit='batch'):\n    pass\n"
    )
    env = {**os.environ, "DUALSTAGE_LOG_EVERY": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "\r" not in proc.stderr and proc.stderr.count("\n") == 4
    assert "loop: 3/3 batch (100%)" in proc.stderr and "ETA" in proc.stderr
