"""Progress reporting: a tqdm bar on a terminal, plain timed log lines everywhere else.

A log file or a pipe gets no carriage-return updates: one line every ``DUALSTAGE_LOG_EVERY``
seconds (default 10) and one at the end, each with count / total, rate and ETA::

    predict input [main]: 120/500 batch (24%), 3.21 batch/s, elapsed 00:37, ETA 01:58, loss=0.31
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm.auto import tqdm

__all__ = ["progress", "progress_write", "LineProgress", "log_every"]

DEFAULT_EVERY = 10.0


def log_every() -> float:
    """Seconds between two log lines: ``$DUALSTAGE_LOG_EVERY`` (>= 0), else 10."""
    try:
        value = float(os.environ.get("DUALSTAGE_LOG_EVERY", DEFAULT_EVERY))
    except ValueError:
        return DEFAULT_EVERY
    return value if value >= 0 else DEFAULT_EVERY


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_write(msg: str, file: IO[str] | None = None) -> None:
    """Print one message (to stdout by default, like ``tqdm.write``) without breaking a live bar."""
    tqdm.write(msg, file=file)


def _format_number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class LineProgress:
    """tqdm's small interface (iterate, ``update``, ``set_postfix``, ``close``, context manager,
    ``write``) printing one plain line every ``every`` seconds and at the end; no ``\\r``."""

    write = staticmethod(progress_write)

    def __init__(
        self,
        iterable: Iterable | None = None,
        total: float | None = None,
        desc: str = "",
        unit: str = "it",
        disable: bool = False,
        every: float | None = None,
        file: IO[str] | None = None,
    ):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.disable = disable
        self.every = log_every() if every is None else every
        self.file = file if file is not None else sys.stderr
        self.n = 0
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.closed = False

    def __len__(self) -> int:
        return int(self.total) if self.total is not None else len(self.iterable)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("LineProgress without an iterable cannot be iterated")
        try:
            for obj in self.iterable:
                yield obj
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more units; print a line when ``every`` seconds passed since the last one."""
        self.n += n
        now = time.monotonic()
        if not self.disable and now - self.last >= self.every:
            self.last = now
            self._emit(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Values shown at the end of the next line (``loss=0.31, lr=1e-4``)."""
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={_format_number(v)}" for k, v in values.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw: lines are printed on their schedule."""

    def close(self) -> None:
        """Print the final line (once)."""
        if self.closed:
            return
        self.closed = True
        if not self.disable:
            self._emit(time.monotonic(), final=True)

    def format_line(self, now: float, final: bool = False) -> str:
        """``desc: n/total unit (pct), rate, elapsed, ETA[, postfix]``."""
        elapsed = max(now - self.start, 1e-9)
        rate = self.n / elapsed
        count = f"{_format_number(self.n)}"
        if self.total:
            count += f"/{_format_number(self.total)} {self.unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            count += f" {self.unit}"
        speed = f"{rate:.3g} {self.unit}/s" if rate >= 1 or rate == 0 else f"{1 / rate:.3g} s/{self.unit}"
        if final:
            eta = "00:00" if not self.total or self.n >= self.total else "?"
        elif self.total and rate > 0:
            eta = tqdm.format_interval(max(self.total - self.n, 0) / rate)
        else:
            eta = "?"
        parts = [count, speed, f"elapsed {tqdm.format_interval(elapsed)}", f"ETA {eta}"]
        if self.postfix:
            parts.append(self.postfix)
        head = f"{self.desc}: " if self.desc else ""
        return head + ", ".join(parts) + (" (done)" if final else "")

    def _emit(self, now: float, final: bool = False) -> None:
        print(self.format_line(now, final), file=self.file, flush=True)


def progress(
    iterable: Iterable | None = None,
    *,
    total: float | None = None,
    desc: str = "",
    unit: str = "it",
    enabled: bool = True,
    leave: bool = True,
) -> tqdm | LineProgress:
    """A tqdm bar when stderr is a terminal, else a :class:`LineProgress` (timed plain lines).

    ``enabled=False`` prints nothing; ``leave`` is passed to tqdm (a log keeps every final line).
    """
    if _is_terminal(sys.stderr):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, leave=leave)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, disable=not enabled)
