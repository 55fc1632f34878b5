"""Two processes vs one on this machine: DDP training (torchrun, gloo) and sharded predict.

The total number of torch threads is the same on both sides: one process at 2 threads against two
processes at 1 thread each (OMP_NUM_THREADS), so the figures measure what splitting the work over
processes gains, not extra cores. Each side is timed as wall clock around the whole command (start-up
included) and by the step's own seconds (done.json / predict.json).

(a) training: a short run on a small phantom set (resnet18 U-Net, 96 px, 2 epochs), the same seed
    and the same global batch (8 in one process; 4 per rank under torchrun --nproc_per_node 2);
    the validation loss and mean Dice of both must agree within ``DICE_TOLERANCE`` (they differ by
    BatchNorm statistics over 4 instead of 8 images and by float summation order).
(b) predict: ``segment predict --split all`` in one process vs ``--shard 0/2`` and ``--shard 1/2``
    in parallel followed by ``--merge``; the merged set is compared with the one-process set.

Claims (merged into $DUALSTAGE_BENCH_RESULTS, default benchmarks/results.json):
train_2proc_speedup, train_2proc_val_dice_diff, predict_2proc_speedup.
Run: .venv/bin/python benchmarks/bench_processes.py   (about 2-3 minutes on 2 cores)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import record  # noqa: E402

DICE_TOLERANCE = 0.02  # |val mean Dice (2 processes) - val mean Dice (1 process)|, last epoch
SIZE, EPOCHS, GLOBAL_BATCH = 96, 2, 8


def _experiment(folder: Path, name: str, batch: int) -> Path:
    cfg = {
        "name": name,
        "output_root": str(folder / "models"),
        "data": {
            "source": "phantom",
            "phantom_n": 64,
            "phantom_size": 128,
            "sizes": [SIZE],
            "n_folds": 3,
            "workers": 2,
            "val_fraction": 0.3,
            "test_fraction": 0.2,
        },
        "model": {"encoder": "resnet18", "weights": "none", "decoder_channels": [64, 32, 16, 16, 8]},
        "train": {
            "batch_size": {SIZE: batch},
            "workers": 0,
            "amp": "off",
            "folds": "main",
            "seed": 0,
            "phases": [
                {
                    "name": "all",
                    "resolution": SIZE,
                    "unfreeze": "all",
                    "epochs": EPOCHS,
                    "loss": {"name": "weighted_bce", "pos_weight": 5.0},
                    "base_lr": 1e-4,
                    "max_lr": 1e-3,
                }
            ],
        },
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(args: list[str], threads: int, wait: bool = True) -> subprocess.Popen | float:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
    }
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if not wait:
        return proc
    _finish(proc)
    return time.perf_counter() - t0


def _finish(proc: subprocess.Popen) -> None:
    out, err = proc.communicate()
    if proc.returncode:
        raise SystemExit(f"{proc.args} failed ({proc.returncode}):\n{err.decode()[-3000:]}")


def _train_result(exp_dir: Path) -> dict:
    done = json.loads((exp_dir / "segmenter" / "main" / "done.json").read_text())
    last = pd.read_csv(exp_dir / "segmenter" / "main" / "log.csv").iloc[-1]
    return {
        "seconds": done["seconds"],
        "world": done["world"],
        "val_loss": float(last["val_loss"]),
        "val_mean_dice": float(last["val_mean_dice"]),
    }


def bench_training(folder: Path) -> tuple[dict, dict, Path]:
    """(one-process result, two-process result, the one-process experiment's YAML)."""
    one_cfg = _experiment(folder, "one", GLOBAL_BATCH)
    two_cfg = _experiment(folder, "two", GLOBAL_BATCH // 2)
    ref_cfg = _experiment(folder, "ref", GLOBAL_BATCH)
    _run(["-m", "dualstage", "run", str(one_cfg), "--steps", "data"], threads=2)
    for name in ("two", "ref"):
        (folder / "models" / name).mkdir(parents=True)
        os.symlink(folder / "models" / "one" / "prepared", folder / "models" / name / "prepared")
    train = ["-m", "dualstage.segment", "train", "--fold", "main", "--device", "cpu", "--no-progress"]
    train.append("--exp")
    wall_one = _run([*train, str(one_cfg)], threads=2)
    torchrun = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29541"]
    wall_two = _run([*torchrun, *train, str(two_cfg)], threads=1)
    wall_ref = _run([*train, str(ref_cfg)], threads=1)
    one = {**_train_result(folder / "models" / "one"), "wall_seconds": round(wall_one, 2)}
    two = {**_train_result(folder / "models" / "two"), "wall_seconds": round(wall_two, 2)}
    one["reference_1thread"] = {
        **_train_result(folder / "models" / "ref"),
        "wall_seconds": round(wall_ref, 2),
    }
    return one, two, one_cfg


def _compare_sets(a: Path, b: Path) -> dict:
    ids = pd.read_csv(a / "index.csv", dtype={"image_id": str})["image_id"]
    differing, max_level = 0, 0
    for i in ids:
        x = np.asarray(Image.open(a / "maps" / f"{i}.png"), dtype=np.int16)
        y = np.asarray(Image.open(b / "maps" / f"{i}.png"), dtype=np.int16)
        differing += int(not np.array_equal(x, y))
        max_level = max(max_level, int(np.abs(x - y).max()))
    return {
        "index_identical": (a / "index.csv").read_bytes() == (b / "index.csv").read_bytes(),
        "maps": len(ids),
        "maps_differing": differing,
        "max_level_difference": max_level,
    }


def bench_predict(cfg: Path, folder: Path) -> dict:
    """One process at 2 threads vs two shards at 1 thread each in parallel + the merge."""
    base = [
        "-m",
        "dualstage.segment",
        "predict",
        "--exp",
        str(cfg),
        "--split",
        "all",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    one, two = folder / "pred_one", folder / "pred_two"
    wall_one = _run([*base, "--out", str(one)], threads=2)
    t0 = time.perf_counter()
    procs = [_run([*base, "--out", str(two), "--shard", f"{i}/2"], threads=1, wait=False) for i in range(2)]
    for proc in procs:
        _finish(proc)
    t_shards = time.perf_counter() - t0
    wall_merge = _run([*base, "--out", str(two), "--merge"], threads=2)
    wall_ref = _run([*base, "--out", str(folder / "pred_ref")], threads=1)
    info_one, info_two = (json.loads((d / "predict.json").read_text()) for d in (one, two))
    return {
        "images": info_one["images"],
        "one_wall_seconds": round(wall_one, 2),
        "one_predict_seconds": info_one["seconds"],
        "shards_wall_seconds": round(t_shards, 2),
        "shards_predict_seconds": [s["seconds"] for s in info_two["shards"]],
        "merge_wall_seconds": round(wall_merge, 2),
        "merge_seconds": info_two["merge_seconds"],
        "reference_1thread_wall_seconds": round(wall_ref, 2),
        "reference_1thread_predict_seconds": json.loads((folder / "pred_ref" / "predict.json").read_text())[
            "seconds"
        ],
        **_compare_sets(one, two),
    }


def _report(one: dict, two: dict, p: dict, train_speedup: float, predict_speedup: float, dice: float) -> None:
    print(f"(a) training, {EPOCHS} epochs at {SIZE} px, global batch {GLOBAL_BATCH}:")
    for name, r in (("1 process   ", one), ("2 (torchrun)", two)):
        print(
            f"  {name}: train {r['seconds']:.1f}s (wall {r['wall_seconds']:.1f}s), "
            f"val loss {r['val_loss']:.4f}, val mean Dice {r['val_mean_dice']:.4f}"
        )
    wall, loss = one["wall_seconds"] / two["wall_seconds"], abs(one["val_loss"] - two["val_loss"])
    print(
        f"  speed-up {train_speedup:.2f}x (train seconds), {wall:.2f}x (wall); |Dice diff| {dice:.4f} "
        f"(tolerance {DICE_TOLERANCE}), |val loss diff| {loss:.4f}"
    )
    print(
        f"(b) predict --split all, {p['images']} images: 1 process {p['one_wall_seconds']:.1f}s wall "
        f"({p['one_predict_seconds']:.1f}s in predict); 2 shards {p['shards_wall_seconds']:.1f}s wall "
        f"(in predict {p['shards_predict_seconds']}) + merge {p['merge_wall_seconds']:.1f}s wall "
        f"({p['merge_seconds']:.1f}s in merge): speed-up {predict_speedup:.2f}x (wall)"
    )
    ref = one["reference_1thread"]
    rw, rs = p["reference_1thread_wall_seconds"], p["reference_1thread_predict_seconds"]
    print(
        f"  reference, 1 process x 1 thread: train {ref['seconds']:.1f}s "
        f"(wall {ref['wall_seconds']:.1f}s), val mean Dice {ref['val_mean_dice']:.4f}; "
        f"predict {rw:.1f}s wall ({rs:.1f}s in predict)"
    )
    print(
        f"  merged set vs one process: index.csv identical {p['index_identical']}, {p['maps_differing']} "
        f"of {p['maps']} maps differ (max {p['max_level_difference']} levels; 1 vs 2 threads can round "
        "a pixel differently)"
    )


def main() -> None:
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start")
    print("threads: 1 process x 2 torch threads vs 2 processes x 1 thread (OMP_NUM_THREADS)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        one, two, cfg = bench_training(folder)
        pred = bench_predict(cfg, folder)
    dice_diff = abs(one["val_mean_dice"] - two["val_mean_dice"])
    train_speedup = one["seconds"] / two["seconds"]
    two_total = pred["shards_wall_seconds"] + pred["merge_wall_seconds"]
    predict_speedup = pred["one_wall_seconds"] / two_total
    _report(one, two, pred, train_speedup, predict_speedup, dice_diff)
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at the end")
    note = (
        "reported, no target: on 2 CPU cores 2 processes x 1 thread cannot beat 1 x 2 threads (same "
        "cores, plus start-up and, for training, gradient all-reduce); sharding pays with a GPU per rank"
    )
    record(
        "train_2proc_speedup",
        train_speedup,
        0.0,
        "x (1-process seconds / 2-process seconds)",
        op=">",
        note=note,
    )
    record(
        "train_2proc_val_dice_diff",
        dice_diff,
        DICE_TOLERANCE,
        "abs diff of last-epoch val mean Dice",
        op="<=",
        note=f"{EPOCHS} epochs at {SIZE} px",
    )
    record(
        "predict_2proc_speedup",
        predict_speedup,
        0.0,
        "x (1 process / 2 shards + merge, wall)",
        op=">",
        note=note,
    )
    if dice_diff > DICE_TOLERANCE:
        raise SystemExit(f"validation Dice differs by {dice_diff:.4f} > {DICE_TOLERANCE}")


if __name__ == "__main__":
    main()
