"""The steps after stage one at the challenge's size: sweep, tune, gate and report on synthetic studies.

Builds a cross-fitted experiment folder of ``--studies`` synthetic studies (default 12,000, the
challenge's 12,047 rounded) with ``--size`` px probability maps (default 1024, the challenge's grid),
the real class balance (22 % positive), ``--folds`` folds (default 10) and feature rows of the real
width (2 x 1024 DenseNet values + the map statistics of each map), written through the project's own
writers (``PredictionSet``, ``make_splits``). Then runs each step in a fresh process exactly as
``python -m dualstage run`` does (``dualstage.commands.steps`` / ``build_report``) and prints its wall time
and peak resident memory (the child's ``ru_maxrss``); target: no step above 4 GB.

Maps are a blob near the true lesion for most positives, a fainter false-positive blob on some
negatives, zeros elsewhere (what a trained U-Net's maps look like to these steps: their cost
depends on the grid and the number of studies, not on the pixels' meaning). DICOM SEG writing is
timed separately (a 1024 px SEG per positive decision; the synthetic studies have no DICOM source).

The tune step runs the experiment's real search (``--tune-n-iter 20``); ``make bench`` passes fewer
candidates to stay within its time (the step's memory is the data's and the trees', not the
candidates'; the full search's time is ``bench_stage_two.py``'s claim).

Run: .venv/bin/python benchmarks/scale.py [--studies N] [--size S] [--folds K] [--tune-n-iter N] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.classify.features import STAT_NAMES, feature_names, map_statistics
from dualstage.config import load_experiment
from dualstage.core.io import write_csv_atomic, write_json_atomic
from dualstage.data.splits import make_splits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import record  # noqa: E402

POSITIVE_SHARE = 0.22  # SIIM-ACR stage 2 train: about 22 % of studies show a pneumothorax
MEMORY_TARGET_GB = 4.0
STEPS = ("sweep", "tune", "gate", "report")


def _ellipse(size: int, rng: np.random.Generator, scale: float) -> tuple[np.ndarray, tuple]:
    """(bool (size, size) ellipse, its (row, col, r_row, r_col)): a lesion-sized region."""
    area = float(np.clip(rng.lognormal(np.log(0.007), 0.9), 0.0005, 0.08)) * size * size * scale
    ratio = rng.uniform(0.4, 1.0)
    a = np.sqrt(area / (np.pi * ratio))
    rr, rc = a, a * ratio
    r0 = rng.uniform(0.15, 0.8) * size
    c0 = rng.choice([rng.uniform(0.1, 0.4), rng.uniform(0.6, 0.9)]) * size
    rows, cols = np.ogrid[:size, :size]
    return ((rows - r0) / rr) ** 2 + ((cols - c0) / rc) ** 2 <= 1.0, (r0, c0, rr, rc)


def _blob(size: int, geom: tuple, peak: float, rng: np.random.Generator) -> np.ndarray:
    """(size, size) uint8 map q of a smooth probability blob around ``geom`` (row, col, radii)."""
    r0, c0, rr, rc = geom
    r0, c0 = r0 + rng.normal(0, rr * 0.3), c0 + rng.normal(0, rc * 0.3)
    lo_r, hi_r = int(max(0, r0 - 2 * rr)), int(min(size, r0 + 2 * rr + 1))
    lo_c, hi_c = int(max(0, c0 - 2 * rc)), int(min(size, c0 + 2 * rc + 1))
    rows, cols = np.ogrid[lo_r:hi_r, lo_c:hi_c]
    d2 = ((rows - r0) / rr) ** 2 + ((cols - c0) / rc) ** 2
    q = np.zeros((size, size), dtype=np.uint8)
    q[lo_r:hi_r, lo_c:hi_c] = np.round(255 * peak * np.exp(-1.2 * d2**2)).astype(np.uint8)
    return q


def _study(args: tuple) -> tuple[str, dict, np.ndarray]:
    """Write one study's map + histogram; (id, index row, (F,) float32 feature row)."""
    folder, i, size, positive, seed = args
    rng = np.random.default_rng([seed, i])
    image_id = f"1.2.276.0.7230010.3.1.4.{seed}.{i}"
    truth, geom = _ellipse(size, rng, 1.0)
    if positive:
        shown, peak = rng.random() < 0.8, rng.uniform(0.4, 0.99)
    else:
        truth[:] = False
        shown, peak = rng.random() < 0.25, rng.uniform(0.2, 0.7)
    q = _blob(size, geom, peak, rng) if shown else np.zeros(truth.shape, np.uint8)
    PredictionSet(folder).write_image(image_id, q, truth)
    stats = map_statistics(q)
    dense = rng.normal(0.0, 1.0, 2 * 1024).astype(np.float32)
    dense[:300] += 0.25 * positive  # a weak, spread signal in the DenseNet part
    row = np.concatenate([dense, np.array([stats[n] for n in STAT_NAMES], dtype=np.float32)])
    meta = {
        "image_id": image_id,
        "split": "train",
        "fold_model": "",
        "height": size,
        "width": size,
        "has_truth": 1,
        "has_pneumothorax": int(positive),
        "true_area_px": int(truth.sum()),
    }
    return image_id, meta, row


