"""SIIM-ACR Dice family and image-level detection metrics, one convention.

The challenge's convention, used everywhere in dualstage: for one image with predicted mask
A and ground-truth mask B,

* Dice = 1 when both masks are empty, 0 when exactly one is empty, else 2|A∩B| / (|A| + |B|);
* IoU  = 1 when both masks are empty, 0 when exactly one is empty, else |A∩B| / |A∪B|.

The score of a set of images is the mean of the per-image values. No library's empty-mask
default is inherited (nnU-Net gives NaN, MONAI can ignore empties, smp uses zero_division).

The ``*_from_counts`` functions are the pure vectorised core: they take integer count arrays
of any broadcastable shape (e.g. (T, A, N) for a threshold x min-area x image grid), so the
histogram sweep engine and the report share one implementation. A mask value > 0 is
foreground (bool, 0/1 and uint8 0/255 masks all work).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import rankdata
from sklearn import metrics as skm

__all__ = [
    "dice_from_counts",
    "f1_by_threshold",
    "image_dice",
    "image_iou",
    "iou_from_counts",
    "mask_counts",
    "presence_report",
    "roc_auc",
    "roc_auc_resampled",
    "summarize",
    "summarize_counts",
]

Masks = np.ndarray | Sequence[np.ndarray]


def _as_counts(inter, pred_area, true_area) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcast three count arrays to one shape (as float64) and check they are consistent."""
    i, p, t = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (inter, pred_area, true_area)))
    if np.any(i < 0) or np.any(i > p) or np.any(i > t):
        raise ValueError("counts must satisfy 0 <= inter <= min(pred_area, true_area)")
    return i, p, t


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, and 1.0 where den == 0 (both masks empty)."""
    return np.divide(num, den, out=np.ones(np.shape(num)), where=den > 0)


def dice_from_counts(inter, pred_area, true_area) -> np.ndarray:
    """Per-item Dice from counts of any broadcastable shape -> float64 array of that shape."""
    i, p, t = _as_counts(inter, pred_area, true_area)
    return _ratio(2.0 * i, p + t)


def iou_from_counts(inter, pred_area, true_area) -> np.ndarray:
    """Per-item IoU from counts of any broadcastable shape -> float64 array of that shape."""
    i, p, t = _as_counts(inter, pred_area, true_area)
    return _ratio(i, p + t - i)


def _counts(pred: Masks, true: Masks) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(inter, pred_area, true_area, n_pixels), each int64 of shape (N,)."""
    if isinstance(pred, np.ndarray) and isinstance(true, np.ndarray):
        if pred.shape != true.shape:
            raise ValueError(f"pred and true shapes differ: {pred.shape} vs {true.shape}")
        if pred.ndim == 2:
            pred, true = pred[None], true[None]
        if pred.ndim != 3:
            raise ValueError(f"masks must be (H, W) or (N, H, W), got shape {pred.shape}")
        a, b = pred > 0, true > 0
        n_pix = np.full(a.shape[0], a.shape[1] * a.shape[2], dtype=np.int64)
        return (
            np.count_nonzero(a & b, axis=(1, 2)),
            np.count_nonzero(a, axis=(1, 2)),
            np.count_nonzero(b, axis=(1, 2)),
            n_pix,
        )
    if len(pred) != len(true):
        raise ValueError(f"pred and true hold different numbers of masks: {len(pred)} vs {len(true)}")
    out = np.zeros((4, len(pred)), dtype=np.int64)
    for k, (p, t) in enumerate(zip(pred, true, strict=True)):  # one iteration per image (sizes may differ)
        p, t = np.asarray(p), np.asarray(t)
        if p.shape != t.shape or p.ndim != 2:
            raise ValueError(
                f"mask pair at index {k}: pred {p.shape} vs true {t.shape} (need equal 2-D shapes)"
            )
        a, b = p > 0, t > 0
        out[:, k] = np.count_nonzero(a & b), np.count_nonzero(a), np.count_nonzero(b), a.size
    return out[0], out[1], out[2], out[3]


