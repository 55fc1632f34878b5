"""The SIIM-ACR challenge run-length codec.

Pixels are numbered column by column (top to bottom, then left to right), i.e. in
Fortran order of the (height, width) image. A string is a sequence of integer pairs
``(offset, length)`` where ``offset`` counts the pixels skipped since the *end of the
previous run* (the first offset counts from pixel 0). ``-1`` (with or without
surrounding spaces) is the empty mask. An image with several lesions has several rows;
rows may overlap and are merged with OR.

Example, a 3 x 3 image whose middle column is set: pixels 3, 4, 5 in column order ->
``"3 3"``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["decode", "encode", "parse_runs", "area", "EMPTY"]

EMPTY = "-1"
_INT64_MAX = int(np.iinfo(np.int64).max)


def parse_runs(rle: str, n_pixels: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse one challenge string into absolute run starts and lengths.

    Returns ``(starts, lengths)``, two int64 arrays of shape (R,), starts as flat
    column-major pixel indices. Raises ``ValueError`` naming the defect.
    """
    if not isinstance(rle, str):
        raise ValueError(f"RLE must be a string, got {type(rle).__name__} ({rle!r:.40})")
    text = rle.strip()
    if text in ("", EMPTY):
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        bad = next(tok for tok in text.split() if not _is_int(tok))
        raise ValueError(f"RLE has a non-integer token {bad[:40]!r}") from None
    except OverflowError:
        bad = next((t for t in text.split() if _is_int(t) and abs(int(t)) > _INT64_MAX), "?")
        raise ValueError(f"RLE value {bad[:40]} is out of range (the image has {n_pixels} pixels)") from None
    if values.size % 2:
        raise ValueError(f"RLE has an odd number of values ({values.size}); expected (offset, length) pairs")
    if (values < 0).any():
        raise ValueError(f"RLE has a negative value ({int(values[values < 0][0])})")
    if (values > n_pixels).any():  # also keeps the cumulative sum below far from int64 overflow
        raise ValueError(
            f"RLE value {int(values[values > n_pixels][0])} is larger than the image's {n_pixels} pixels"
        )
    offsets, lengths = values[0::2], values[1::2]
    if (lengths == 0).any():
        raise ValueError("RLE has a run of length 0")
    ends = np.cumsum(offsets + lengths)
    starts = ends - lengths
    if ends[-1] > n_pixels:
        raise ValueError(f"RLE run ends at pixel {int(ends[-1])}, past the image's {n_pixels} pixels")
    return starts, lengths


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def decode(rles: str | Sequence[str], height: int = 1024, width: int = 1024) -> np.ndarray:
    """Decode one image's challenge string(s) into a bool mask of shape (height, width).

    ``rles`` is one string or a sequence of strings for the same image (merged with OR).
    The result is a Fortran-ordered view (cheap: no transpose copy); use
    ``np.ascontiguousarray`` if C order matters.
    """
    if isinstance(rles, str):
        rles = [rles]
    n = height * width
    flat = np.zeros(n, dtype=bool)
    for rle in rles:
        starts, lengths = parse_runs(rle, n)
        if starts.size == 0:
            continue
        total = int(lengths.sum())
        # index of every foreground pixel: run start repeated, plus position in run
        before = np.cumsum(lengths) - lengths
        idx = np.arange(total, dtype=np.int64) + np.repeat(starts - before, lengths)
        flat[idx] = True
    return flat.reshape(width, height).T


def area(mask: np.ndarray) -> int:
    """Foreground pixel count of a mask (H, W), fast for the Fortran-ordered masks of decode."""
    mask = np.asarray(mask)
    if mask.flags.f_contiguous and not mask.flags.c_contiguous:
        mask = mask.T  # a C-contiguous view: count_nonzero is ~10x faster on it
    return int(np.count_nonzero(mask))


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (H, W; nonzero = foreground) as the challenge string.

    Returns ``"-1"`` for an empty mask. A run that reaches the last pixel is kept.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D mask (H, W), got shape {mask.shape}")
    flat = np.asarray(mask != 0).ravel(order="F")
    if not flat.any():
        return EMPTY
    padded = np.concatenate(([False], flat, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    offsets = starts - np.concatenate(([0], ends[:-1]))
    pairs = np.empty(starts.size * 2, dtype=np.int64)
    pairs[0::2] = offsets
    pairs[1::2] = ends - starts
    return " ".join(map(str, pairs.tolist()))
