"""``python -m dualstage predict`` end to end vs the bare loop of the same models, on 1024 px images.

Claim ``predict_new_vs_bare_models`` (benchmarks/results.json): bare seconds / command seconds on
the same images, target >= 0.80. Command: :func:`dualstage.commands.new_images.predict_new` with the demo's
predictor (set up once, as the front door is meant to be used; the set-up's seconds are recorded
beside) over a folder of 1024 px phantom PNGs: header scan, decode, resize, every fold pipeline's
U-Net, maps back on the 1024 grid, map statistics, the DenseNet trunk on the image and on each
fold's map, each fold's XGBoost, the fold vote, the training-profile distance, final masks,
overlays, thumbnails, decisions.csv, rejected.csv and the review page. Bare: the same loaded
models (every fold's U-Net, the DenseNet trunk on the image and K maps, every XGBoost, same batch,
threads and precision) on the same images and maps, made before the clock starts: the models'
own work. Timed alternately after an untimed warm-up of each; the fastest round of each is compared.
The DenseNet's inputs are the command's own maps: fed the U-Net's raw probabilities instead, the
demo's untrained DenseNet produced denormal activations, several times slower on a CPU, and the
ratio measured those rather than the command.
Needs the demo's models (``make demo`` first). Run: make bench  (or .venv/bin/python
benchmarks/bench_predict_new.py [n_images] [size] [experiment folder])
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _results import alternate, machine, ratio, record

from dualstage.classify.densenet import embed
from dualstage.commands.new_images import predict_new
from dualstage.commands.predictor import Predictor, resize
from dualstage.data.images import read_image_file
from dualstage.data.phantom import generate
from dualstage.segment.inference import probabilities

ROOT = Path(__file__).resolve().parents[1]


def bare_loop(predictor: Predictor, images: list[np.ndarray]) -> Callable[[], None]:
    """The predictor's models, nothing else, over ``images`` in its batches: every fold's U-Net, the
    DenseNet on the images and on each fold's map, every fold's XGBoost. Inputs are made before the
    clock: the images resized, and the maps the DenseNet sees exactly as the command makes them
    (the U-Net's map on the image's grid, back to the feature size), so both run the same
    arithmetic on the same values (this untrained DenseNet's cost depends on them: denormals)."""
    batch = predictor.settings["batch_size"]
    size = predictor.pipelines[0].resolution
    key = predictor.pipelines[0].feature_key
    net = predictor.nets[key]

    def tensor(arrays: list[np.ndarray], side: int) -> torch.Tensor:
        return torch.from_numpy(np.stack([resize(a, side) for a in arrays]).astype(np.float32) / 255.0)[
            :, None
        ]

    batches = []
    for k in range(0, len(images), batch):
        part = images[k : k + batch]
        maps = predictor.forward(part)["maps"]
        feats = [tensor(maps[p.name], key[1]) for p in predictor.pipelines]
        batches.append((tensor(part, size), torch.cat([tensor(part, key[1]), *feats])))

    @torch.no_grad()
    def run() -> None:
        for x, f in batches:
            for p in predictor.pipelines:
                probabilities(p.models, x, predictor.settings["tta"], predictor.amp)
            phi = embed(net, f, predictor.feature_dtype)
            rows = np.zeros((len(x), phi.shape[1] * 2 + 11), np.float32)
            for p in predictor.pipelines:
                p.classifier.predict_proba(rows)

    return run


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 1024
    exp = Path(sys.argv[3]) if len(sys.argv) > 3 else ROOT / "models" / "demo"
    if not (exp / "crossfit").is_dir():
        print(f"skipped: {exp} holds no trained demo experiment; run `make demo` first")
        return
    t0 = time.perf_counter()
    predictor = Predictor.from_experiment(exp, device="cpu")
    setup_seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(
            root / "in",
            n,
            size=size,
            layout="png",
            seed=2,
            workers=2,
            progress=False,
            lesion_contrast=2.5,
            subtle_share=0.25,
        )
        runs = {"n": 0}

        def command() -> None:
            runs["n"] += 1
            out = root / f"out_{runs['n']}"
            predict_new(root / "in", exp, out, predictor=predictor, progress=False)
            shutil.rmtree(out)

        paths = sorted((root / "in").rglob("*.png"))
        bare = bare_loop(predictor, [read_image_file(p)[0] for p in paths])
        warm = root / "warm"
        predict_new(paths[:8], exp, warm, predictor=predictor, progress=False)
        bare()
        times = alternate({"bare": bare, "command": command}, rounds=3, warmup=False)
    ratios = ratio(times, "bare", "command")
    t_bare, t_cmd = min(times["bare"]), min(times["command"])
    info = {
        "images": n,
        "source_size": size,
        "experiment": exp.name,
        "pipelines": len(predictor.pipelines),
        "resolution": predictor.pipelines[0].resolution,
        "batch_size": predictor.settings["batch_size"],
        "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "setup_seconds": round(setup_seconds, 2),
        "ratio_with_setup": round(t_bare / (t_cmd + setup_seconds), 3),
        "ratio_median_of_rounds": round(ratios["median"], 3),
        "ratio_cpu_seconds": round(ratios["cpu"], 3),
        **machine(),
    }
    print(
        f"{n} images at {size} px, {len(predictor.pipelines)} fold pipelines: bare models {t_bare:.1f}s "
        f"({n / t_bare:.2f} images/s), command {t_cmd:.1f}s ({n / t_cmd:.2f} images/s, overlays and page "
        f"included); ratio {ratios['best']:.3f} (median of rounds {ratios['median']:.3f}); set-up "
        f"{setup_seconds:.1f}s once (ratio with it {info['ratio_with_setup']})"
    )
    record("predict_new_vs_bare_models", ratios["best"], 0.80, "bare s / command s", **info)


if __name__ == "__main__":
    main()
