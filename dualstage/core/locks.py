"""One writer at a time: an OS lock on the part of an experiment a command writes.

A command that writes a folder of an experiment (``prepared/``, ``predictions/<set>``,
``features/<set>``, ``classifier/``, ``final/<set>``, ``report/``) holds ``fcntl.flock`` on the
folder's ``.lock`` file for the whole run. The kernel drops the lock when the process ends,
however it ends (``kill -9`` included): the file's presence means nothing, only the lock does, and
the file is never written. A second writer stops at once with one line naming the holder (its
command line, process id and start time, read from ``/proc/locks`` and ``/proc/<pid>``), exit 2.

Shard runs of one set (``--shard I/N``) write disjoint files and share the lock (``LOCK_SH``); the
merge, like any other writer, takes it alone. A reader that must see a finished set (``classify
features`` reading ``predictions/<set>``) takes the set's lock shared: never while it is written.
A process may take a lock it already holds (nested steps); a held shared lock is not upgraded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["lock_path", "holding", "locked", "Busy", "holder", "LOCK_NAME"]

LOCK_NAME = ".lock"
_held: dict[str, list] = {}  # resolved lock path -> [fd, shared, depth]


class Busy(RuntimeError):
    """The folder is being written by another process (one line naming it)."""


def lock_path(folder: str | Path) -> Path:
    """The lock file of ``folder``: ``<folder>/.lock``."""
    return Path(folder) / LOCK_NAME


def _holders(path: Path) -> list[int]:
    """Process ids holding a flock on ``path`` (Linux ``/proc/locks``; [] elsewhere)."""
    try:
        inode = os.stat(path).st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        parts = line.replace("->", "").split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5].rsplit(":", 1)[-1] == str(inode):
            with contextlib.suppress(ValueError):
                pids.append(int(parts[4]))
    return [p for p in dict.fromkeys(pids) if p != os.getpid()]


def _describe_pid(pid: int) -> str:
    """``python -m dualstage.segment predict ... (pid 12, started 2025-01-01 10:00:00)``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        words = [a.decode(errors="replace") for a in argv]
        command = " ".join(" ".join(Path(a).name if i == 0 else a for i, a in enumerate(words)).split())
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(x.split()[1]) for x in Path("/proc/stat").read_text().splitlines() if x.startswith("btime")
        )
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(boot + ticks / os.sysconf("SC_CLK_TCK")))
    except (OSError, ValueError, IndexError, StopIteration):
        return f"process {pid}"
    return f"`{command[:200]}` (pid {pid}, started {started})"


def holder(path: str | Path) -> str:
    """Who holds the lock file ``path``, in words (every holder of a shared lock)."""
    pids = _holders(Path(path))
    if not pids:
        return "another process"
    return "; ".join(_describe_pid(p) for p in pids[:3]) + (
        f" and {len(pids) - 3} more" if len(pids) > 3 else ""
    )


def _open(path: Path, shared: bool) -> int | None:
    """A read-only descriptor of the lock file, created when missing (None: a reader of a folder it
    may not write, where no writer of this user can be either)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except (PermissionError, OSError) as exc:
        if shared and (isinstance(exc, PermissionError) or exc.errno == errno.EROFS):
            return None
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def _acquire(path: Path, folder: Path, command: str, shared: bool) -> int | None:
    """An open descriptor of ``path`` holding its flock; Busy naming the holder when it is taken."""
    fd = _open(path, shared)
    if fd is None:
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Busy(
            f"{folder}: in use by {holder(path)}; `{command}` cannot {'read' if shared else 'write'} it "
            "while that run lasts: wait for it to finish (or stop it), then run this again"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    return fd


@contextlib.contextmanager
def holding(folder: str | Path, command: str, shared: bool = False) -> Iterator[Path]:
    """Hold the lock of ``folder`` for the block (``shared``: with other shared holders only).

    Raises :class:`Busy` (one line naming the holder) when another process holds it in a way that
    excludes this one. Yields the lock file's path."""
    path = lock_path(folder)
    key = str(path.resolve())
    if key in _held:
        entry = _held[key]
        if entry[1] and not shared:
            raise RuntimeError(f"{folder}: this process reads it (shared lock) and cannot also write it")
        entry[2] += 1
        try:
            yield path
        finally:
            entry[2] -= 1
        return
    fd = _acquire(path, Path(folder), command, shared)
    _held[key] = [fd, shared, 1]
    try:
        yield path
    finally:
        del _held[key]
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock


def locked(command: str, shared: bool = False, folder: str = "out") -> Callable:
    """Decorator: hold the lock of the folder passed as argument ``folder`` while the function runs."""

    def wrap(func: Callable) -> Callable:
        signature = inspect.signature(func)

        @functools.wraps(func)
        def run(*args, **kwargs):
            where = signature.bind(*args, **kwargs).arguments[folder]
            with holding(where, command, shared=shared):
                return func(*args, **kwargs)

        return run

    return wrap
