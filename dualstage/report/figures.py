"""The report's figures (matplotlib, Agg backend), each a PNG under ``<report>/figures/``.

Every function returns a :class:`~dualstage.report.document.Figure`; when its inputs are missing
the figure is not drawn and the block says what is missing instead of raising.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from dualstage.artifacts.gates import CLASSIFIER_GATES, COLORS  # noqa: E402
from dualstage.artifacts.operating_points import OperatingPoints, configured_threshold  # noqa: E402
from dualstage.core.io import atomic_write  # noqa: E402
from dualstage.core.metrics import roc_auc  # noqa: E402
from dualstage.report.document import Figure  # noqa: E402

__all__ = [
    "classifier_curves",
    "dice_vs_threshold",
    "probability_by_class",
    "save",
    "threshold_area_heatmap",
    "training_curves",
]

DPI = 90
GATE_MODES = {k: g.label for k, g in CLASSIFIER_GATES.items()}


def save(fig, path: Path) -> Path:
    """Write ``fig`` as PNG atomically and close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight"))
    plt.close(fig)
    return path


def _missing(key: str, caption: str, *paths: Path) -> Figure | None:
    gone = [p for p in paths if not p.is_file()]
    if not gone:
        return None
    return Figure(
        key, caption, None, "not run: " + ", ".join(f"{p.parent.name}/{p.name}" for p in gone) + " missing"
    )


