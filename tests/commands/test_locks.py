"""Issue 19, item 4: one writer at a time on a set, released on any exit (``kill -9`` included).

A second ``segment predict`` into a set being written stops with one line naming the holder (its
command line, process id, start time), exit 2, having written nothing; ``classify features`` never
reads a set while it is written; two predict runs started together on one set end with one set of
images or the second refused, and features then cover exactly the set's index.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from dualstage.core.locks import Busy, holding, lock_path, locked
from helpers.bad_inputs import ENV, assert_error, assert_ok, gray, save_png
from helpers.commands import call

HOLD = (
    "import sys, time\n"
    "from dualstage.core.locks import holding\n"
    "with holding(sys.argv[1], 'segment predict', shared=sys.argv[2] == 'shared'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


class Holder:
    """A process holding a folder's lock (as a running writer would) until killed."""

    def __init__(self, folder: Path, shared: bool = False):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(folder), "shared" if shared else "alone"],
            stdout=subprocess.PIPE,
            text=True,
            env=ENV,
        )
        assert self.proc.stdout.readline().strip() == "held"

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


@pytest.fixture
def holder():
    made: list[Holder] = []

    def make(folder: Path, shared: bool = False) -> Holder:
        made.append(Holder(folder, shared))
        return made[-1]

    yield make
    for h in made:
        if h.proc.poll() is None:
            h.kill()


def _images(folder: Path, n: int, seed: int) -> Path:
    for k in range(n):
        save_png(folder / f"img{seed}_{k}.png", gray(seed * 100 + k))
    return folder


def _predict(exp: Path, folder: Path, *extra: object) -> subprocess.CompletedProcess:
    args = (
        "predict",
        "--exp",
        exp,
        "--input",
        folder,
        "--set",
        "new",
        "--workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    )
    return call("dualstage.segment", *args)  # in this process; the holders are other processes


def _features(exp: Path) -> subprocess.CompletedProcess:
    args = (
        "features",
        "--exp",
        exp,
        "--set",
        "new",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
    )
    return call("dualstage.classify", *args)


def test_second_writer_stops_naming_the_holder(own_tiny_model: Path, tmp_path: Path, holder) -> None:
    folder = _images(tmp_path / "a", 3, 1)
    target = own_tiny_model / "predictions" / "new"
    h = holder(target)
    line = assert_error(
        _predict(own_tiny_model, folder), str(target), "in use by", f"pid {h.proc.pid}", "started"
    )
    assert "python -c import sys, time" in line and "segment predict" in line
    assert not (target / "maps").exists() and not (target / "index.csv").exists()
    line = assert_error(_features(own_tiny_model), str(target), "in use by", f"pid {h.proc.pid}")
    assert "classify features" in line  # a reader never sees a set while it is written
    h.kill()  # kill -9: the kernel drops the lock; the lock file stays and means nothing
    assert lock_path(target).is_file()
    assert_ok(_predict(own_tiny_model, folder))
    assert sorted(pd.read_csv(target / "index.csv")["image_id"]) == sorted(p.stem for p in folder.iterdir())
    assert lock_path(target).stat().st_size == 0  # never written: no stale holder to trust


def test_shards_share_a_set_but_exclude_a_whole_run(own_tiny_model: Path, tmp_path: Path, holder) -> None:
    folder = _images(tmp_path / "b", 2, 2)
    target = own_tiny_model / "predictions" / "shared"
    h = holder(target, shared=True)  # a --shard run of this set
    args = (
        "predict",
        "--exp",
        own_tiny_model,
        "--input",
        folder,
        "--set",
        "shared",
        "--workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
    )
    assert_ok(call("dualstage.segment", *args, "--shard", "0/2"))
    assert_error(call("dualstage.segment", *args), str(target), f"pid {h.proc.pid}")
    assert_error(call("dualstage.segment", *args, "--merge"), str(target), "in use by")
    h.kill()
    assert_ok(call("dualstage.segment", *args, "--shard", "1/2"))
    assert_ok(call("dualstage.segment", *args, "--merge"))


def test_two_predict_runs_on_one_set(own_tiny_model: Path, tmp_path: Path) -> None:
    """Started together: both sets of images, or the second refused in one line; never a mix. Then
    ``classify features`` covers exactly what the set's index lists."""
    a, b = _images(tmp_path / "A", 6, 3), _images(tmp_path / "B", 6, 4)
    cmd = [
        sys.executable,
        "-m",
        "dualstage.segment",
        "predict",
        "--exp",
        str(own_tiny_model),
        "--set",
        "new",
        "--workers",
        "0",
        "--no-progress",
        "--device",
        "cpu",
        "--input",
    ]
    pipe = subprocess.PIPE
    procs = [subprocess.Popen([*cmd, str(f)], stdout=pipe, stderr=pipe, text=True, env=ENV) for f in (a, b)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    target = own_tiny_model / "predictions" / "new"
    index = sorted(pd.read_csv(target / "index.csv")["image_id"])
    ids = {f: sorted(p.stem for p in f.iterdir()) for f in (a, b)}
    codes = [code for code, _ in results]
    assert all("Traceback" not in err for _, err in results)
    if 2 in codes:  # overlapped: one refused in one line, the other's images are the set
        assert sorted(codes) == [0, 2]
        refused = results[codes.index(2)][1].strip().splitlines()
        assert len(refused) == 1 and "in use by" in refused[0]
        assert index == ids[(a, b)[codes.index(0)]]
    else:  # one after the other: the set is the last run's images
        assert codes == [0, 0] and index in (ids[a], ids[b])
    assert_ok(_features(own_tiny_model))
    features = pd.read_csv(own_tiny_model / "features" / "new" / "index.csv", dtype={"image_id": str})
    assert sorted(features["image_id"]) == index


def test_lock_semantics_in_one_process(tmp_path: Path, holder) -> None:
    folder = tmp_path / "set"
    with holding(folder, "outer"), holding(folder, "nested"):  # a step inside a step: re-entrant
        assert lock_path(folder).is_file()
    with holding(folder, "reader", shared=True), pytest.raises(RuntimeError, match="cannot also write"):
        with holding(folder, "writer"):
            pass

    @locked("segment predict", folder="out")
    def write(out: Path) -> str:
        return "ran"

    assert write(out=folder) == "ran"
    h = holder(folder)
    with pytest.raises(Busy, match=rf"{folder}: in use by .*pid {h.proc.pid}"):
        write(folder)
    with pytest.raises(Busy), holding(folder, "reader", shared=True):
        pass
