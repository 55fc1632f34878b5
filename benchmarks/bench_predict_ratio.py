"""``segment predict`` end to end vs a bare ``model(x)`` loop, and the U-Net's share of the matmul rate.

Claims (benchmarks/results.json):

- ``predict_vs_bare_forward``: bare seconds / predict seconds on the same images (1.0 = no
  overhead), target >= 0.90. Predict: :func:`dualstage.segment.predict.predict` on the prepared
  split (cache PNG decode, normalise, forward, sigmoid, bilinear resize back to the source grid,
  uint8 maps written as PNG, truth histograms, index); bare: the same loaded model (same batch,
  threads, resolution, precision and channels_last) on normalised tensors already in memory.
- ``predict_flops_share_of_matmul``: the U-Net's FLOPs (torch's FlopCounterMode, model at predict's
  size) x images / predict seconds, over the best rate a large matrix product reaches in torch at the
  same dtype in this run (``torch.mm`` or as a 1 x 1 convolution); target >= 0.6.

The two are timed alternately (bare, predict, bare, predict, ...) after one untimed round; the
fastest round of each is compared (the least disturbed by other processes on a shared machine).
Run: make bench  (or .venv/bin/python benchmarks/bench_predict_ratio.py
[n_images] [encoder] [resolution] [source_size] [precision])
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import alternate, machine, ratio, record
from _setup import phantom_experiment, save_model
from torch.utils.flop_counter import FlopCounterMode

from dualstage.artifacts.layout import ExperimentDir
from dualstage.data.cache import load_cached
from dualstage.data.dataset import load_split_table
from dualstage.runtime.precision import autocast, inference_dtype, precision_name
from dualstage.segment import models
from dualstage.segment.inference import load_models, select_models
from dualstage.segment.predict import predict


def matmul_rate(dtype: torch.dtype, n: int = 2048, repeats: int = 8) -> float:
    """The best FLOP/s torch reaches on an n x n x n matrix product at ``dtype``: ``torch.mm`` (BLAS)
    or the same product as a 1 x 1 convolution (oneDNN, the library the U-Net's convolutions use;
    on this AMD CPU torch.mm's BLAS path reached less than the U-Net's own convolutions)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    x = torch.randn(1, n, n // 64, 64).to(dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(n, n, 1, 1).to(dtype).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    for fn in (lambda: torch.mm(a, b), lambda: torch.nn.functional.conv2d(x, w)):
        fn()
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def model_flops(net: torch.nn.Module, size: int, dtype: torch.dtype | None) -> int:
    """FLOPs of one (1, 3, size, size) forward (FlopCounterMode: 2 per multiply-add)."""
    x = torch.zeros(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), FlopCounterMode(display=False) as counter, autocast(dtype, torch.device("cpu")):
        net(x)
    return int(counter.get_total_flops())


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 32
    encoder = sys.argv[2] if len(sys.argv) > 2 else "resnet34"
    res = int(sys.argv[3]) if len(sys.argv) > 3 else 512
    source = int(sys.argv[4]) if len(sys.argv) > 4 else 1024
    precision = sys.argv[5] if len(sys.argv) > 5 else "auto"
    batch, cpu = 8, torch.device("cpu")
    dtype = inference_dtype(precision, cpu)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        exp = phantom_experiment(root, n, source, res, encoder)
        save_model(exp)
        model = load_models(select_models(ExperimentDir(exp.folder)), "best", cpu)["main"][0]
        ids = load_split_table(exp.folder / "prepared")["image_id"].tolist()
        gray = torch.stack([torch.tensor(load_cached(exp.folder / "prepared", res, i)[0]) for i in ids])
        x = models.to_input(gray[:, None].float() / 255.0, model.mean, model.std)
        batches = [x[k : k + batch].contiguous(memory_format=torch.channels_last) for k in range(0, n, batch)]

        @torch.no_grad()
        def bare() -> None:
            for xb in batches:
                with autocast(dtype, cpu):
                    model.net(xb)

        runs = {"n": 0}

        def real() -> None:
            runs["n"] += 1
            out = root / f"pred_{runs['n']}"
            predict(
                exp.folder,
                out,
                split="all",
                batch_size=batch,
                workers=0,
                device="cpu",
                progress=False,
                precision=precision,
            )
            shutil.rmtree(out)

        rate = matmul_rate(dtype or torch.float32)  # best of before and after: the least disturbed
        times = alternate({"bare": bare, "predict": real}, rounds=3)
        t_bare, t_real = min(times["bare"]), min(times["predict"])
        flops = model_flops(model.net, res, dtype)
        rate = max(rate, matmul_rate(dtype or torch.float32))
    ratios = ratio(times, "bare", "predict")
    achieved = flops * n / t_real
    info = {
        "images": n,
        "encoder": encoder,
        "resolution": res,
        "source_size": source,
        "batch_size": batch,
        "precision": precision_name(dtype),
        "channels_last": True,
        "workers": 0,
        "seconds": {k: [round(t, 2) for t in v] for k, v in times.items()},
        "ratio_median_of_rounds": round(ratios["median"], 3),
        "ratio_cpu_seconds": round(ratios["cpu"], 3),
        **machine(),
    }
    print(
        f"U-Net {encoder} at {res} px (maps back to {source} px), {n} images, batch {batch}, "
        f"{precision_name(dtype)}, {torch.get_num_threads()} threads: bare {t_bare:.2f}s "
        f"({t_bare / n * 1000:.0f} ms/image), predict {t_real:.2f}s ({t_real / n * 1000:.0f} ms/image); "
        f"ratio {ratios['best']:.3f} (best rounds; median of rounds {ratios['median']:.3f}, CPU seconds "
        f"{ratios['cpu']:.3f})"
    )
    print(
        f"FLOPs {flops / 1e9:.1f} G/image; predict {achieved / 1e9:.0f} GFLOP/s, bare forward "
        f"{flops * n / t_bare / 1e9:.0f} GFLOP/s; torch.mm {rate / 1e9:.0f} GFLOP/s at "
        f"{precision_name(dtype)}: share {achieved / rate:.3f} (bare {flops * n / t_bare / rate:.3f})"
    )
    record("predict_vs_bare_forward", ratios["best"], 0.90, "bare s / predict s", **info)
    record(
        "predict_flops_share_of_matmul",
        achieved / rate,
        0.6,
        "achieved FLOP/s / best matmul FLOP/s",
        gflops_per_image=round(flops / 1e9, 2),
        predict_gflops_per_s=round(achieved / 1e9, 1),
        bare_gflops_per_s=round(flops * n / t_bare / 1e9, 1),
        matmul_gflops_per_s=round(rate / 1e9, 1),
        bare_share=round(flops * n / t_bare / rate, 3),
        **info,
    )


if __name__ == "__main__":
    main()
