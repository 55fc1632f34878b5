"""Shared command-line plumbing: clean one-line errors instead of tracebacks for bad input.

:func:`run_cli` runs a command and turns the errors bad input causes (bad values, missing,
unreadable, corrupt or non-UTF-8 files, YAML syntax errors, OS errors such as a read-only or
full disk, an interrupt) into one line ``error: ...`` on stderr, exit 2 (130 for an interrupt).
Anything else is a bug and keeps its traceback. ``--debug`` (anywhere on the command line) or
``DUALSTAGE_DEBUG=1`` re-raises to show the traceback.
"""

from __future__ import annotations

import argparse
import errno
import gzip
import os
import pickle
import sys
import traceback
import zipfile
from pathlib import Path

import yaml

# Offline defaults: no hub retries, no update checks (the user can override both).
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__all__ = ["run_cli", "describe_error", "EXIT_USER_ERROR", "EXIT_INTERRUPTED"]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
DEBUG_FLAG = "--debug"


def _one_line(text: str) -> str:
    return " / ".join(part.strip() for part in str(text).splitlines() if part.strip())


def _yaml_file(exc: BaseException) -> str | None:
    """The YAML file being read when ``exc`` was raised: the mark's name, else a ``path`` local
    of a frame in the traceback (for readers that hand yaml a string, not a file)."""
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    name = getattr(mark, "name", None)
    if name and not name.startswith("<"):
        return name
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        for key in ("path", "config_path", "yaml_path"):
            value = frame.f_locals.get(key)
            if isinstance(value, str | Path) and str(value).endswith((".yaml", ".yml")):
                return str(value)
    return None


def _describe_yaml(exc: BaseException) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = _yaml_file(exc) or "YAML"
    if mark is not None:
        where += f": line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(exc, "problem", None) or exc
    return f"{where}: YAML syntax error ({_one_line(problem)})"


def _describe_os(exc: OSError) -> str:
    name = exc.filename if exc.filename is not None else None
    if name is None:
        return _one_line(str(exc))
    if exc.filename2 is not None:
        name = f"{name} -> {exc.filename2}"
    if isinstance(exc, FileNotFoundError):
        return f"{name}: no such file or folder"
    if isinstance(exc, PermissionError):
        return f"{name}: permission denied"
    if isinstance(exc, NotADirectoryError):
        return f"{name}: not a folder (a file is in the way on this path)"
    if isinstance(exc, IsADirectoryError):
        return f"{name}: is a folder, expected a file"
    if exc.errno == errno.ENOSPC:
        return f"{name}: no space left on the device"
    if isinstance(exc, FileExistsError):
        return f"{name}: exists and is not a folder"
    return f"{name}: {exc.strerror or exc}"


def describe_error(exc: BaseException) -> str | None:
    """One line for an error bad input causes; ``None`` for anything else (a bug)."""
    if isinstance(exc, yaml.YAMLError):
        return _describe_yaml(exc)
    if isinstance(exc, UnicodeDecodeError):
        return f"cannot read text as UTF-8 ({exc.reason} at byte {exc.start})"
    if isinstance(exc, gzip.BadGzipFile | zipfile.BadZipFile | pickle.UnpicklingError):
        return f"corrupt file ({_one_line(str(exc))})"
    if isinstance(exc, EOFError):
        return f"a file ended early; it is truncated or empty ({_one_line(str(exc)) or 'EOF'})"
    if isinstance(exc, OSError):
        return _describe_os(exc)
    if isinstance(exc, ValueError | RuntimeError):
        return _one_line(str(exc)) or type(exc).__name__
    return None


def _split_debug(argv: list[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` (accepted anywhere before ``--``) and whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    found = DEBUG_FLAG in argv[:end]
    return [a for i, a in enumerate(argv) if not (i < end and a == DEBUG_FLAG)], found


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and call ``args.func(args)``; user errors exit 2 with one line."""
    try:
        parser.add_argument(DEBUG_FLAG, action="store_true", help="show the traceback of an error")
    except argparse.ArgumentError:
        pass  # added by an earlier call with the same parser
    argv, debug = _split_debug(list(sys.argv[1:] if argv is None else argv))
    debug = debug or bool(os.environ.get("DUALSTAGE_DEBUG"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        if debug:
            raise
        print(f"error: interrupted{f' ({exc})' if str(exc) else ''}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        message = describe_error(exc)
        if debug or message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
