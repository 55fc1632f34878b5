"""The one tie rule: scores within ``TOL`` of the best are tied (ties go to the simpler choice)."""

from __future__ import annotations

import numpy as np

__all__ = ["TOL", "tied_mask", "first_best"]

TOL = 1e-12  # mean Dice values closer than this are equal (float noise of sums over images)


def tied_mask(scores) -> np.ndarray:
    """(K,) bool: which of ``scores`` (K,) are within ``TOL`` of the maximum (NaN never ties)."""
    s = np.asarray(scores, dtype=np.float64)
    return s >= np.nanmax(s) - TOL


def first_best(scores) -> int:
    """Index of the first score within ``TOL`` of the maximum (candidates ordered simplest first)."""
    return int(np.flatnonzero(tied_mask(scores))[0])
