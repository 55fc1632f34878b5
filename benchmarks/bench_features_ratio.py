"""``classify features`` vs a bare DenseNet121 forward on the same inputs.

Claim ``features_vs_bare_forward`` (benchmarks/results.json): bare seconds / features seconds,
target >= 0.90. Features: :func:`dualstage.classify.features.extract_features` on a prediction
set (map PNG decode on the source grid, map statistics, cached image decode, resizes, the DenseNet
trunk on image and map, one ``parts/<id>.npy`` per row, features.npz, index.csv). Bare: the same
DenseNet121 (same weights, batch, threads, image size, precision, channels_last) on the
normalised image + map batches already in memory. Timed alternately after one untimed round; the fastest
round of each is compared (the least disturbed on a shared machine).
Run: make bench  (or .venv/bin/python benchmarks/bench_features_ratio.py [n_images] [image_size]
[source_size] [precision])
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import torch
from _results import alternate, machine, ratio, record
from _setup import phantom_experiment, save_model

from dualstage.artifacts.prediction_set import PredictionSet
from dualstage.classify.features import extract_features, load_densenet
from dualstage.data.cache import cache_paths, pick_cache_size
from dualstage.runtime.precision import autocast, inference_dtype, precision_name
from dualstage.runtime.weights import IMAGENET_MEAN, IMAGENET_STD
from dualstage.segment.predict import predict


def _inputs(pset: PredictionSet, prepared: Path, size: int, batch: int) -> list[torch.Tensor]:
    """Normalised channels_last (2B, 3, size, size) batches: B images then their B maps."""
    from dualstage.classify.features import _tensor
    from dualstage.data.images import read_image_file

    ids = pset.index()["image_id"].tolist()
    cache = pick_cache_size(prepared, size)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    out = []
    for k in range(0, len(ids), batch):
        chunk = ids[k : k + batch]
        images = [_tensor(read_image_file(cache_paths(prepared, cache, i)[0])[0], size) for i in chunk]
        maps = [_tensor(pset.read_map(i), size) for i in chunk]
        x = torch.stack(images + maps).expand(-1, 3, -1, -1)
        out.append(((x - mean) / std).contiguous(memory_format=torch.channels_last))
    return out


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    size = int(sys.argv[2]) if len(sys.argv) > 2 else 224
    source = int(sys.argv[3]) if len(sys.argv) > 3 else 1024
    precision = sys.argv[4] if len(sys.argv) > 4 else "auto"
    batch, cpu = 16, torch.device("cpu")
    dtype = inference_dtype(precision, cpu)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        exp = phantom_experiment(root, n, source, 256, "resnet18", decoder_channels=[128, 64, 32, 16, 8])
        save_model(exp)
        pred = root / "pred"
        predict(exp.folder, pred, split="all", batch_size=8, workers=0, device="cpu", progress=False)
        prepared = exp.folder / "prepared"
        batches = _inputs(PredictionSet(pred), prepared, size, batch)
        net = load_densenet("none")[0].to(memory_format=torch.channels_last)

        @torch.no_grad()
        def bare() -> None:
            for x in batches:
                with autocast(dtype, cpu):
                    net.features(x)

        runs = {"n": 0}

        def real() -> None:
            runs["n"] += 1
            out = root / f"features_{runs['n']}"
            extract_features(
                pred,
                out,
                prepared=prepared,
                weights="none",
                image_size=size,
                batch_size=batch,
                workers=0,
                device="cpu",
                progress=False,
                precision=precision,
            )
            shutil.rmtree(out)

        times = alternate({"bare": bare, "features": real}, rounds=3)
    t_bare, t_real = min(times["bare"]), min(times["features"])
    ratios = ratio(times, "bare", "features")
    print(
        f"DenseNet121 at {size} px, {n} rows (image + map, maps on a {source} px grid), batch {batch}, "
        f"{precision_name(dtype)}, {torch.get_num_threads()} threads: bare {t_bare:.2f}s "
        f"({t_bare / n * 1000:.0f} ms/row), features {t_real:.2f}s ({t_real / n * 1000:.0f} ms/row); "
        f"ratio {ratios['best']:.3f} (median of rounds {ratios['median']:.3f}, CPU {ratios['cpu']:.3f})"
    )
    record(
        "features_vs_bare_forward",
        ratios["best"],
        0.90,
        "bare s / features s",
        rows=n,
        image_size=size,
        source_size=source,
        batch_size=batch,
        precision=precision_name(dtype),
        channels_last=True,
        workers=0,
        seconds={k: [round(t, 2) for t in v] for k, v in times.items()},
        ratio_median_of_rounds=round(ratios["median"], 3),
        ratio_cpu_seconds=round(ratios["cpu"], 3),
        **machine(),
    )


if __name__ == "__main__":
    main()
