"""The CLI wrapper: errors bad input causes are one line (exit 2, 130 interrupted); bugs keep tracebacks."""

from __future__ import annotations

import argparse
import errno
import gzip
import pickle
import zipfile

import pytest
import yaml

from dualstage.core.cli import run_cli
from helpers.commands import run


def _raiser(exc: BaseException) -> argparse.ArgumentParser:
    def func(args: argparse.Namespace) -> int:
        raise exc

    parser = argparse.ArgumentParser(prog="t")
    parser.set_defaults(func=func)
    return parser


def _yaml_error(tmp_path) -> yaml.YAMLError:
    path = tmp_path / "exp.yaml"
    path.write_text("a: 1\nb: [2\nc: 3\n")
    try:
        with open(path, encoding="utf-8") as fh:
            yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        return exc
    raise AssertionError("no YAML error")


CASES = [
    (PermissionError(errno.EACCES, "Permission denied", "/ro/out"), "/ro/out: permission denied"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "f/out"), "f/out: not a folder"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "d"), "d: is a folder, expected a file"),
    (OSError(errno.ENOSPC, "No space left on device", "/full/x"), "/full/x: no space left on the device"),
    (FileNotFoundError(errno.ENOENT, "No such file", "gone.csv"), "gone.csv: no such file or folder"),
    (FileNotFoundError("splits.csv not found; run prepare"), "splits.csv not found; run prepare"),
    (EOFError("Ran out of input"), "truncated or empty (Ran out of input)"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "not UTF-8|as UTF-8"),
    (zipfile.BadZipFile("File is not a zip file"), "corrupt file (File is not a zip file)"),
    (gzip.BadGzipFile("Not a gzipped file (b'ab')"), "corrupt file (Not a gzipped file"),
    (pickle.UnpicklingError("invalid load key, 'x'."), "corrupt file (invalid load key"),
    (ValueError("a.csv: line 3: bad\nsecond line"), "a.csv: line 3: bad / second line"),
]


@pytest.mark.parametrize(("exc", "expected"), CASES, ids=[type(c[0]).__name__ for c in CASES])
def test_user_errors_are_one_line(capsys, monkeypatch, exc, expected):
    monkeypatch.delenv("DUALSTAGE_DEBUG", raising=False)
    assert run_cli(_raiser(exc), []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert any(part in err for part in expected.split("|")), err


def test_yaml_syntax_error_names_file_and_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DUALSTAGE_DEBUG", raising=False)
    assert run_cli(_raiser(_yaml_error(tmp_path)), []) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith(f"error: {tmp_path / 'exp.yaml'}: line 3, column 2: YAML syntax error")
        and err.count("\n") == 1
    )


def test_interrupt_is_130_and_one_line(capsys, monkeypatch):
    monkeypatch.delenv("DUALSTAGE_DEBUG", raising=False)
    assert run_cli(_raiser(KeyboardInterrupt()), []) == 130
    assert capsys.readouterr().err == "error: interrupted\n"


def test_bugs_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("DUALSTAGE_DEBUG", raising=False)
    with pytest.raises(TypeError):
        run_cli(_raiser(TypeError("unsupported operand")), [])


def test_debug_flag_and_env_reraise(monkeypatch):
    monkeypatch.delenv("DUALSTAGE_DEBUG", raising=False)
    parser = _raiser(PermissionError(errno.EACCES, "Permission denied", "/ro"))
    with pytest.raises(PermissionError):
        run_cli(parser, ["--debug"])
    assert "--debug" in parser.format_help()
    monkeypatch.setenv("DUALSTAGE_DEBUG", "1")
    with pytest.raises(PermissionError):
        run_cli(parser, [])


_LOADED = "print(sorted(m for m in {} if m in sys.modules), flush=True)"
_START = "; ".join(
    [
        "import sys",
        "import dualstage.data.cache, dualstage.data.workers",  # what a spawned prepare worker runs
        _LOADED.format(("sklearn", "torch")),
        "import dualstage.commands.main, dualstage.commands.segment_cli",
        "import dualstage.commands.classify_cli, dualstage.commands.report_cli",
        _LOADED.format(("segmentation_models_pytorch", "timm", "torchvision")),
    ]
)


def test_commands_start_without_the_model_libraries():
    """A prepare worker's module leaves scikit-learn and torch to its parent; the command modules
    leave smp / timm / torchvision to the code that builds a loss, a model or the DenseNet (~2.4 s of
    every start: benchmarks/bench_startup.py)."""
    proc = run("-c", _START, timeout=120)
    assert proc.stdout.splitlines() == ["[]", "[]"], proc.stdout
