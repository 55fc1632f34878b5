"""Statistics of one probability map (the classifier's non-DenseNet features) and the feature names.

Areas and top-k sums are counted on the map's own grid and scaled to 1024 x 1024
(:data:`dualstage.core.gating.REF_PIXELS`), so a map's statistics mean the same at any size.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from dualstage.classify.densenet import N_DENSENET
from dualstage.core.gating import REF_PIXELS, levels

__all__ = ["STAT_NAMES", "AREA_THRESHOLDS", "feature_names", "map_statistics"]

TOPK_1024 = 100  # top-k pixels at the 1024 x 1024 scale, scaled by the map's area
AREA_THRESHOLDS = (0.3, 0.5, 0.7, 0.9)
STAT_NAMES: tuple[str, ...] = (
    "stat_max_prob",
    "stat_topk_mean_prob",
    *(f"stat_area_p{round(t * 100)}" for t in AREA_THRESHOLDS),
    "stat_n_components_p50",
    "stat_largest_area_p50",
    "stat_largest_row",
    "stat_largest_col",
    "stat_mean_prob",
)
_EIGHT = np.ones((3, 3), dtype=bool)


def feature_names() -> list[str]:
    """Column names of X: ``img_dn0..1023``, ``map_dn0..1023``, then :data:`STAT_NAMES`."""
    return [f"{p}_dn{i}" for p in ("img", "map") for i in range(N_DENSENET)] + list(STAT_NAMES)


def map_statistics(q: np.ndarray) -> dict[str, float]:
    """Statistics of one uint8 map q (H, W), q = round(p * 255); areas at the 1024 x 1024 scale.

    A pixel is above threshold t iff q >= gating.level(t) (as in the rules). top-k: mean p of the
    k = max(1, round(100 * H * W / 1024**2)) highest pixels. Components: 8-connected, p > 0.5; the
    largest one's centroid is (mean row + 0.5) / H, (mean col + 0.5) / W, or -1, -1 when none.
    """
    q = np.asarray(q)
    if q.dtype != np.uint8 or q.ndim != 2 or q.size == 0:
        raise ValueError(f"map must be a non-empty 2-D uint8 array, got {q.dtype} of shape {q.shape}")
    h, w = q.shape
    scale = REF_PIXELS / (h * w)
    k = min(q.size, max(1, round(TOPK_1024 * q.size / REF_PIXELS)))
    counts = np.bincount(q.ravel(), minlength=256)  # one pass; every value below is exact from it
    at_least = np.cumsum(counts[::-1])[::-1]  # at_least[v]: pixels with q >= v
    stats = {
        "stat_max_prob": int(np.flatnonzero(counts)[-1]) / 255.0,
        "stat_topk_mean_prob": _top_sum(counts, k) / k / 255.0,
        "stat_mean_prob": int(counts @ np.arange(256)) / q.size / 255.0,
    }
    for t, lv in zip(AREA_THRESHOLDS, levels(AREA_THRESHOLDS), strict=True):
        stats[f"stat_area_p{round(t * 100)}"] = int(at_least[lv]) * scale
    n, largest, row, col = _largest_component(q, int(levels(0.5)), at_least)
    stats["stat_n_components_p50"] = float(n)
    stats["stat_largest_area_p50"] = largest * scale
    stats["stat_largest_row"], stats["stat_largest_col"] = float(row), float(col)
    return {name: float(stats[name]) for name in STAT_NAMES}


def _top_sum(counts: np.ndarray, k: int) -> int:
    """Sum of the k highest values of a map with value histogram ``counts`` (256,)."""
    desc = counts[::-1]  # value 255 first
    cum = np.cumsum(desc)
    j = int(np.searchsorted(cum, k))  # bins 0..j-1 are taken whole, bin j in part
    whole = int(desc[:j] @ np.arange(255, 255 - j, -1)) if j else 0
    return whole + (k - (int(cum[j - 1]) if j else 0)) * (255 - j)


def _largest_component(q: np.ndarray, lv: int, at_least: np.ndarray) -> tuple[int, int, float, float]:
    """(components, largest's pixels, its centroid row, col as fractions) of q >= lv, 8-connected.

    Labelled on the bounding box of the pixels above (none: no labelling): the same components,
    in the same raster order, as on the whole map."""
    if lv > 255 or not at_least[lv]:
        return 0, 0, -1.0, -1.0
    mask = q >= lv
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    r0, c0 = int(rows[0]), int(cols[0])
    labels, n = ndimage.label(mask[r0 : rows[-1] + 1, c0 : cols[-1] + 1], structure=_EIGHT)
    sizes = np.bincount(labels.ravel())[1:]
    biggest = 1 + int(np.argmax(sizes))  # ties: first in raster order
    rr, cc = np.nonzero(labels == biggest)
    h, w = q.shape
    return int(n), int(sizes[biggest - 1]), ((rr + r0).mean() + 0.5) / h, ((cc + c0).mean() + 0.5) / w
