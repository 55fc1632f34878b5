"""Run the public commands from tests: in this process through their ``main(argv)`` (:func:`call`,
:func:`cli`), or as a real ``python`` process (:func:`run`); and tiny experiment YAMLs."""

from __future__ import annotations

import contextlib
import copy
import importlib
import io
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import yaml

from dualstage.data.limits import max_pixels, set_max_pixels

PHASES = [
    {"name": "decoder", "resolution": 64, "unfreeze": "decoder", "loss": "soft_dice", "epochs": 1},
    {"name": "block4", "resolution": 64, "unfreeze": "block4", "loss": "soft_dice", "epochs": 1},
    {"name": "all", "resolution": 64, "unfreeze": "all", "loss": "soft_dice", "epochs": 2},
]
CONFIG = {
    "name": "tiny",
    "data": {
        "source": "phantom",
        "phantom_n": 12,
        "phantom_size": 64,
        "sizes": [64],
        "n_folds": 2,
        "workers": 1,
    },
    "model": {"encoder": "resnet18", "weights": "none", "decoder_channels": [16, 16, 8, 8, 8]},
    "train": {"batch_size": {64: 8}, "workers": 0, "amp": "off", "phases": PHASES, "folds": "main"},
}


def call(module: str, *args: object) -> subprocess.CompletedProcess:
    """``python -m module args...`` through its ``main(argv)`` in this process; an exception that
    escapes the command's error handling becomes a traceback on stderr and exit 1. The image-size
    limit (process-wide; an experiment's ``data.max_pixels`` sets it) is restored afterwards."""
    try:
        main = importlib.import_module(f"{module}.__main__").main
    except ModuleNotFoundError:  # a module, not a package: its own main (``dualstage.data.phantom``)
        main = importlib.import_module(module).main
    argv = [str(a) for a in args]
    out, err, limit = io.StringIO(), io.StringIO(), max_pixels()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            set_max_pixels(limit)
    return subprocess.CompletedProcess([module, *argv], code, out.getvalue(), err.getvalue())


def write_yaml(folder: Path, values: dict, name: str = "tiny") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def config(root: Path, **changes) -> dict:
    """CONFIG with output_root ``root``; ``changes`` map a key path (``train__phases__2__epochs``:
    keys and list positions joined by ``__``) to the value to put there."""
    values = {**copy.deepcopy(CONFIG), "output_root": str(root)}
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        node = values
        for key in path:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(last) if isinstance(node, list) else last] = value
    return values


def cli(module: str, *args: object, expect: int = 0) -> subprocess.CompletedProcess:
    """:func:`call`, asserting its exit status is ``expect`` (stdout and stderr shown when not)."""
    proc = call(module, *args)
    assert proc.returncode == expect, (
        f"{proc.args}: exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    return proc


def run(
    *args: object,
    expect: int | None = 0,
    env: dict | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    """``python ARGS`` as a real process (this environment plus ``env``); asserts the exit status is
    ``expect`` unless that is None."""
    proc = subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=timeout,
    )
    if expect is not None:
        tail = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        assert proc.returncode == expect, f"{args}: exit {proc.returncode}\n{tail}"
    return proc


def copy_exp(source: Path, tmp: Path, name: str = "exp", link: tuple[str, ...] = ()) -> Path:
    """A private copy ``tmp/name`` of a shared (session) experiment folder, for a test that writes;
    the entries named in ``link`` (inputs the test only reads) are symbolic links to the shared ones."""
    exp = tmp / name
    exp.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name in link:
            os.symlink(entry, exp / entry.name)
        elif entry.is_dir():
            shutil.copytree(entry, exp / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, exp / entry.name)
    return exp