def build(root: Path, n: int, size: int, folds: int, tune: dict, seed: int = 0) -> Path:
    """Write the synthetic experiment under ``root`` (``tune``: the tune section); its YAML path."""
    cfg = {
        "name": "scale",
        "output_root": str(root / "models"),
        "data": {"source": str(root / "absent"), "n_folds": folds, "sizes": [size]},
        "train": {"folds": "all"},
        "tune": tune,
        "gate": {"threads": 2},
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / "scale.yaml"
    path.write_text(yaml.safe_dump(cfg))
    exp = load_experiment(path)
    d = exp.dir
    rng = np.random.default_rng(seed)
    positive = rng.random(n) < POSITIVE_SHARE
    pset = PredictionSet(d.prediction_set("oof"))
    jobs = [(pset.folder, i, size, bool(positive[i]), seed) for i in range(n)]
    with Pool(2) as pool:
        out = pool.map(_study, jobs, chunksize=64)
    ids = [o[0] for o in out]
    manifest = pd.DataFrame({"image_id": ids, "has_pneumothorax": positive.astype(int)})
    splits = make_splits(manifest, n_folds=folds, seed=seed)
    write_csv_atomic(splits, d.splits_csv)
    fold_of = splits.set_index("image_id")["fold"]
    index = pd.DataFrame([o[1] for o in out])
    index["fold_model"] = [f"fold_{fold_of[i]}" for i in ids]
    pset.write_index(index)
    pset.write_info({"synthetic": True, "studies": n, "size": size})
    fdir = d.feature_set("oof")
    fdir.mkdir(parents=True, exist_ok=True)
    X = np.stack([o[2] for o in out])
    np.savez(fdir / "features.npz", image_id=np.array(ids), X=X, feature_names=np.array(feature_names()))
    stats = pd.DataFrame(X[:, -len(STAT_NAMES) :], columns=list(STAT_NAMES))
    cols = ["image_id", "split", "fold_model", "has_truth", "has_pneumothorax"]
    write_csv_atomic(pd.concat([index[cols], stats], axis=1), fdir / "index.csv")
    write_json_atomic(
        fdir / "features.json",
        {"weights": "synthetic", "weights_sha256": None, "image_size": size, "version": 1},
    )
    return path


def child(step: str, yaml_path: str) -> None:
    """Run one step in this process (called by :func:`measure`)."""
    from dualstage.commands import steps

    exp = load_experiment(yaml_path)
    if step == "sweep":
        steps.sweep_experiment(exp)
    elif step == "tune":
        steps.tune_experiment(exp)
    elif step == "gate":
        steps.gate_experiment(exp)
    elif step == "report":
        from dualstage.crossfit.compare import crossfit_gates
        from dualstage.report import build_report

        r = exp.report
        build_report(exp.folder, resamples=r.resamples, seed=r.seed, gallery=r.gallery, gates=crossfit_gates)


def measure(step: str, yaml_path: Path) -> dict:
    """Run ``step`` in a child process: {seconds, peak_gb}; raises when the step fails."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", step, str(yaml_path)])
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"scale: step {step} failed (exit {os.waitstatus_to_exitcode(status)})")
    return {"seconds": round(seconds, 1), "peak_gb": round(usage.ru_maxrss / 1024**2, 3)}


def seg_seconds(size: int, n: int = 10) -> float:
    """Seconds per DICOM SEG of a (size, size) mask over a phantom DICOM of that size."""
    from dualstage.classify.dicom_seg import write_seg
    from dualstage.data.phantom import generate

    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "data", 1, size=size, layout="siim", seed=0, workers=1, progress=False)
        src = next((Path(tmp) / "data").rglob("*.dcm"))
        mask = np.zeros((size, size), dtype=bool)
        mask[size // 4 : size // 2, size // 5 : size // 3] = True
        t0 = time.perf_counter()
        for i in range(n):
            write_seg(src, mask, Path(tmp) / f"seg_{i}.dcm", algorithm_version="scale")
        return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=12000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--tune-n-iter", type=int, default=20, help="tune.n_iter (20: the real run's)")
    p.add_argument("--no-table2", action="store_true", help="tune.table2: false (the gate's classifier only)")
    p.add_argument("--keep", type=Path, help="build in this folder and keep it (default: a temp folder)")
    p.add_argument("--child", nargs=2, metavar=("STEP", "YAML"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t0 = time.perf_counter()
        tune = {"threads": 2, "n_iter": args.tune_n_iter, "table2": not args.no_table2}
        path = build(root, args.studies, args.size, args.folds, tune)
        print(
            f"scale: {args.studies} synthetic studies, {args.size} px maps, {args.folds} folds, "
            f"tune {tune}, built in {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        results = {}
        for step in STEPS:
            results[step] = r = measure(step, path)
            ok = "ok" if r["peak_gb"] <= MEMORY_TARGET_GB else "OVER"
            print(f"  {step:7s} {r['seconds']:8.1f} s   peak {r['peak_gb']:.2f} GB  [{ok}]", flush=True)
            record(
                f"scale_{step}_peak_gb",
                r["peak_gb"],
                MEMORY_TARGET_GB,
                "GB peak RSS",
                op="<=",
                seconds=r["seconds"],
                studies=args.studies,
                size=args.size,
                folds=args.folds,
                tune=tune,
            )
        seg = seg_seconds(args.size)
        print(f"  DICOM SEG per positive decision ({args.size} px): {seg * 1000:.0f} ms")
        disk = sum(f.stat().st_size for f in (root / "models").rglob("*") if f.is_file())
        print(f"  experiment folder after the steps: {disk / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
