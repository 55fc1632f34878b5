"""Worker processes that never outlive their caller.

:class:`WorkerPool` maps a function over items in worker processes (or in-process for one
worker) and terminates the workers when the block ends, whether it finished, raised or was
interrupted. Workers ignore SIGINT (the parent handles Ctrl-C and stops them) and, on Linux,
get SIGTERM when the parent dies, even by ``kill -9``; elsewhere a watchdog thread ends a
worker whose parent is gone. :func:`sigterm_interrupts` turns SIGTERM in the parent into a
:class:`Terminated` (a ``KeyboardInterrupt``), so ``finally`` blocks and pools clean up.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType

__all__ = ["WorkerPool", "Terminated", "sigterm_interrupts"]

_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM."""


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(1.0)


def _init_worker(parent: int) -> None:
    """Runs first in each worker: ignore Ctrl-C, die with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


class WorkerPool:
    """``with WorkerPool(n) as pool: for r in pool.imap(f, items): ...`` (results in order).

    ``workers <= 1`` runs in-process. On leaving the block the workers are terminated and
    joined, so an exception or an interrupt never leaves them running or writing.
    """

    def __init__(self, workers: int) -> None:
        self.workers = int(workers)
        self._pool: multiprocessing.pool.Pool | None = None

    def __enter__(self) -> WorkerPool:
        if self.workers > 1:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=(os.getpid(),))
        return self

    def imap(self, func: Callable, items: Iterable) -> Iterator:
        """``func(item)`` for each item, in order."""
        if self._pool is None:
            return map(func, items)
        return self._pool.imap(func, items, chunksize=1)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated` (main thread only; else a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum: int, frame: object) -> None:
        raise Terminated("SIGTERM")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
