"""Mixed-precision policy shared by training and prediction."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

__all__ = ["autocast_dtype", "autocast"]


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


def autocast(dtype: torch.dtype | None, device: torch.device) -> AbstractContextManager:
    """``torch.autocast`` at ``dtype`` on ``device``; a no-op context for fp32 (``dtype`` None)."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