def mask_counts(pred: Masks, true: Masks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image (inter, pred_area, true_area), each int64 of shape (N,).

    ``pred``/``true``: arrays of shape (N, H, W) or (H, W) (treated as N=1), or sequences of
    N 2-D masks whose sizes may differ between images (each pair must match).
    """
    return _counts(pred, true)[:3]


def image_dice(pred: Masks, true: Masks) -> np.ndarray:
    """Per-image Dice, float64 of shape (N,)."""
    return dice_from_counts(*mask_counts(pred, true))


def image_iou(pred: Masks, true: Masks) -> np.ndarray:
    """Per-image IoU, float64 of shape (N,)."""
    return iou_from_counts(*mask_counts(pred, true))


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of ``values`` over the last axis where ``mask``; NaN (no warning) where none."""
    n = mask.sum(axis=-1)
    total = np.where(mask, values, 0.0).sum(axis=-1)
    return np.divide(total, n, out=np.full(np.shape(total), np.nan), where=n > 0)


def _py(x: np.ndarray):
    """0-d arrays -> Python scalars (JSON friendly); batched results stay arrays."""
    return x.item() if np.ndim(x) == 0 else x


def summarize_counts(inter, pred_area, true_area, n_pixels) -> dict:
    """Batch metrics from per-image counts.

    All arguments broadcast to a common shape (..., N) with images on the last axis;
    ``n_pixels`` is the pixel count *per image* (a scalar H*W when all images share a size).
    Returns a dict of Python scalars for 1-D input, of arrays of shape (...) for batched
    grids (e.g. (T, A) for a sweep). Keys: n, n_pos, n_neg (ground truth), mean_dice,
    pos_dice / neg_dice (mean Dice over ground-truth-positive / -negative images; NaN if
    none), pos_accuracy (share of positive images with a non-empty prediction), neg_accuracy
    (share of negative images predicted empty; equals neg_dice), iou, iou_pos, pixel_accuracy.
    """
    i, p, t = _as_counts(inter, pred_area, true_area)
    if i.ndim == 0:
        raise ValueError("summarize_counts needs counts with an image axis (last axis), got scalars")
    n_pix = np.broadcast_to(np.asarray(n_pixels, dtype=np.float64), i.shape)
    dice, iou = _ratio(2.0 * i, p + t), _ratio(i, p + t - i)
    pos, neg = t > 0, t == 0
    everything = np.ones(i.shape, dtype=bool)
    wrong = (p + t - 2.0 * i).sum(axis=-1)
    total = n_pix.sum(axis=-1)
    return {
        "n": _py(np.full(i.shape[:-1], i.shape[-1], dtype=np.int64)),
        "n_pos": _py(pos.sum(axis=-1)),
        "n_neg": _py(neg.sum(axis=-1)),
        "mean_dice": _py(_masked_mean(dice, everything)),
        "pos_dice": _py(_masked_mean(dice, pos)),
        "neg_dice": _py(_masked_mean(dice, neg)),
        "pos_accuracy": _py(_masked_mean((p > 0).astype(np.float64), pos)),
        "neg_accuracy": _py(_masked_mean((p == 0).astype(np.float64), neg)),
        "iou": _py(_masked_mean(iou, everything)),
        "iou_pos": _py(_masked_mean(iou, pos)),
        "pixel_accuracy": _py(
            np.divide(total - wrong, total, out=np.full(np.shape(total), np.nan), where=total > 0)
        ),
    }


def summarize(pred: Masks, true: Masks) -> dict:
    """Batch metrics of predicted vs true masks (inputs as in :func:`mask_counts`); see
    :func:`summarize_counts` for the keys."""
    return summarize_counts(*_counts(pred, true))


def _binary(x, name: str) -> np.ndarray:
    """1-D array of 0/1 ints; ValueError for anything else (probabilities must be thresholded first)."""
    a = np.asarray(x)
    if a.ndim != 1 or not np.isin(a, (0, 1)).all():
        raise ValueError(f"{name} must be a 1-D array of 0/1 or bool values, got shape {a.shape}")
    return a.astype(np.int64)


def presence_report(pred_present, true_present) -> dict:
    """Image-level detection report, classes "absent" (0) and "present" (1).

    ``pred_present``, ``true_present``: (N,) bool or 0/1. Returns {"absent": {precision,
    recall, f1, support}, "present": {...}, "macro": {precision, recall, f1}, "sensitivity",
    "specificity", "accuracy", "n", "tn", "fp", "fn", "tp"}. Undefined ratios are 0; N >= 1.
    """
    y_pred, y_true = _binary(pred_present, "pred_present"), _binary(true_present, "true_present")
    if y_pred.shape != y_true.shape:
        raise ValueError(f"pred_present and true_present lengths differ: {y_pred.shape} vs {y_true.shape}")
    prec, rec, f1, sup = skm.precision_recall_fscore_support(y_true, y_pred, labels=[0, 1], zero_division=0)
    mp, mr, mf, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=[0, 1], average="macro", zero_division=0
    )
    tn, fp, fn, tp = skm.confusion_matrix(y_true, y_pred, labels=[0, 1]).ravel()
    per_class = {
        name: {
            "precision": float(prec[k]),
            "recall": float(rec[k]),
            "f1": float(f1[k]),
            "support": int(sup[k]),
        }
        for k, name in enumerate(("absent", "present"))
    }
    return {
        **per_class,
        "macro": {"precision": float(mp), "recall": float(mr), "f1": float(mf)},
        "sensitivity": float(rec[1]),
        "specificity": float(rec[0]),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "n": int(y_true.size),
        "tn": int(tn),
        "fp": int(fp),
        "fn": int(fn),
        "tp": int(tp),
    }