def dice_vs_threshold(exp: Path, op: OperatingPoints | None, out: Path) -> Figure:
    """Mean / positive / negative Dice on test against the threshold; the oof-chosen one marked."""
    key, caption = "dice_vs_threshold", "Dice against the confidence threshold (test split)"
    path = exp / "sweep" / "test" / "thresholds_fine.csv"
    if not path.is_file() and (exp / "sweep" / "oof" / "thresholds_fine.csv").is_file():
        path = exp / "sweep" / "oof" / "thresholds_fine.csv"  # cross-fitted: every study's single-model map
        caption = "Dice against the confidence threshold (every study, out-of-fold maps)"
    if (fig := _missing(key, caption, path)) is not None:
        return fig
    t = pd.read_csv(path)
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for col, label, color in (
        ("mean_dice", "mean Dice", "#1f77b4"),
        ("pos_dice", "positive-case Dice", "#2ca02c"),
        ("neg_dice", "negative-case Dice", "#d62728"),
    ):
        ax.plot(t["threshold"], t[col], label=f"{label} ({path.parent.name})", color=color, lw=2)
    chosen_on = op.chosen_on if op else "selection set"
    sel = exp / "sweep" / str(chosen_on) / "thresholds_fine.csv"
    if sel.is_file() and sel != path:
        s = pd.read_csv(sel)
        ax.plot(
            s["threshold"], s["mean_dice"], "--", color="#1f77b4", alpha=0.6, label=f"mean Dice ({chosen_on})"
        )
    if {"n", "n_neg"} <= set(t.columns) and len(t):
        ax.axhline(t["n_neg"].iloc[0] / t["n"].iloc[0], ls=":", color="k", label="all empty (test)")
    thr = op.rules.get("threshold", {}).get("threshold") if op else None
    if thr is not None:
        ax.axvline(thr, color="k", lw=1)
        ax.text(thr, 1.02, f" chosen on {chosen_on}: {thr:g}", transform=ax.get_xaxis_transform(), fontsize=9)
    ax.set(xlabel="confidence threshold", ylabel="Dice", ylim=(-0.02, 1.02), xlim=(0, 1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return Figure(key, caption, save(fig, out / f"{key}.png"))


def threshold_area_heatmap(exp: Path, op: OperatingPoints | None, out: Path) -> Figure:
    """Mean Dice over the threshold x minimum-area grid of the selection set, chosen point marked."""
    chosen_on = op.chosen_on if op else "oof"
    key = "threshold_area_heatmap"
    caption = f"Mean Dice over threshold x minimum area on {chosen_on} (the selection set)"
    path = exp / "sweep" / chosen_on / "table4_threshold_area.csv"
    if (fig := _missing(key, caption, path)) is not None:
        return fig
    grid = pd.read_csv(path).pivot_table(index="threshold", columns="min_area", values="mean_dice")
    th, ar = grid.index.to_numpy(float), grid.columns.to_numpy(float)
    fig, ax = plt.subplots(figsize=(7.5, 4.6))

    def edges(v: np.ndarray) -> np.ndarray:
        if v.size == 1:
            return np.array([v[0] - 0.5, v[0] + 0.5])
        mid = (v[1:] + v[:-1]) / 2
        return np.concatenate([[2 * v[0] - mid[0]], mid, [2 * v[-1] - mid[-1]]])

    mesh = ax.pcolormesh(edges(ar), edges(th), grid.to_numpy(), cmap="viridis", shading="flat")
    fig.colorbar(mesh, ax=ax, label=f"mean Dice ({chosen_on})")
    rule = op.rules.get("threshold_area", {}) if op else {}
    if "threshold" in rule:
        ax.plot(rule["min_area"], rule["threshold"], marker="*", ms=16, color="white", mec="k")
        ax.annotate(
            f"chosen: {rule['threshold']:g}, {rule['min_area']:g} px",
            (rule["min_area"], rule["threshold"]),
            xytext=(10, 8),
            textcoords="offset points",
            fontsize=9,
            bbox={"boxstyle": "round,pad=0.2", "fc": "white", "ec": "0.5", "alpha": 0.9},
        )
    ax.set(xlabel="minimum area (px at 1024 x 1024)", ylabel="confidence threshold")
    return Figure(key, caption, save(fig, out / f"{key}.png"))


def _probability_file(exp: Path) -> Path:
    """The holdout classifier's test probabilities, else the cross-fitted probabilities of every study."""
    holdout = exp / "classifier" / "test_probabilities.csv"
    cross = exp / "crossfit" / "probabilities.csv"
    return cross if not holdout.is_file() and cross.is_file() else holdout


def _probabilities(exp: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict, np.ndarray | None]:
    """(y (N,), tuned p (N,), default p (N,) or None, {mode: {fold: threshold}}, fold (N,) or None).

    Holdout: one threshold per mode (fold key "all"); cross-fitted: fold k's own threshold per mode.
    """
    path = _probability_file(exp)
    t = pd.read_csv(path)
    if path.parent.name == "crossfit":  # each fold has its own gate threshold
        g = json.loads((exp / "crossfit" / "gate_thresholds.json").read_text())
        thr = {m: {str(k): float(v) for k, v in g[m].items()} for m in GATE_MODES if m in g}
        fold = t["fold"].astype(str).to_numpy() if "fold" in t else None
    else:
        gate = exp / "classifier" / "gate.json"
        g = json.loads(gate.read_text()) if gate.is_file() else {}
        thr = {m: {"all": float(g[m]["threshold"])} for m in GATE_MODES if isinstance(g.get(m), dict)}
        fold = None
    col = "tuned" if "tuned" in t else "probability"
    default = t["default"].to_numpy(float) if "default" in t else None
    return t["has_pneumothorax"].to_numpy(np.int64), t[col].to_numpy(float), default, thr, fold


def _study_thresholds(per_fold: dict[str, float], fold: np.ndarray | None, n: int) -> np.ndarray:
    """(N,) the gate threshold each study was decided with (its own fold's, cross-fitted)."""
    if fold is None or "all" in per_fold:
        return np.full(n, next(iter(per_fold.values())))
    return np.array([per_fold.get(f, np.nan) for f in fold], dtype=np.float64)


def _thresholds_text(per_fold: dict[str, float]) -> str:
    """``p >= 0.08`` (one threshold) or ``p >= 0 / 0.9 / 0.08 (folds 0 / 1 / 2)``."""
    if list(per_fold) == ["all"]:
        return f"p >= {per_fold['all']:g}"
    return f"p >= {' / '.join(f'{v:g}' for v in per_fold.values())} (folds {' / '.join(per_fold)})"


def classifier_curves(exp: Path, out: Path) -> Figure:
    """ROC and precision-recall curves of the classifier on test, gate operating points marked."""
    key, caption = "classifier_roc_pr", "Classifier ROC and precision-recall curves"
    if (fig := _missing(key, caption, _probability_file(exp))) is not None:
        return fig
    y, p, default, thr, fold = _probabilities(exp)
    if np.unique(y).size < 2:
        return Figure(key, caption, None, "not drawn: the test split holds one class only")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.4))
    for probs, label, style in ((p, "tuned", "-"), (default, "default", "--")):
        if probs is None:
            continue
        fpr, tpr, _ = roc_curve(y, probs)
        a.plot(
            fpr, tpr, style, lw=2 if label == "tuned" else 1, label=f"{label} (AUC {roc_auc(probs, y):.3f})"
        )
        prec, rec, _ = precision_recall_curve(y, probs)
        b.plot(rec, prec, style, lw=2 if label == "tuned" else 1, label=label)
    sizes = (11, 7, 5)  # later markers drawn smaller: the modes' thresholds may coincide
    for size, (mode, per_fold) in zip(sizes, thr.items(), strict=False):
        pred = p >= _study_thresholds(per_fold, fold, p.size)  # each study at its own fold's threshold
        tpr, fpr = pred[y == 1].mean(), pred[y == 0].mean()
        prec = (pred & (y == 1)).sum() / max(1, pred.sum())
        color, text = COLORS[mode], f"{GATE_MODES[mode]}: {_thresholds_text(per_fold)}"
        a.plot(fpr, tpr, "o", ms=size, color=color, label=text)
        b.plot(tpr, prec, "o", ms=size, color=color, label=text)
    a.plot([0, 1], [0, 1], ":", color="gray")
    b.axhline(y.mean(), ls=":", color="gray", label=f"prevalence {y.mean():.2f}")
    a.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    b.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right" if ax is a else "lower left")
    return Figure(key, caption, save(fig, out / f"{key}.png"))


