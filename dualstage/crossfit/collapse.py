"""Is a fold model collapsed? A model that says "empty" everywhere must be named, not averaged in.

A collapsed model adds exactly 0 to every difference between gates on its studies (every tuned
rule empties them all), so a comparison that averages it in silently shrinks every difference.
Two checks, each on the model's own studies:

* **validation** (after training, :func:`dualstage.core.metrics.collapsed_on_validation`): at the kept
  epoch, the inner validation's positive-case Dice is below ``metrics.POS_DICE_MAX`` while its
  negative-case Dice is above ``metrics.NEG_DICE_MIN`` at the default threshold (``train.val_threshold``);
* **out-of-fold maps** (:func:`collapse_check`): on the studies of fold k, fold model k's maps give
  the same near-0 / near-1 pair at the default threshold, or no pixel of any positive study reaches
  the lowest threshold any rule may choose (``lowest``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dualstage.core import gating
from dualstage.core.metrics import collapsed_on_validation, summarize_counts

__all__ = ["collapse_check", "validation_collapse"]


def _max_probability(hist: np.ndarray) -> np.ndarray:
    """(N,) the highest stored probability (q / 255) of any pixel of each image, from (N, 2, 256)."""
    present = np.asarray(hist).sum(axis=1) > 0  # (N, 256)
    top = 255 - np.argmax(present[:, ::-1], axis=1)
    return top / 255.0


def collapse_check(hist: gating.Histograms, folds: np.ndarray, threshold: float, lowest: float) -> list[dict]:
    """One record per fold model on its own out-of-fold studies.

    ``hist``: histograms of every study (N,); ``folds`` (N,) int; ``threshold``: the default threshold;
    ``lowest``: the lowest threshold the rules search. Returns [{model, n, n_pos, pos_dice, neg_dice,
    max_p_positive, collapsed, why}] in fold order.
    """
    rule = {"rule": "threshold", "threshold": threshold}
    inter, area, true_area, n_pix = gating.rule_counts(hist.hist, hist.height, hist.width, rule)
    top = _max_probability(hist.hist)
    out = []
    for k in np.unique(folds).tolist():
        rows = np.asarray(folds) == k
        s = summarize_counts(inter[rows], area[rows], true_area[rows], n_pix[rows])
        pos = rows & (true_area > 0)
        max_pos = float(top[pos].max()) if pos.any() else float("nan")
        why = []
        if s["n_pos"] and s["n_neg"] and collapsed_on_validation(s["pos_dice"], s["neg_dice"]):
            why.append(
                f"at threshold {threshold:g}: positive-case Dice {s['pos_dice']:.3f}, "
                f"negative-case {s['neg_dice']:.3f}"
            )
        if pos.any() and max_pos < lowest:
            why.append(f"no pixel of any positive study reaches p = {lowest:g} (highest {max_pos:.2f})")
        out.append(
            {
                "model": f"fold_{k}",
                "on": "out-of-fold studies",
                "n": int(rows.sum()),
                "n_pos": int(s["n_pos"]),
                "pos_dice": s["pos_dice"],
                "neg_dice": s["neg_dice"],
                "max_p_positive": max_pos,
                "collapsed": bool(why),
                "why": "; ".join(why),
            }
        )
    return out


def validation_collapse(model_dirs: dict[str, Path]) -> list[dict]:
    """The training-time checks recorded in each model's ``done.json`` (``collapse``), as records
    [{model, on: "validation", collapsed, why}]; models without the record are left out."""
    out = []
    for name, folder in model_dirs.items():
        path = Path(folder) / "done.json"
        try:
            record = json.loads(path.read_text()).get("collapse") if path.is_file() else None
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable training record ({exc})") from None
        if isinstance(record, dict) and "collapsed" in record:
            flag, why = bool(record["collapsed"]), str(record.get("why", ""))
            out.append({"model": name, "on": "validation", "collapsed": flag, "why": why})
    return out
