"""Which gates give the same final masks, and where a gate does nothing: the comparison's honesty.

Two gates whose final masks are identical on every study are one outcome, not two: the headline
ranks distinct outcomes. Identity is decided exactly, without loading a map: a gate's final mask of
study i is either its pixel rule's mask or empty (classifier gates empty it), so two gates have the
same mask on study i when both are empty, or when their pixel rules for study i's fold are the same
rule (:func:`dualstage.core.gating.canonical_rule`) and their final areas are equal (gates scored from
their final masks, an external set's vote, carry a digest of each mask instead). Different rules
with non-empty masks count as different (an undercount of sameness, never an overcount).

A fold where a gate empties every mask, or where a classifier gate keeps every mask (its threshold
lets every study through), is named: such a gate adds nothing in that fold.
"""

from __future__ import annotations

import numpy as np

from dualstage.core.gating import canonical_rule

__all__ = ["same_masks", "outcomes", "vacuous_folds"]


def _rules(gate, folds: np.ndarray | None, n: int) -> list | None:
    """Per study (N,) canonical pixel rule of ``gate``; None for the all-empty baseline."""
    p = gate.params
    if p is None:
        return None
    if "mask_digest" in p:  # gates scored from their masks (external sets): exact identity per study
        return list(p["mask_digest"])
    if "per_fold" in p:
        by_fold = {int(k): canonical_rule(r) for k, r in p["per_fold"].items()}
        return [by_fold.get(int(k)) for k in folds]
    return [canonical_rule(p)] * n


def same_masks(a, b, folds: np.ndarray | None = None) -> np.ndarray:
    """(N,) bool: whether gates ``a`` and ``b`` (report.compare.Gate) give study i the same mask."""
    n = np.asarray(a.pred_area).size
    both_empty = (np.asarray(a.pred_area) == 0) & (np.asarray(b.pred_area) == 0)
    ra, rb = _rules(a, folds, n), _rules(b, folds, n)
    if ra is None or rb is None:
        return both_empty
    same_rule = np.array([x == y and x is not None for x, y in zip(ra, rb, strict=True)], dtype=bool)
    return both_empty | (same_rule & (np.asarray(a.pred_area) == np.asarray(b.pred_area)))


def outcomes(gates: list, folds: np.ndarray | None = None) -> dict:
    """Groups of gates with identical masks on every study, and the count of same masks per pair.

    Returns {"groups": [[key, ...], ...] (in gate order, the first key represents the group),
    "same": {"a|b": [n_same, n]} for every pair of gates that agree on at least one study}.
    """
    groups: list[list] = []
    same: dict[str, list[int]] = {}
    for i, g in enumerate(gates):
        for other in gates[:i]:
            s = same_masks(other, g, folds)
            if s.any():
                same[f"{other.key}|{g.key}"] = [int(s.sum()), int(s.size)]
        n = np.asarray(g.pred_area).size
        home = next((grp for grp in groups if same.get(f"{grp[0].key}|{g.key}", [0])[0] == n), None)
        if home is None:
            groups.append([g])
        else:
            home.append(g)
    return {"groups": [[g.key for g in grp] for grp in groups], "same": same}


def vacuous_folds(gates: list, folds: np.ndarray | None) -> list[dict]:
    """Folds where a gate does nothing: [{gate, fold, what}], ``what`` "empties every mask" or
    "keeps every mask" (a classifier gate whose threshold lets every study of the fold through)."""
    f = np.zeros(np.asarray(gates[0].pred_area).size, int) if folds is None else np.asarray(folds)
    out = []
    for g in gates:
        if g.params is None:
            continue
        thresholds = (g.params or {}).get("gate_threshold", {})
        for k in np.unique(f).tolist():
            rows = f == k
            fold = None if folds is None else int(k)
            if not (np.asarray(g.pred_area)[rows] > 0).any():
                out.append({"gate": g.key, "fold": fold, "what": "empties every mask"})
            elif g.decision is not None and (np.asarray(g.decision)[rows] == 1).all():
                thr = thresholds.get(k, thresholds.get(str(k)))
                why = f" (gate threshold {thr:g})" if thr is not None else ""
                out.append({"gate": g.key, "fold": fold, "what": f"keeps every mask{why}"})
    return out
