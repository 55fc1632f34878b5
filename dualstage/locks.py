"""One writer at a time: an OS lock on the part of an experiment a command writes.

A command that writes a folder of an experiment (``prepared/``, ``predictions/<set>``,
``features/<set>``, ``classifier/``, ``final/<set>``, ``report/``, ...) holds
``fcntl.flock`` on a lock file beside it, ``.<folder name>.lock``, for the whole run. The kernel
drops the lock when the process ends, however it ends (``kill -9`` included): the file's presence
means nothing, only the lock does. A second writer stops at once with one line naming the holder
(the command, its process id and start time, which the holder writes into the lock file), exit 2.

Shard runs of one set (``--shard I/N``) write disjoint files and share the lock (``LOCK_SH``); the
merge, like any other writer, takes it alone. A reader that must see a finished set (``classify
features`` reading ``predictions/<set>``) takes the set's lock shared: never while it is written.
A process may take a lock it already holds (nested steps); a held shared lock is not upgraded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = ["lock_path", "holding", "Busy", "holder"]

_held: dict[str, list] = {}  # resolved lock path -> [fd, shared, depth]


class Busy(RuntimeError):
    """The folder is being written by another process (one line naming it)."""


def lock_path(folder: str | Path) -> Path:
    """The lock file of ``folder``: ``.<name>.lock`` beside it (``predictions/.new.lock``)."""
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def holder(path: str | Path) -> str:
    """Who holds a lock file, as its holder wrote it: ``segment predict (pid 12, started ...)``."""
    try:
        info = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    pid = info.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return "another process (shard runs, or a reader of this folder)"
    return f"`{info.get('command', '?')}` (pid {pid}, started {info.get('started', '?')})"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(path)) from None


def _stamp(fd: int, command: str) -> None:
    """Write the holder's command, pid and start time into the (exclusively held) lock file."""
    argv = " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv))
    info = {"command": command, "pid": os.getpid(), "argv": argv[:300],
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}  # fmt: skip
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


def _acquire(path: Path, folder: Path, command: str, shared: bool) -> int:
    fd = _open(path)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        what = "read" if shared else "write"
        raise Busy(
            f"{folder}: being written by {holder(path)}; this `{command}` cannot {what} it now. "
            f"Wait for that run to finish (or stop it), then run this again"
        ) from None
    except OSError as exc:
        os.close(fd)
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    if not shared:
        _stamp(fd, command)
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
        if not shared:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale holder line once released
        os.close(fd)  # closing the descriptor drops the lock
