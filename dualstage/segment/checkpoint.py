"""Atomic, complete training checkpoints: weights, optimiser, scheduler, RNG, curriculum position."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from dualstage.io import atomic_write

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "unwrap"]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def rng_state() -> dict:
    """Python, numpy and torch (CPU + CUDA) generator states."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """``torch.save`` to a temp file, then rename: a crash never leaves half a checkpoint."""
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`; clear error when missing."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    # our own files hold optimiser/RNG state (numpy arrays, tuples): not weights-only
    return torch.load(path, map_location=map_location, weights_only=False)
