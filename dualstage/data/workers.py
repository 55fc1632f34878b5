"""Worker processes that never outlive their caller.

:class:`WorkerPool` maps a function over items in worker processes (or in-process for one
worker) and terminates the workers when the block ends, whether it finished, raised or was
interrupted. Workers ignore SIGINT (the parent handles Ctrl-C and stops them) and, on Linux,
get SIGTERM when the parent dies, even by ``kill -9``; elsewhere a watchdog thread ends a
worker whose parent is gone. :func:`interruptible` turns SIGTERM in the parent into a
:class:`Terminated` (a ``KeyboardInterrupt``), so ``finally`` blocks and pools clean up, and
raises an interrupt that library code swallowed when the block ends.
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

__all__ = ["WorkerPool", "Terminated", "interruptible"]

_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """The process got SIGTERM."""


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(1.0)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_HAVE_SIGMASK = hasattr(signal, "pthread_sigmask")


def _init_worker(parent: int) -> None:
    """Runs first in each worker: ignore Ctrl-C, die with the parent, then accept SIGTERM.

    Workers start with SIGINT and SIGTERM blocked (inherited from the parent while it starts
    them); a SIGTERM that arrived during start-up is delivered when they are unblocked here.
    """
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
    if _HAVE_SIGMASK:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextmanager
def _held_signals() -> Iterator[list[int]]:
    """Within the block SIGINT / SIGTERM are recorded, not acted on (the yielded list).

    Main thread only. Processes started in the block inherit both signals blocked (workers
    unblock them once set up), so a Ctrl-C cannot kill one half started.
    """
    held: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield held
        return
    wanted = [sig for sig in _STOP_SIGNALS if signal.getsignal(sig) not in (signal.SIG_IGN, None)]
    previous = {sig: signal.signal(sig, lambda signum, frame: held.append(signum)) for sig in wanted}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS) if _HAVE_SIGMASK else None
    try:
        yield held
    finally:
        if old_mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class WorkerPool:
    """``with WorkerPool(n) as pool: for r in pool.imap(f, items): ...`` (results in order).

    ``workers <= 1`` runs in-process. On leaving the block the workers are terminated and
    joined, so an exception or an interrupt never leaves them running or writing. An interrupt
    while the pool starts is held back until the pool can be stopped.
    """

    def __init__(self, workers: int) -> None:
        self.workers = int(workers)
        self._pool: multiprocessing.pool.Pool | None = None
        self._before: set = set()

    def __enter__(self) -> WorkerPool:
        if self.workers <= 1:
            return self
        self._before = set(multiprocessing.active_children())
        ctx = multiprocessing.get_context("spawn")
        try:
            with _held_signals() as held:
                self._pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=(os.getpid(),))
            if held:  # interrupted while starting: stop the workers, then act on the signal
                self._stop()
                signal.raise_signal(held[0])
        except BaseException:
            self._stop()
            raise
        return self

    def imap(self, func: Callable, items: Iterable) -> Iterator:
        """``func(item)`` for each item, in order."""
        if self._pool is None:
            return map(func, items)
        return self._pool.imap(func, items, chunksize=1)

    def _stop(self) -> None:
        """Terminate the pool and any process started since ``__enter__``; wait for them."""
        try:
            if self._pool is not None:
                self._pool.terminate()
                self._pool.join()
        finally:
            self._pool = None
            new = [p for p in multiprocessing.active_children() if p not in self._before]
            for proc in new:
                proc.terminate()
            for proc in new:
                proc.join(timeout=5)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.workers > 1:
            self._stop()


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated("SIGTERM") if signum == signal.SIGTERM else KeyboardInterrupt()


@contextmanager
def interruptible() -> Iterator[None]:
    """Within the block SIGINT raises ``KeyboardInterrupt`` and SIGTERM :class:`Terminated`.

    An interrupt that code inside swallowed (e.g. raised inside a finalizer) is raised again
    when the block ends. Main thread only; elsewhere a no-op.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def _raise(signum: int, frame: object) -> None:
        received.append(signum)
        raise _interrupt(signum)

    wanted = [sig for sig in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(sig) != signal.SIG_IGN]
    previous = {sig: signal.signal(sig, _raise) for sig in wanted}  # an ignored signal stays ignored
    try:
        yield
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        if received:  # an error the interrupt caused: report the interrupt
            raise _interrupt(received[0]) from exc
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise _interrupt(received[0])
