"""The one tie rule: scores within ``TOL`` of the best are tied (ties go to the simpler choice)."""

from __future__ import annotations

import numpy as np

__all__ = ["TOL", "tied_mask", "first_best", "plateau_middle", "GATE_TIE_RULE"]

TOL = 1e-12  # mean Dice values closer than this are equal (float noise of sums over images)
GATE_TIE_RULE = (
    "The classifier's gate threshold maximises mean Dice on inner out-of-fold data (candidates 0, 0.01, "
    "..., 1); tied thresholds go to the middle of the best plateau (the longest run of tied thresholds), "
    "not to its lowest edge: a flat stretch measured on a few hundred studies is noise around one value, "
    "its middle is the choice least sensitive to where that noise put the edges, and the lowest edge of a "
    "plateau that starts at 0 keeps every mask (a gate that does nothing)."
)


def tied_mask(scores) -> np.ndarray:
    """(K,) bool: which of ``scores`` (K,) are within ``TOL`` of the maximum (NaN never ties)."""
    s = np.asarray(scores, dtype=np.float64)
    return s >= np.nanmax(s) - TOL


def first_best(scores) -> int:
    """Index of the first score within ``TOL`` of the maximum (candidates ordered simplest first)."""
    return int(np.flatnonzero(tied_mask(scores))[0])


def plateau_middle(scores) -> int:
    """Index of the middle of the best plateau of ``scores`` (K,), candidates in ascending order.

    The plateau is the longest contiguous run of candidates tied with the best (the first such run
    when several are equally long); its middle is the candidate furthest from both of its edges,
    where the score starts to fall (the lower middle for an even run). A flat stretch of a curve
    measured on a few hundred studies is noise around one value: its middle is the choice least
    sensitive to where that noise put the edges.
    """
    tied = tied_mask(scores)
    best_start, best_len, start = 0, 0, None
    for i, t in enumerate([*tied.tolist(), False]):
        if t and start is None:
            start = i
        elif not t and start is not None:
            if i - start > best_len:
                best_start, best_len = start, i - start
            start = None
    return best_start + (best_len - 1) // 2
