"""Peak memory of `segment predict --input` and `segment prepare`: hostile files vs good images.

Issue 19: a 1.6 KB DICOM claiming 60000 x 60000 pixels, a JPEG Baseline DICOM claiming 50000 x
50000, a zero-filled 12000 x 12000 PNG and a PNG bomb (IHDR 65535 x 65535) beside two good 1024 px
images; and, beside it, N good 1024 px images (default 200). Each command runs as its own process
(one process: --workers 0) under GNU ``/usr/bin/time``, which reports its peak resident set size (the
figure ``/usr/bin/time -v`` prints as "Maximum resident set size"). The model is a U-Net of the
demo's shape (ResNet18, half-width decoder, 128 px; untrained weights: memory does not depend on
them), or the experiment given with --exp (e.g. models/demo). Claims: each hostile peak <= 3 GB.
Run: .venv/bin/python benchmarks/bench_hostile_memory.py [--good N] [--exp models/demo --folds fold_0]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _results import record
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bad_input_kit import hostile_images  # noqa: E402  (the tests' builders of the same files)

TARGET_GB = 3.0
TIME = "/usr/bin/time"  # GNU time: -f %M is the peak resident set size in KB


def _good_images(folder: Path, n: int, start: int = 0) -> None:
    """``n`` smooth 1024 px grayscale radiograph-like PNGs (gradient, disc, noise)."""
    y, x = np.mgrid[0:1024, 0:1024]
    for k in range(start, start + n):
        rng = np.random.default_rng(k)
        img = 60 + 0.08 * x + 0.05 * y + 80 * (((x - 512) ** 2 + (y - 400) ** 2) < (200 + k % 50) ** 2)
        img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"good_{k:04d}.png", compress_level=1)


def _siim(folder: Path) -> None:
    """siim layout around ``folder/images``: an RLE CSV saying every image is empty."""
    ids = sorted(p.stem for p in (folder / "images").iterdir())
    (folder / "train-rle.csv").write_text("ImageId,EncodedPixels\n" + "".join(f"{i},-1\n" for i in ids))


def peak_rss(args: list[str], tmp: Path) -> tuple[float, float, int, str]:
    """(peak RSS GB, wall seconds, exit status, last stderr line) of ``python -m dualstage.segment args``,
    measured by ``/usr/bin/time`` (its "Maximum resident set size"): a child of this (large) process
    would inherit its high-water mark across exec."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    report = tmp / "time.txt"
    cmd = [TIME, "-f", "%M", "-o", str(report), sys.executable, "-m", "dualstage.segment", *args]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    seconds = time.perf_counter() - t0
    line = (proc.stderr.strip().splitlines() or [""])[-1]
    kbytes = int(report.read_text().strip().splitlines()[-1])
    return kbytes / 1024**2, seconds, proc.returncode, line


def _model(root: Path) -> tuple[str, list[str]]:
    """(experiment folder, --folds) of a demo-shaped untrained U-Net."""
    from _setup import phantom_experiment, save_model

    from dualstage.commands.experiment import record_experiment

    exp = phantom_experiment(root, 12, 128, 128, encoder="resnet18", decoder_channels=[128, 64, 32, 16, 8])
    save_model(exp, "main")
    record_experiment(exp)
    return str(exp.folder), ["--folds", "main"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--good", type=int, default=200, help="good 1024 px images of the second folder")
    parser.add_argument("--exp", default=None, help="a trained experiment folder (default: demo-shaped)")
    parser.add_argument("--folds", nargs="+", default=None, help="with --exp: its models to use")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        exp, folds = (opts.exp, ["--folds", *opts.folds] if opts.folds else []) if opts.exp else _model(root)
        hostile, good = root / "hostile" / "images", root / "good" / "images"
        for folder in (hostile, good):
            folder.mkdir(parents=True)
        hostile_images(hostile)
        _good_images(hostile, 2, start=10_000)
        _good_images(good, opts.good)
        figures = {}
        for name, data in (("hostile", hostile.parent), ("good", good.parent)):
            _siim(data)
            out = root / f"pred_{name}"
            predict = [
                "predict",
                "--exp",
                exp,
                *folds,
                "--input",
                str(data / "images"),
                "--out",
                str(out),
                "--workers",
                "0",
                "--no-progress",
                "--device",
                "cpu",
            ]
            prepare = [
                "prepare",
                "--data",
                str(data),
                "--out",
                str(root / f"prep_{name}"),
                "--sizes",
                "256",
                "--folds",
                "2",
                "--workers",
                "0",
                "--no-progress",
            ]
            for step, args in (("predict", predict), ("prepare", prepare)):
                gb, seconds, code, line = peak_rss(args, root)
                figures[(step, name)] = gb
                print(f"{step:8s} {name:8s}: peak RSS {gb:.2f} GB, {seconds:.1f} s, exit {code}  {line}")
                if code != 0:
                    raise SystemExit(f"{step} over the {name} folder failed (exit {code}): {line}")
            shutil.rmtree(out, ignore_errors=True)
        model = exp if opts.exp else "demo-shaped untrained U-Net"
        for step in ("predict", "prepare"):
            good_gb = round(figures[(step, "good")], 3)
            record(
                f"peak_rss_{step}_hostile_gb",
                figures[(step, "hostile")],
                TARGET_GB,
                "GB peak RSS",
                op="<=",
                files=6,
                good_images=opts.good,
                good_folder_gb=good_gb,
                model=model,
            )


if __name__ == "__main__":
    main()
