"""The README is a tested script: every ```bash block runs, in the order printed, on a tiny
cross-fitted experiment (``train.folds: both``: fold models and the main model), and its demo block
equals the render of the committed reference summary.

Placeholders are substituted (``experiments/<name>.yaml`` -> the tiny YAML, ``models/<name>`` ->
its folder, ``/data/siim-acr`` -> its phantoms, ``/path/to/dicoms`` -> two new radiographs); an
optional ``[...]`` group is left out. A block is skipped only behind a
``<!-- readme-test: skip (reason) -->`` line naming why.
Commands run in this process through their ``__main__`` (same entry points, no interpreter start).
A ``torchrun`` line is parsed by torchrun's own parser and its command runs here as one process;
its multi-process launch is the test named for that command in ``TORCHRUN_LAUNCHED`` (2 CPU
processes over gloo), so a README torchrun line for any other command fails until it has one.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import re
import runpy
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from torch.distributed.run import get_args_parser as torchrun_parser

from dualstage.report.readme import BLOCK, REFERENCE, render_block, replace_block

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SKIP = re.compile(r"<!-- readme-test: skip \((.+)\) -->")
# (module, subcommand) -> the test that launches it under torchrun as 2 processes
_SHARDS = "tests/commands/test_shards.py::test_torchrun_two_processes_predict_and_features"
TORCHRUN_LAUNCHED = {
    ("dualstage.segment", "train"): "tests/segment/test_segment_e2e.py::test_two_process_gloo_training",
    ("dualstage.segment", "predict"): _SHARDS,
    ("dualstage.classify", "features"): _SHARDS,
}


def readme_blocks(text: str) -> list[tuple[int, list[str], str | None]]:
    """[(line number, commands, skip reason or None)] of every ```bash block, in order; a command
    continued with a trailing backslash is joined into one."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if lines[i].strip() == "```bash":
            before = lines[i - 1] if i else ""
            match = SKIP.search(before)
            start, cmds, cur = i + 1, [], ""
            i += 1
            while lines[i].strip() != "```":
                cur += lines[i].rstrip("\\").rstrip() + " " if lines[i].endswith("\\") else lines[i]
                if not lines[i].endswith("\\"):
                    cmds.append(cur.strip())
                    cur = ""
                i += 1
            out.append((start, [c for c in cmds if c], match.group(1) if match else None))
        i += 1
    return out


def substitute(cmd: str, ctx: dict) -> list[str]:
    """One README command line -> argv for the tiny experiment."""
    cmd = re.sub(r"\s*\[[^\]]*\]", "", cmd)  # optional groups
    subs = ctx["subs"]
    one_pass = re.compile("|".join(f"({pattern})" for pattern, _ in subs))  # a value is never re-read
    cmd = one_pass.sub(lambda m: subs[m.lastindex - 1][1], cmd)
    argv, out = shlex.split(cmd, comments=True), []
    for a in argv:  # one experiment named several times (evaluate over experiments) -> once
        if not (out and a == out[-1] and a == ctx["exp"]):
            out.append(a)
    return out


def torchrun_command(argv: list[str], where: str) -> list[str]:
    """A README ``torchrun`` line (argv), checked by torchrun's own parser -> the ``python -m`` line
    each rank runs; its launch as 2 processes must be a test's (``TORCHRUN_LAUNCHED``)."""
    launch = torchrun_parser().parse_args(argv[1:])
    assert launch.module, f"{where}: torchrun without -m: {argv}"
    key = (launch.training_script, (launch.training_script_args or [""])[0])
    assert key in TORCHRUN_LAUNCHED, f"{where}: no test launches {key} under torchrun: {argv}"
    return ["python", "-m", launch.training_script, *launch.training_script_args]


def run_line(argv: list[str], where: str) -> str:
    """One README command line (argv), in this process (torchrun: its command as one process); its
    stdout."""
    if argv[0] == "torchrun":
        argv = torchrun_command(argv, where)
    assert argv[0] == "python" and argv[1] == "-m", f"{where}: not a python -m command: {argv}"
    out, err, code = io.StringIO(), io.StringIO(), 0
    saved = sys.argv
    sys.argv = [argv[2], *argv[3:]]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code or 0
    finally:
        sys.argv = saved
    tail = f"{out.getvalue()[-2000:]}\n{err.getvalue()[-2000:]}"
    assert code == 0, f"{where}: {' '.join(argv)} exited {code}\n{tail}"
    return out.getvalue()


