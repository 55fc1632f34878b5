"""Artifacts get the mode the umask gives (0644 under umask 022), not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd

from dualstage.core.io import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    write_csv_atomic,
    write_json_atomic,
    write_npy_atomic,
    write_png_atomic,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _write_all(folder) -> list:
    return [
        atomic_write(folder / "custom.bin", lambda tmp: open(tmp, "wb").close()),
        atomic_write_bytes(folder / "a.bin", b"x"),
        atomic_write_text(folder / "report.html", "<html></html>"),
        write_csv_atomic(pd.DataFrame({"a": [1]}), folder / "t.csv"),
        write_json_atomic(folder / "s.json", {"nan": float("nan")}),
        write_png_atomic(folder / "m.png", np.zeros((4, 4), np.uint8)),
        write_npy_atomic(folder / "h.npy", np.zeros(3)),
    ]


def test_umask_022_gives_0644_and_077_gives_0600(tmp_path):
    old = os.umask(0o022)
    try:
        assert all(_mode(p) == 0o644 for p in _write_all(tmp_path)), [
            oct(_mode(p)) for p in tmp_path.iterdir()
        ]
        os.umask(0o077)
        private = tmp_path / "private"
        assert all(_mode(p) == 0o600 for p in _write_all(private))
        os.umask(0o022)
        rewritten = atomic_write_text(
            private / "report.html", "<html>again</html>"
        )  # replace keeps umask mode
        assert _mode(rewritten) == 0o644
    finally:
        os.umask(old)
    assert not list(tmp_path.glob(".*.tmp")) and not list(private.glob(".*.tmp"))
