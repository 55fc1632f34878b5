"""Mixed-precision policy shared by training and prediction.

Training follows ``train.amp`` (:func:`autocast_dtype`). Inference (``segment predict``,
``classify features``) follows its own ``precision`` choice (:func:`inference_dtype`):
``fp32``, ``bf16`` (autocast, channels_last), or ``auto``: bf16/fp16 on CUDA, and bf16 on a CPU
with native bf16 (oneDNN, e.g. AVX512-BF16 / AMX) only when :data:`AUTO_CPU_BF16` says it was
measured faster with the same final masks (``benchmarks/bench_bf16_agreement.py``), else fp32.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = [
    "autocast_dtype",
    "autocast",
    "inference_dtype",
    "precision_name",
    "cpu_bf16_supported",
    "INFERENCE_PRECISIONS",
    "AUTO_CPU_BF16",
]

INFERENCE_PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16")
# Off for now. On this project's 2-core AMD EPYC (AVX512-BF16), bf16 + channels_last ran predict 1.22x
# faster on the demo's studies with the demo's fold models, and the stage-one final masks agreed
# (mean Dice 0.9998, same presence on 100 % of 600); the classifier gate's masks also depend on bf16
# DenseNet features, not yet compared (benchmarks/bench_bf16_agreement.py, RESULTS.md). Until then
# bf16 is `--precision bf16`.
AUTO_CPU_BF16 = False


def autocast_dtype(amp: str | bool | None, device: torch.device) -> torch.dtype | None:
    """Mixed precision policy: ``auto`` is bf16/fp16 on CUDA and fp32 (None) on CPU."""
    if amp in ("off", False, None):  # YAML reads a bare `off` as False
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp in ("bf16", "fp16"):
        if amp == "fp16" and device.type != "cuda":
            raise ValueError("amp: fp16 needs CUDA; use bf16 or off on CPU")
        return torch.bfloat16 if amp == "bf16" else torch.float16
    raise ValueError(f"amp {amp!r}: expected auto, bf16, fp16 or off")


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions and matrix products natively (oneDNN)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # builds without oneDNN
        return False


def inference_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of inference (None: fp32) for ``precision`` auto | fp32 | bf16 on ``device``.

    ``auto``: CUDA -> bf16 where supported, else fp16; CPU -> bf16 when the CPU has native bf16
    and :data:`AUTO_CPU_BF16`, else fp32. ``bf16`` is bf16 everywhere (emulated, slow, on a CPU
    without native support).
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and AUTO_CPU_BF16 and cpu_bf16_supported():
            return torch.bfloat16
        return None
    raise ValueError(f"precision {precision!r}: expected one of {', '.join(INFERENCE_PRECISIONS)}")


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32`` | ``bf16`` | ``fp16``: what predict.json / features.json record."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` at ``dtype`` on ``device``; a no-op context for fp32 (``dtype`` None)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
