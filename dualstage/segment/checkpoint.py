"""Atomic training checkpoints, loaded without running code from the file.

Two kinds, both written atomically by :func:`save_checkpoint`:

- resumable (``last.pt``): weights, optimiser, scheduler, grad scaler, RNG state, curriculum
  position and log, so ``--resume`` continues bit for bit;
- inference (``best.pt``, see :func:`inference_checkpoint`): weights plus what predict needs
  (``encoder``, ``decoder_channels``, ``normalization``, ``resolution``, ``experiment``).

Every entry is a tensor or a plain Python value (dict, list, tuple, str, int, float, bool, None),
so :func:`load_checkpoint` reads with ``torch.load(weights_only=True)``: a file that pickles any
other object is refused (``ValueError`` naming the file), it never runs. Format 1 files (before
RNG states were made plain) hold numpy arrays; numpy's array reconstruction is allowed for them.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from dualstage.core.io import atomic_write

__all__ = [
    "FORMAT",
    "INFERENCE_KEYS",
    "save_checkpoint",
    "load_checkpoint",
    "inference_checkpoint",
    "inference_resolution",
    "check_plain",
    "rng_state",
    "set_rng_state",
    "unwrap",
]

FORMAT = 2  # 1: numpy RNG state as arrays, no kind/resolution; 2: plain values only
INFERENCE_KEYS: tuple[str, ...] = (
    "format",
    "model",
    "encoder",
    "decoder_channels",
    "normalization",
    "resolution",
    "experiment",
    "fold",
    "epoch",
    "val_mean_dice",
)
PLAIN = (str, int, float, bool, type(None), torch.Tensor, torch.Size)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DistributedDataParallel (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def rng_state() -> dict:
    """Python, numpy and torch (CPU + CUDA) generator states as tensors and plain values."""
    version, mt, gauss = random.getstate()
    algorithm, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": [int(v) for v in mt], "gauss_next": gauss},
        "numpy": {
            "algorithm": str(algorithm),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),  # (624,) uint32 values
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore what :func:`rng_state` saved (format 1 tuples / arrays are accepted too)."""
    py = state["python"]
    if isinstance(py, Mapping):
        py = (py["version"], tuple(int(v) for v in py["state"]), py["gauss_next"])
    random.setstate(tuple(py))
    npy = state["numpy"]
    if isinstance(npy, Mapping):
        keys = np.asarray(torch.as_tensor(npy["keys"]).cpu().numpy(), dtype=np.uint32)
        npy = (npy["algorithm"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    np.random.set_state(tuple(npy))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def check_plain(obj: object, where: str = "checkpoint") -> None:
    """Raise TypeError naming the entry when ``obj`` holds anything ``weights_only`` would refuse."""
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{where}: key {key!r} is a {type(key).__name__}, not str or int")
            check_plain(value, f"{where}[{key!r}]")
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
    elif not isinstance(obj, PLAIN):
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__name__}: store plain values")


def save_checkpoint(path: str | Path, payload: dict) -> Path:
    """``torch.save`` to a temp file, then rename: a crash never leaves half a checkpoint.

    The payload is checked first (:func:`check_plain`), so every saved file loads weights-only.
    """
    check_plain(payload)
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def inference_checkpoint(payload: Mapping) -> dict:
    """The entries of a resumable payload that inference needs (no optimiser, RNG or log)."""
    return {**{k: payload[k] for k in INFERENCE_KEYS if k in payload}, "kind": "inference"}


def _format1_globals() -> list:
    """numpy's array reconstruction, which format 1 RNG states need; none of it can run code."""
    out: list = [np.ndarray, np.dtype, *(type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64))]
    for module in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            reconstruct = importlib.import_module(module).__dict__["_reconstruct"]
        except (ImportError, KeyError):
            continue
        out.append((reconstruct, f"{module}._reconstruct"))
    return out


def _reason(exc: BaseException) -> str:
    """One line about why torch refused a file (the unpickler's own line, not torch's preamble)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, weights-only; errors are one line.

    Missing file: FileNotFoundError. Empty, text, truncated or foreign files and files with
    pickled objects other than tensors and plain values: ValueError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not a dualstage checkpoint")
    try:
        with torch.serialization.safe_globals(_format1_globals()):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, ...: all mean "refused"
        raise ValueError(
            f"{path}: not a dualstage checkpoint or refused unsafe content ({_reason(exc)})"
        ) from exc
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("model"), Mapping) or "encoder" not in ckpt:
        raise ValueError(f"{path}: not a dualstage checkpoint (no model weights and encoder)")
    return dict(ckpt)


def inference_resolution(ckpt: Mapping) -> int:
    """Input size (px) the checkpoint's weights were trained at when it was saved.

    Format 2 records it; older files fall back to the experiment's last phase.
    """
    if ckpt.get("resolution"):
        return int(ckpt["resolution"])
    return int(ckpt["experiment"]["train"]["phases"][-1]["resolution"])