def _tiny(tmp: Path) -> dict:
    phase = {
        "name": "bce_dice",
        "resolution": 64,
        "unfreeze": "all",
        "epochs": 1,
        "base_lr": 1e-4,
        "max_lr": 1e-3,
        "loss": {
            "name": "combo",
            "terms": [{"name": "weighted_bce", "pos_weight": 5.0}, {"name": "soft_dice"}],
        },
    }
    cfg = {
        "name": "tiny",
        "output_root": str(tmp / "models"),
        "data": {
            "source": "phantom",
            "phantom_n": 36,
            "phantom_size": 128,
            "sizes": [64],
            "n_folds": 3,
            "workers": 0,
            "val_fraction": 0.25,
            "test_fraction": 0.25,
        },
        "model": {"encoder": "resnet18", "weights": "none", "decoder_channels": [16, 16, 8, 8, 8]},
        "train": {"batch_size": {64: 8}, "workers": 0, "amp": "off", "phases": [phase], "folds": "both"},
        "features": {"weights": "none", "image_size": 64, "workers": 0},
        "tune": {"n_iter": 2, "threads": 1},
        "gate": {"threads": 1},
        "report": {"resamples": 50, "gallery": 2},
    }
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    exp = tmp / "models" / "tiny"
    new = tmp / "incoming"
    new.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (90, 80), dtype=np.uint8)).save(new / f"new_{i}.png")
    subs = [
        (r"--data DIR", f"--data {exp / 'phantoms'}"),
        (r"--out models/[\w<>]+/prepared", f"--out {tmp / 'prepared_cli'}"),
        (r"experiments/[\w<>]+\.yaml", str(path)),
        (r"models/[\w<>]+", str(exp)),
        (r"/data/siim-acr", str(exp / "phantoms")),
        (r"/data/second-site", str(exp / "phantoms")),  # the source's own phantoms as a "second site"
        (r"/path/to/dicoms", str(new)),
        (r"--out DIR", f"--out {tmp / 'phantom_cli'}"),
        (r"--n 600 --size 1024", "--n 6 --size 128"),
        (r"--layout siim\|png", "--layout siim"),
        (r"sheet\.png", str(tmp / "sheet.png")),
    ]
    return {"yaml": path, "exp": str(exp), "subs": subs}


def test_the_readme_demo_block_is_the_render_of_the_reference():
    reference = json.loads((ROOT / REFERENCE).read_text())
    text = README.read_text()
    assert replace_block(text, BLOCK, render_block(reference)) == text, (
        f"README's {BLOCK} block differs from the render of {REFERENCE}: "
        "run `python -m dualstage.report.readme render` (or `make demo-reference` after `make demo`)"
    )


def test_every_readme_command_block_runs_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing lands in the checkout
    ctx = _tiny(tmp_path)
    blocks = readme_blocks(README.read_text())
    assert len(blocks) >= 6
    run_line(["python", "-m", "dualstage", "run", str(ctx["yaml"]), "--steps", "data"], "set-up: phantoms")
    ran, pipeline = 0, None
    for line, cmds, skip in blocks:
        if skip:
            continue
        for cmd in cmds:
            argv = substitute(cmd, ctx)
            out = run_line(argv, f"README.md line {line}")
            if argv[2:4] == ["dualstage", "run"] and len(argv) == 5:  # the whole pipeline, after the steps
                pipeline = out
            ran += 1
    assert ran >= 15
    # the promise of `run`: the steps the README's step commands finished are skipped, not redone
    assert pipeline is not None, "the README no longer runs `python -m dualstage run <yaml>` after the steps"
    assert re.search(r"\[train\s*\].*done before", pipeline) and re.search(
        r"\[tune\s*\].*done before", pipeline
    )


def test_a_broken_block_fails(tmp_path):
    ctx = _tiny(tmp_path)
    argv = substitute("python -m dualstage.segment predict --exp models/<exp> --split tset", ctx)
    with pytest.raises(AssertionError, match="exited 2"):
        run_line(argv, "README.md line 0")


def test_torchrun_lines_are_launched_by_a_named_test(tmp_path):
    for name in set(TORCHRUN_LAUNCHED.values()):
        path, func = name.split("::")
        assert f"def {func}(" in (ROOT / path).read_text(), f"{name}: no such test"
    ctx = _tiny(tmp_path)
    argv = substitute("torchrun --nproc_per_node 4 -m dualstage.segment sweep --exp models/<exp>", ctx)
    with pytest.raises(AssertionError, match="no test launches"):
        torchrun_command(argv, "README.md line 0")
    with pytest.raises(SystemExit):  # torchrun's own parser: an unknown option
        torchrun_command(["torchrun", "--nproc-per-gpu", "4", "-m", "dualstage.segment", "train"], "line 0")


def test_the_readme_python_imports_import():
    """Every ``from dualstage... import ...`` line of the README's ```python blocks names a module
    and attributes that exist (the front door)."""
    text = README.read_text()
    found = re.findall(
        r"^from (dualstage[\w.]*) import ([\w, ]+)",
        "".join(re.findall(r"```python\n(.*?)```", text, flags=re.S)),
        flags=re.M,
    )
    assert found, "the README shows no Python import of dualstage"
    for module, names in found:
        for name in names.split(","):
            assert hasattr(importlib.import_module(module), name.strip()), (
                f"README: from {module} import {name}"
            )
