"""Decision rules (probability map -> final mask) as pure functions, and the histogram sweep engine.

Pixel rule. Maps are stored as ``q = round(p * 255)`` (uint8). At threshold ``t`` a pixel is
positive iff ``q > t * 255``, i.e. iff ``q >= level(t)`` with ``level(t) = floor(t * 255) + 1``.
``t * 255`` is rounded to 1e-6 first, so float noise cannot move a level: 0.6, 0.6000000000000001
and 0.5999999999999999 all give level 154 (q = 153 is p = 0.6, not > 0.6). level(0.5) = 128,
level(0.2) = 52, level(0) = 1 (any q > 0), level(1) = 256 (nothing).

Minimum area is counted at the 1024 x 1024 scale: a mask of ``area`` pixels on an H x W grid
passes iff ``area * 1024**2 / (H * W) >= min_area``, evaluated as ``area * 1024**2 >= min_area * H * W``.

Rules (``{"rule": name, **params}``, optional ``"lcc": True``; a ``"metrics"`` entry is ignored):

* ``threshold``      {threshold}: ``q >= level(threshold)``;
* ``threshold_area`` {threshold, min_area}: as above, empty when its scaled area < min_area;
* ``triplet``        {top, min_area, bottom}, bottom <= top (first-place SIIM rule): empty when the
  scaled area of ``q >= level(top)`` is < min_area, else ``q >= level(bottom)``;
* ``lcc``: the rule's final mask is reduced to its largest 8-connected component (ties: the
  component met first in raster order). Needs the maps, not the histograms.

Histogram engine. ``hist`` (N, 2, 256) int64: ``hist[i, 0, v]`` / ``hist[i, 1, v]`` = pixels of
image i with q == v outside / inside the true mask. Reverse cumulative sums give, for every level
k, ``inter_k`` (inside pixels with q >= k) and ``area_k`` (pixels with q >= k); every rule above
(without lcc) only compares q with levels and areas with bounds, so its per-image counts are read
off these sums exactly, with no map in memory.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import ndimage

from dualstage.core.io import HandoffError, atomic_write
from dualstage.core.metrics import summarize_counts

__all__ = [
    "RULES",
    "Histograms",
    "apply_rule",
    "canonical_rule",
    "check_rule",
    "cumulative_counts",
    "histogram",
    "keep_area",
    "largest_component",
    "level",
    "levels",
    "load_histograms",
    "rule_counts",
    "sweep_threshold",
    "sweep_threshold_area",
    "sweep_triplet",
    "triplet_grid",
    "write_histograms",
]

REF_PIXELS = 1024 * 1024
N_LEVELS = 256
RULES: dict[str, tuple[str, ...]] = {
    "threshold": ("threshold",),
    "threshold_area": ("threshold", "min_area"),
    "triplet": ("top", "min_area", "bottom"),
}
MAX_CELLS = 4_000_000  # grid cells (rows x images) summarised at once: keeps the sweep well under 1 GB
_EIGHT = np.ones((3, 3), dtype=bool)


def levels(thresholds) -> np.ndarray:
    """Vectorised :func:`level`: int64 array of the thresholds' shape."""
    t = np.asarray(thresholds, dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(t > 1):
        raise ValueError(f"thresholds must lie in [0, 1], got {t.ravel()[:10].tolist()}")
    return (np.floor(np.round(t * 255, 6)) + 1).astype(np.int64)


def level(t: float) -> int:
    """Smallest q (0..256) that is positive at threshold t: ``floor(t * 255) + 1``."""
    return int(levels(t))


def keep_area(area, n_pixels, min_area) -> np.ndarray:
    """Broadcast bool: ``area`` px on an ``n_pixels`` grid is >= ``min_area`` px at 1024 x 1024."""
    a = np.asarray(area, dtype=np.int64) * REF_PIXELS
    return a >= np.asarray(min_area, dtype=np.float64) * np.asarray(n_pixels, dtype=np.int64)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 8-connected component of a bool mask (H, W); ties -> first in raster order."""
    labels, n = ndimage.label(mask, structure=_EIGHT)
    if n <= 1:
        return labels > 0
    return labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))


def _check_map(prob_u8: np.ndarray) -> np.ndarray:
    q = np.asarray(prob_u8)
    if q.dtype != np.uint8 or q.ndim != 2:
        raise ValueError(f"probability map must be a 2-D uint8 array, got {q.dtype} of shape {q.shape}")
    return q


def _number(rule: Mapping, key: str, low: float, high: float = math.inf) -> float:
    """``rule[key]`` as a float in [low, high]; ValueError naming the key and the value."""
    value = rule[key]
    ok = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool | np.bool_)
    if not ok or not (low <= float(value) <= high):  # NaN fails the range
        span = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise ValueError(f"{key}: expected a number {span}, got {value!r}")
    return float(value)


def check_rule(rule: Mapping) -> tuple[str, dict[str, float], bool]:
    """(name, float params, lcc) of a rule dict; ValueError naming the key at fault (``threshold:
    expected a number in [0, 1], got 'abc'``) or listing the valid rules / keys."""
    if not isinstance(rule, Mapping) or "rule" not in rule:
        raise ValueError(f"a rule is a dict with a 'rule' key (one of {', '.join(RULES)}), got {rule!r}")
    name = rule["rule"]
    if not isinstance(name, str) or name not in RULES:
        raise ValueError(f"rule: unknown rule {name!r}; valid rules: {', '.join(RULES)}")
    need = RULES[name]
    missing = [k for k in need if k not in rule]
    extra = sorted(set(rule) - {"rule", "lcc", "metrics", *need})
    if missing or extra:
        raise ValueError(
            f"rule {name!r} takes keys {list(need)} (+ optional 'lcc'); missing {missing}, unknown {extra}"
        )
    params = {k: _number(rule, k, 0.0, math.inf if k == "min_area" else 1.0) for k in need}
    if name == "triplet" and round(params["bottom"], 9) > round(params["top"], 9):
        raise ValueError(f"triplet needs bottom <= top, got top={params['top']}, bottom={params['bottom']}")
    lcc = rule.get("lcc", False)
    if not isinstance(lcc, bool | np.bool_):
        raise ValueError(f"lcc: expected true or false, got {lcc!r}")
    return name, params, bool(lcc)


def canonical_rule(rule: Mapping) -> tuple[int, float, int, bool]:
    """(gate level, min area, mask level, lcc): two rules with equal tuples give the same mask on
    every map. ``threshold`` t is (level(t), 0, level(t)); ``threshold_area`` (t, a) is
    (level(t), a, level(t)); ``triplet`` is (level(top), min_area, level(bottom))."""
    name, p, lcc = check_rule(rule)
    if name == "triplet":
        return level(p["top"]), p["min_area"], level(p["bottom"]), lcc
    return level(p["threshold"]), p.get("min_area", 0.0), level(p["threshold"]), lcc


def apply_rule(prob_u8: np.ndarray, rule: Mapping) -> np.ndarray:
    """Final bool mask (H, W) of one uint8 map (H, W) under ``rule`` (see the module docstring)."""
    q = _check_map(prob_u8)
    name, p, lcc = check_rule(rule)
    mask = q >= level(p["bottom"] if name == "triplet" else p["threshold"])
    if name != "threshold":
        gate = q >= level(p["top"]) if name == "triplet" else mask
        if not keep_area(np.count_nonzero(gate), q.size, p["min_area"]):
            mask = np.zeros_like(mask)
    return largest_component(mask) if lcc else mask


def histogram(prob_u8: np.ndarray, true_mask: np.ndarray) -> np.ndarray:
    """(2, 256) int64 counts of q values outside [0] / inside [1] the true mask (H, W)."""
    q = _check_map(prob_u8)
    m = np.asarray(true_mask)
    if m.shape != q.shape:
        raise ValueError(f"map and true mask shapes differ: {q.shape} vs {m.shape}")
    index = q.astype(np.int16) + (m > 0).astype(np.int16) * N_LEVELS
    return np.bincount(index.ravel(), minlength=2 * N_LEVELS).reshape(2, N_LEVELS).astype(np.int64)


class Histograms(NamedTuple):
    """Per-image histograms of one prediction set (N images with truth)."""

    image_id: np.ndarray  # (N,) str
    hist: np.ndarray  # (N, 2, 256) int64
    height: np.ndarray  # (N,) int64
    width: np.ndarray  # (N,) int64


def _validate(ids, hist, height, width, source: str) -> Histograms:
    ids, h = np.asarray(ids).astype(str), np.asarray(hist)
    hh, ww = np.asarray(height).astype(np.int64), np.asarray(width).astype(np.int64)
    if h.ndim != 3 or h.shape[1:] != (2, N_LEVELS) or not np.issubdtype(h.dtype, np.integer):
        raise HandoffError(f"{source}: hist must be an integer (N, 2, 256) array, got {h.dtype} {h.shape}")
    n = h.shape[0]
    if ids.shape != (n,) or hh.shape != (n,) or ww.shape != (n,):
        raise HandoffError(
            f"{source}: image_id {ids.shape}, height {hh.shape}, width {ww.shape} must all be ({n},)"
        )
    if np.any(h < 0) or np.any(hh <= 0) or np.any(ww <= 0):
        raise HandoffError(f"{source}: negative counts or non-positive sizes")
    bad = np.flatnonzero(h.sum(axis=(1, 2)) != hh * ww)
    if bad.size:
        raise HandoffError(
            f"{source}: histogram of {ids[bad[0]]} does not sum to height*width ({bad.size} such)"
        )
    if len(set(ids.tolist())) != n:
        raise HandoffError(f"{source}: duplicate image ids")
    return Histograms(ids, h.astype(np.int64), hh, ww)


def write_histograms(path: str | Path, ids, hist, height, width) -> Path:
    """Validate and write ``histograms.npz`` (image_id, hist, height, width) atomically."""
    h = _validate(ids, hist, height, width, str(path))

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a bare name
            np.savez_compressed(fh, image_id=h.image_id, hist=h.hist, height=h.height, width=h.width)

    return atomic_write(path, _write)


def load_histograms(set_dir: str | Path) -> Histograms:
    """Read ``<set_dir>/histograms.npz`` (or the .npz path itself); errors name the file."""
    path = Path(set_dir)
    path = path / "histograms.npz" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no histograms file (written by segment predict)")
    names = ("image_id", "hist", "height", "width")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in names if k in z.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        raise HandoffError(f"{path}: unreadable histograms file: {exc}") from None
    missing = [k for k in names if k not in arrays]
    if missing:
        raise HandoffError(f"{path}: missing arrays {missing} (has {sorted(arrays)})")
    return _validate(*(arrays[k] for k in names), source=str(path))


def cumulative_counts(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(inter (257, N), area (257, N), true_area (N,), n_pixels (N,)); row k counts q >= k."""
    h = np.asarray(hist)
    if h.ndim != 3 or h.shape[1:] != (2, N_LEVELS) or h.shape[0] == 0:
        raise ValueError(f"hist must be a (N >= 1, 2, 256) count array, got shape {h.shape}")
    rev = np.cumsum(h[:, :, ::-1].astype(np.int64), axis=2)[:, :, ::-1]  # rev[i, c, k] = # q >= k
    inter = np.zeros((N_LEVELS + 1, h.shape[0]), dtype=np.int64)
    area = np.zeros_like(inter)
    inter[:N_LEVELS] = rev[:, 1].T
    area[:N_LEVELS] = rev[:, 0].T + rev[:, 1].T
    return inter, area, h[:, 1].sum(axis=1).astype(np.int64), h.sum(axis=(1, 2)).astype(np.int64)


def _n_pixels(hist: np.ndarray, height, width) -> np.ndarray:
    n_pix = np.asarray(height, dtype=np.int64) * np.asarray(width, dtype=np.int64)
    if n_pix.shape != (len(hist),) or np.any(np.asarray(hist).sum(axis=(1, 2)) != n_pix):
        raise ValueError("height/width must be (N,) and height*width must equal each histogram's total")
    return n_pix


def _summarize_rows(hist, n_pix, mask_levels, gate_levels, min_areas) -> dict[str, np.ndarray]:
    """Metrics (R,) for R grid rows: mask q >= mask_level, kept iff area(q >= gate_level) passes."""
    inter, area, true_area, _ = cumulative_counts(hist)
    step = max(1, MAX_CELLS // inter.shape[1])
    parts: list[dict] = []
    for s in range(0, len(mask_levels), step):
        m, g = mask_levels[s : s + step], gate_levels[s : s + step]
        keep = keep_area(area[g], n_pix, np.asarray(min_areas[s : s + step])[:, None])
        parts.append(
            summarize_counts(np.where(keep, inter[m], 0), np.where(keep, area[m], 0), true_area, n_pix)
        )
    return {k: np.concatenate([np.atleast_1d(p[k]) for p in parts]) for k in parts[0]}


def sweep_threshold(hist: np.ndarray, thresholds) -> dict[str, np.ndarray]:
    """Threshold-only metrics (summarize_counts keys), each of shape (T,)."""
    lv = levels(np.atleast_1d(thresholds))
    n_pix = cumulative_counts(hist)[3]  # also validates the shape
    return _summarize_rows(hist, n_pix, lv, lv, np.zeros(lv.size))


def sweep_threshold_area(hist: np.ndarray, height, width, thresholds, min_areas) -> dict[str, np.ndarray]:
    """Threshold x minimum-area metrics, each of shape (T, A)."""
    lv = levels(np.atleast_1d(thresholds))
    areas = np.atleast_1d(np.asarray(min_areas, dtype=np.float64))
    if np.any(areas < 0):
        raise ValueError("min_areas must be >= 0")
    rows_lv = np.repeat(lv, areas.size)
    res = _summarize_rows(hist, _n_pixels(hist, height, width), rows_lv, rows_lv, np.tile(areas, lv.size))
    return {k: v.reshape(lv.size, areas.size) for k, v in res.items()}


def triplet_grid(tops, areas, bottoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(top, min_area, bottom), each (G,): every cell with bottom <= top (at 9 decimals), ordered by
    top, then area, then bottom (the order is the rule choice's tie-break)."""
    t, a, b = (g.ravel() for g in np.meshgrid(tops, areas, bottoms, indexing="ij"))
    ok = np.round(b, 9) <= np.round(t, 9)
    return t[ok], a[ok], b[ok]


def sweep_triplet(hist: np.ndarray, height, width, tops, min_areas, bottoms) -> pd.DataFrame:
    """Triplet metrics, one row per (top, min_area, bottom) with bottom <= top, sorted in that order."""
    tops = np.atleast_1d(np.asarray(tops, dtype=np.float64))
    bottoms = np.atleast_1d(np.asarray(bottoms, dtype=np.float64))
    areas = np.atleast_1d(np.asarray(min_areas, dtype=np.float64))
    if np.any(areas < 0):
        raise ValueError("min_areas must be >= 0")
    top, area, bottom = triplet_grid(tops, areas, bottoms)
    if not top.size:
        raise ValueError("triplet grid is empty: no bottom <= top")
    res = _summarize_rows(hist, _n_pixels(hist, height, width), levels(bottom), levels(top), area)
    return pd.DataFrame({"top": top, "min_area": area, "bottom": bottom, **res})


def rule_counts(hist: np.ndarray, height, width, rule: Mapping) -> tuple[np.ndarray, ...]:
    """Per-image (inter, pred_area, true_area, n_pixels), each (N,), of a rule (no lcc) from histograms."""
    name, p, lcc = check_rule(rule)
    if lcc:
        raise ValueError("largest-component rules need the maps; histograms cannot give their counts")
    inter, area, true_area, _ = cumulative_counts(hist)
    n_pix = _n_pixels(hist, height, width)
    m = level(p["bottom"] if name == "triplet" else p["threshold"])
    g = level(p["top"]) if name == "triplet" else m
    keep = keep_area(area[g], n_pix, p.get("min_area", 0.0))
    return np.where(keep, inter[m], 0), np.where(keep, area[m], 0), true_area, n_pix