def probability_by_class(exp: Path, out: Path) -> Figure:
    """Classifier probability of each study by its true class (jittered strip) and every gate
    threshold: one per mode (holdout), or each fold's own per mode (cross-fitted)."""
    key, caption = "classifier_probability", "Classifier probability by true class"
    if (fig := _missing(key, caption, _probability_file(exp))) is not None:
        return fig
    y, p, _, thr, _ = _probabilities(exp)
    if any(list(v) != ["all"] for v in thr.values()):
        caption += " (every study, out-of-fold; each fold's own gate threshold)"
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    jitter = np.random.default_rng(0).uniform(-0.25, 0.25, y.size)
    for cls, color, name in ((0, "#1f77b4", "absent"), (1, "#d62728", "present")):
        m = y == cls
        ax.scatter(p[m], cls + jitter[m], s=12, alpha=0.5, color=color, label=f"{name} ({m.sum()})")
    styles = ("--", ":", "-.", (0, (5, 1)), (0, (1, 3)))
    for mode, per_fold in thr.items():
        for i, (f, t) in enumerate(per_fold.items()):
            where = "" if f == "all" else f", fold {f}"
            ax.axvline(
                t, color=COLORS[mode], ls=styles[i % len(styles)], label=f"{GATE_MODES[mode]}{where}: {t:g}"
            )
    ax.set(
        xlabel="classifier probability (tuned)",
        yticks=[0, 1],
        yticklabels=["absent", "present"],
        xlim=(-0.02, 1.02),
    )
    ax.grid(alpha=0.3, axis="x")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return Figure(key, caption, save(fig, out / f"{key}.png"))


def training_curves(exp: Path, out: Path) -> Figure:
    """Loss and validation Dice against epoch for every segmenter model, phases shaded and named."""
    key, caption = (
        "training_curves",
        "Training curves per model: loss and validation mean Dice, phases shaded",
    )
    logs = {p.parent.name: pd.read_csv(p) for p in sorted((exp / "segmenter").glob("*/log.csv"))}
    logs = {k: v for k, v in logs.items() if len(v)}
    if not logs:
        return Figure(key, caption, None, "not run: no segmenter/*/log.csv (segment train)")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    first = next(iter(logs.values()))
    if "phase" in first:
        for i, (_, part) in enumerate(first.groupby("phase", sort=True)):
            lo, hi = part["epoch"].min() - 0.5, part["epoch"].max() + 0.5
            name = str(part["phase_name"].iloc[0]) if "phase_name" in part else str(i)
            for ax in (a, b):
                ax.axvspan(lo, hi, color="0.85" if i % 2 else "0.93", zorder=0)
                ax.text(
                    (lo + hi) / 2,
                    0.99,
                    name,
                    transform=ax.get_xaxis_transform(),
                    ha="center",
                    va="top",
                    fontsize=8,
                )
    cmap = plt.get_cmap("tab10")
    for i, (name, log) in enumerate(logs.items()):
        c = cmap(i % 10)
        if "train_loss" in log:
            a.plot(log["epoch"], log["train_loss"], "-o", ms=3, color=c, label=f"{name} train")
        if "val_loss" in log:
            a.plot(log["epoch"], log["val_loss"], "--", color=c, label=f"{name} val")
        if "val_mean_dice" in log:
            b.plot(log["epoch"], log["val_mean_dice"], "-o", ms=3, color=c, label=name)
    a.set(xlabel="epoch", ylabel="loss (the phase's own loss)", title="loss")
    try:
        rule = f"threshold {configured_threshold(exp):g}"
    except FileNotFoundError:
        rule = "train.val_threshold"
    b.set(xlabel="epoch", ylabel=f"validation mean Dice ({rule})", title="validation mean Dice")
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.16))
    return Figure(key, caption, save(fig, out / f"{key}.png"))
