"""Atomic artifact writes and the shared file helpers (hashing, PNG/NPY, confinement).

Every artifact is written to a temporary file in the same folder, then moved onto its name
with ``os.replace``: a crash leaves the old file or the new one, never half of one. Files get
the permissions the umask gives (0644 under umask 022), not ``mkstemp``'s 0600. An OS error of a
write (a full disk, a permission) names the file it was writing.

:class:`HandoffError` is what every typed reader of a hand-off file raises for a file that is there
but malformed (truncated, mistyped, out of range): one line naming the file and the field.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

__all__ = [
    "HandoffError",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "write_csv_atomic",
    "write_json_atomic",
    "write_png_atomic",
    "write_npy_atomic",
    "read_npy",
    "sha256_file",
    "ensure_inside",
    "json_safe",
    "TMP_GLOB",
]

TMP_GLOB = ".*.tmp"  # what a killed atomic write leaves behind (removed by clean_stale_tmp)


class HandoffError(ValueError):
    """A hand-off file that exists but is malformed; the message names the file and the field."""


def _named(exc: OSError, path: Path) -> OSError:
    """``exc`` with ``path`` as its file name when it has none (ENOSPC from a write names nothing)."""
    if exc.filename is not None:
        return exc
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path)) if exc.errno else exc


def _file_mode() -> int:
    """0o666 minus the process umask (read without changing it for long)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, writer: Callable[[str], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` only when it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            raise _named(exc, path) from None
        if isinstance(exc, OSError) and str(exc.filename) == tmp:
            raise type(exc)(exc.errno, exc.strerror, str(path)) from None
        raise
    return path


def clean_stale_tmp(folder: str | Path) -> int:
    """Remove temporary files a killed atomic write left in ``folder``; returns how many."""
    n = 0
    for tmp in Path(folder).glob(TMP_GLOB):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            n += 1
    return n


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def json_safe(obj: object) -> object:
    """``obj`` with NaN / inf floats replaced by ``None`` and numpy scalars made plain (valid JSON)."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json_atomic(path: str | Path, obj: object) -> Path:
    """Write ``obj`` as indented, strictly valid JSON (NaN -> null) atomically."""
    text = json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def write_csv_atomic(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame as CSV (no index) atomically."""
    return atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_png_atomic(path: str | Path, array: np.ndarray) -> Path:
    """Write a (H, W) uint8 array as a grayscale PNG atomically.

    zlib level 1 with its run-length strategy: 3-4x faster than PIL's default (level 6) on
    probability maps and masks, and no larger (benchmarks/bench_predict_ratio.py); lossless.
    """
    image = Image.fromarray(np.ascontiguousarray(array))
    return atomic_write(
        path, lambda tmp: image.save(tmp, format="PNG", compress_level=1, compress_type=_Z_RLE)
    )


_Z_RLE = 3  # zlib.Z_RLE


def write_npy_atomic(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as ``.npy`` atomically (no pickled objects)."""

    def _save(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to a bare path
            np.save(fh, np.asarray(array), allow_pickle=False)

    return atomic_write(path, _save)


def read_npy(path: str | Path) -> np.ndarray:
    """Read an ``.npy`` file without unpickling; errors name the file."""
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a readable .npy array ({exc})") from None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def ensure_inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved; ``ValueError`` when it lies outside ``root`` (defence in depth for writers)."""
    root_r = Path(root).resolve()
    resolved = Path(path).resolve()
    if resolved != root_r and root_r not in resolved.parents:
        raise ValueError(f"refusing to write {path}: outside the output folder {root}")
    return resolved