def roc_auc(scores, labels) -> float:
    """ROC AUC of (N,) scores against (N,) 0/1 labels; NaN (no warning) unless both classes occur."""
    y = _binary(labels, "labels")
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels shapes differ: {s.shape} vs {y.shape}")
    if np.unique(y).size < 2:
        return float("nan")
    return float(skm.roc_auc_score(y, s))


def roc_auc_resampled(scores, labels, idx: np.ndarray) -> np.ndarray:
    """(R,) ROC AUC of each resample ``idx[r]`` ((R, M) row indices) of (N,) scores and 0/1 labels,
    all at once: the Mann-Whitney statistic with tied scores given their mean rank, which is the
    area under the trapezoid ROC curve ``roc_auc`` computes. NaN where a resample has one class."""
    y = _binary(labels, "labels").astype(np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels shapes differ: {s.shape} vs {y.shape}")
    ranks = rankdata(s[idx], axis=1)  # (R, M), ties -> mean rank
    yi = y[idx]
    n_pos = yi.sum(axis=1)
    n_neg = yi.shape[1] - n_pos
    u = (ranks * yi).sum(axis=1) - n_pos * (n_pos + 1) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = u / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def f1_by_threshold(scores, labels, thresholds) -> np.ndarray:
    """(T,) presence F1 of ``scores >= t`` against (N,) 0/1 labels for each of (T,) thresholds, all
    at once: ``2 tp / (n_true + n_predicted)``, 0 where both are 0. The float sklearn's
    ``f1_score(labels, scores >= t, zero_division=0)`` gives, bit for bit (it computes the same
    ratio from the same counts), without its per-call checks."""
    y = _binary(labels, "labels").astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels shapes differ: {s.shape} vs {y.shape}")
    pred = s[None, :] >= np.asarray(thresholds, dtype=np.float64)[:, None]  # (T, N)
    tp = (pred & y).sum(axis=1).astype(np.float64)
    denom = float(y.sum()) + pred.sum(axis=1).astype(np.float64)
    return np.divide(2.0 * tp, denom, out=np.zeros(denom.shape), where=denom > 0)


POS_DICE_MAX = 0.05  # positive-case Dice below this ...
NEG_DICE_MIN = 0.95  # ... with negative-case Dice above this: a model that calls everything empty


def collapsed_on_validation(pos_dice: float, neg_dice: float) -> bool:
    """Whether a (positive-case, negative-case) Dice pair is the "everything empty" signature of a
    collapsed segmenter (positive-case Dice < POS_DICE_MAX and negative-case > NEG_DICE_MIN)."""
    return bool(pos_dice < POS_DICE_MAX and neg_dice > NEG_DICE_MIN)
