"""The GPU check (run by benchmarks/gpu_check.sh): throughput of the pipeline's GPU steps.

(a) one bf16-autocast training step of the U-Net (ResNet34, 512 px, batch 8, channels_last, AdamW),
    timed after warm-up steps: images/s;
(b) ``segment predict`` (the real function) on a phantom experiment: 128 phantoms at 512 px,
    prepared at 256 px, one untrained model saved as a checkpoint (no training: the speed does not
    depend on the weights); images/s of a second run (the first warms up CUDA and cuDNN);
(c) ``classify features`` on that prediction set (DenseNet121, random weights, 224 px): images/s;
(d) an XGBoost fit on 12,000 x 2,057 synthetic rows with ``device="cuda"`` and on every CPU core
    (same trees): seconds; a bf16 matmul's TFLOP/s.

``DEVICE=cpu`` runs the same code at tiny sizes (a dry run). Every part is timed on its own and a
part that fails is reported (its error) without stopping the others. Figures go to stdout and, in
claim form ({name: {measured, target, unit}}), to ``$OUT/gpu_check.json`` when ``$OUT`` is set.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

DEVICE = torch.device(os.environ.get("DEVICE", "cuda"))
TINY = DEVICE.type == "cpu"
SIZES = {
    "train_size": 64 if TINY else 512,
    "train_batch": 2 if TINY else 8,
    "train_steps": 2 if TINY else 20,
    "warmup": 1 if TINY else 5,
    "phantoms": 8 if TINY else 128,
    "phantom_size": 128 if TINY else 512,
    "prepared": 64 if TINY else 256,
    "predict_batch": 4 if TINY else 32,
    "features_size": 64 if TINY else 224,
    "features_batch": 4 if TINY else 64,
    "xgb_rows": 600 if TINY else 12000,
    "xgb_cols": 2057,
    "xgb_trees": 5 if TINY else 100,
    "matmul": 256 if TINY else 8192,
    "matmul_iters": 2 if TINY else 50,
}
WORKERS = min(8, os.cpu_count() or 1)
claims: dict[str, dict] = {}
errors: dict[str, str] = {}


def claim(name: str, value: float | None, unit: str, target: float | None = None) -> None:
    claims[name] = {
        "measured": None if value is None else round(float(value), 3),
        "target": target,
        "unit": unit,
    }
    print(f"  {name}: {value if value is None else round(float(value), 3)} {unit}", flush=True)


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def part(name: str):
    """Decorator: run a part, time it, keep going after an error (recorded under ``errors``)."""

    def wrap(func):
        def run(*args):
            print(f"== {name}", flush=True)
            t0 = time.perf_counter()
            try:
                return func(*args)
            except Exception as exc:  # noqa: BLE001 - one part's failure must not hide the others
                errors[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
                print(f"  FAILED: {errors[name]}\n{traceback.format_exc(limit=3)}", flush=True)
                return None
            finally:
                print(f"  ({time.perf_counter() - t0:.1f}s)", flush=True)

        return run

    return wrap


@part("(a) training step: U-Net ResNet34, bf16 autocast, channels_last, AdamW")
def train_step(size: int, batch: int, name: str) -> None:
    from dualstage.segment import losses, models

    torch.backends.cudnn.benchmark = True
    net = models.build_model("resnet34", "none").to(DEVICE).to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(net.parameters(), 1e-4)
    loss_fn = losses.build_loss({"name": "weighted_bce", "pos_weight": 5.0})
    x = torch.rand(batch, 3, size, size, device=DEVICE).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(batch, 1, size, size, device=DEVICE) > 0.9).float()

    def step() -> None:
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            logits = net(x).float()
        loss = loss_fn(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(SIZES["warmup"]):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(SIZES["train_steps"]):
        step()
    sync()
    seconds = (time.perf_counter() - t0) / SIZES["train_steps"]
    print(f"  {size} px, batch {batch}: {seconds * 1000:.1f} ms per step")
    claim(name, batch / seconds, f"images/s at {size} px, batch {batch}")
    if DEVICE.type == "cuda":
        claim(f"{name}_peak_memory", torch.cuda.max_memory_allocated() / 2**30, "GiB")
        torch.cuda.reset_peak_memory_stats()


def _checkpoint(exp_dir: Path, resolution: int) -> None:
    """An untrained ResNet34 U-Net saved as ``segmenter/main`` (what predict loads)."""
    from dualstage.config import Experiment, to_dict
    from dualstage.segment import models
    from dualstage.segment.checkpoint import FORMAT, save_checkpoint

    config = to_dict(Experiment(name=exp_dir.name))
    config["train"]["amp"] = "off" if TINY else "bf16"
    mean, std = models.normalization("encoder")
    net = models.build_model("resnet34", "none")
    payload = {
        "format": FORMAT,
        "kind": "inference",
        "model": net.state_dict(),
        "encoder": "resnet34",
        "decoder_channels": None,
        "normalization": {"mean": list(mean), "std": list(std)},
        "resolution": resolution,
        "experiment": config,
        "fold": "main",
        "epoch": 0,
        "val_mean_dice": 0.0,
    }
    for name in ("last.pt", "best.pt"):
        save_checkpoint(exp_dir / "segmenter" / "main" / name, payload)


@part("(b) segment predict: phantom experiment, real predict function")
def predict_part(root: Path) -> Path | None:
    from dualstage.data.phantom import generate
    from dualstage.data.prepare import prepare
    from dualstage.segment.predict import predict

    t0 = time.perf_counter()
    exp = root / "gpucheck"
    generate(
        root / "phantoms",
        SIZES["phantoms"],
        size=SIZES["phantom_size"],
        layout="png",
        workers=WORKERS,
        progress=False,
    )
    prepare(
        root / "phantoms",
        exp / "prepared",
        sizes=(SIZES["prepared"],),
        workers=WORKERS,
        n_folds=3,
        progress=False,
    )
    _checkpoint(exp, SIZES["prepared"])
    print(
        f"  {SIZES['phantoms']} phantoms at {SIZES['phantom_size']} px, prepared at {SIZES['prepared']} px "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    kw = {
        "split": "all",
        "batch_size": SIZES["predict_batch"],
        "workers": min(4, WORKERS),
        "device": str(DEVICE),
        "progress": False,
    }
    predict(exp, root / "pred_warmup", **kw)
    summary = predict(exp, root / "pred", **kw)
    print(
        f"  {summary['images']} images, maps written at {SIZES['phantom_size']} px: {summary['seconds']}s "
        f"(model load included)"
    )
    claim("gpu_predict_images_per_s", summary["images_per_second"], "images/s")
    return root / "pred"


@part("(c) classify features: DenseNet121 (random weights) on image + map, map statistics")
def features_part(root: Path, pred: Path | None) -> None:
    from dualstage.classify.features import extract_features

    if pred is None:
        raise RuntimeError("no prediction set: (b) failed")
    kw = {
        "prepared": root / "gpucheck" / "prepared",
        "weights": "none",
        "image_size": SIZES["features_size"],
        "batch_size": SIZES["features_batch"],
        "workers": min(4, WORKERS),
        "device": str(DEVICE),
        "progress": False,
    }
    extract_features(pred, root / "features_warmup", **kw)
    summary = extract_features(pred, root / "features", **kw)
    print(f"  {summary['images']} images at {SIZES['features_size']} px: {summary['seconds']}s in all")
    claim("gpu_features_images_per_s", summary["images_per_second"], "images/s")


@part("(d) XGBoost fit (device=cuda, then every CPU core) and a bf16 matmul")
def xgboost_part() -> None:
    rng = np.random.default_rng(0)
    n, f = SIZES["xgb_rows"], SIZES["xgb_cols"]
    X = rng.standard_normal((n, f), dtype=np.float32)
    y = (X[:, :20].sum(1) + rng.standard_normal(n) > 0).astype(np.int64)
    matmul()
    import xgboost

    print(
        f"  xgboost {xgboost.__version__}, {n} x {f}, {SIZES['xgb_trees']} trees of depth 6, hist, 256 bins"
    )
    params = {
        "n_estimators": SIZES["xgb_trees"],
        "max_depth": 6,
        "learning_rate": 0.1,
        "tree_method": "hist",
        "max_bin": 256,
    }
    devices = [("cuda", "gpu_xgboost_fit_seconds")] if DEVICE.type == "cuda" else []
    for device, name in [*devices, ("cpu", "cpu_xgboost_fit_seconds")]:
        try:
            if device == "cuda":  # CUDA context and kernels first
                xgboost.XGBClassifier(**{**params, "n_estimators": 2}, device=device).fit(X[:1000], y[:1000])
            t0 = time.perf_counter()
            xgboost.XGBClassifier(**params, device=device, n_jobs=os.cpu_count()).fit(X, y)
            claim(name, time.perf_counter() - t0, "s")
        except Exception as exc:  # noqa: BLE001 - e.g. a CPU-only wheel or an old driver
            errors[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            print(f"  XGBoost {device} fit: not run ({errors[name]})")


def matmul() -> None:
    n, iters = SIZES["matmul"], SIZES["matmul_iters"]
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync()
    claim("gpu_bf16_matmul_tflops", 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12, "TFLOP/s")


def main() -> None:
    t0 = time.perf_counter()
    info = {
        "device": str(DEVICE),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": os.cpu_count(),
        "sizes": SIZES,
    }
    if DEVICE.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(DEVICE)
    print(json.dumps(info), flush=True)
    train_step(SIZES["train_size"], SIZES["train_batch"], "gpu_train_step_images_per_s")
    if not TINY:  # the progressive recipe's 1024 px refinement phase (the paper's batch 3)
        train_step(1024, 3, "gpu_train_step_1024_images_per_s")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        pred = predict_part(Path(tmp))
        features_part(Path(tmp), pred)
    xgboost_part()
    info.update(seconds=round(time.perf_counter() - t0, 1), claims=claims, errors=errors)
    print(json.dumps(info, indent=1))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "gpu_check.json").write_text(json.dumps(info, indent=2) + "\n")
        print(f"-> {os.environ['OUT']}/gpu_check.json")


if __name__ == "__main__":
    main()
