"""``segment evaluate``: the papers' stage-one tables from finished experiment folders.

Numbers are computed on the held-out ``test`` predictions (``predictions/test``) when the holdout
view was run, else on every study's cross-fitted out-of-fold map (``predictions/oof``); each table
says which. Choices (thresholds, minimum areas) come from ``operating_point.json`` or the selection
set's sweep, never from test. The un-tuned rule is ``train.val_threshold`` of the folder's saved
config (:func:`~dualstage.artifacts.operating_points.configured_threshold`). A table whose inputs are
missing says so, naming the step to run, instead of disappearing.

- progressive paper Table 2: mean / positive / negative Dice, positive accuracy per backbone
  (the un-tuned rule, and the chosen operating point);
- Table 3: metrics per confidence threshold 0.1..0.9, chosen threshold marked;
- Table 4: per minimum-pixel value, the threshold chosen on validation/OOF, its test metrics;
- k-fold CV: mean +- std over fold models of mean Dice on their own held-out fold (its
  out-of-fold maps), the inner-validation Dice of the kept epoch beside it;
- dual-stage paper Table 1: validation loss at the kept epoch, IoU and pixel accuracy per backbone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.operating_points import (
    OperatingPoints,
    configured_threshold,
    default_rule,
    read_chosen_table,
)
from dualstage.core import gating
from dualstage.core.io import atomic_write_text, write_csv_atomic, write_json_atomic
from dualstage.core.metrics import summarize_counts

__all__ = ["evaluate", "TABLE4_AREAS"]

TABLE4_AREAS = (0, 250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000)
KEYS = ["mean_dice", "pos_dice", "neg_dice", "pos_accuracy"]
HOLDOUT, CROSSFIT = "holdout test split", "cross-fitted out-of-fold maps, every study"


def _scores(hist: gating.Histograms, rule: dict) -> dict:
    counts = gating.rule_counts(hist.hist, hist.height, hist.width, rule)
    return {
        k: (int(v) if k in ("n", "n_pos", "n_neg") else float(v))
        for k, v in summarize_counts(*counts).items()
    }


def _pooled_iou(hist: gating.Histograms, rule: dict) -> float:
    """Foreground IoU pooled over every pixel of the set: sum |A n B| / sum |A u B| (the dual-stage
    paper's Table 1 quantity; not the per-image mean with empty = 1)."""
    inter, area, true, _ = gating.rule_counts(hist.hist, hist.height, hist.width, rule)
    union = float(np.sum(area) + np.sum(true) - np.sum(inter))
    return float(np.sum(inter) / union) if union > 0 else float("nan")


def _encoder(exp: Path) -> str:
    config = ExperimentDir(exp).read_config()
    if config:
        return config["model"]["encoder"]
    for cfg in sorted((exp / "segmenter").glob("*/config.json")):  # runs saved before experiment.json
        return json.loads(cfg.read_text())["model"]["encoder"]
    return "?"


def _chosen_scores(exp: Path, test: gating.Histograms, op: OperatingPoints) -> tuple[dict, dict]:
    """(best rule, its test scores): from histograms, or from the sweep's test table for a
    largest-component rule (its counts need the maps, which the sweep already scored)."""
    chosen = op.rule("best")
    if not chosen.get("lcc"):
        return chosen, _scores(test, chosen)
    table = read_chosen_table(ExperimentDir(exp).sweep / "test")
    row = table.loc[op.best_rule]
    return chosen, {k: float(row[k]) for k in KEYS}


def _load(set_dir: Path) -> gating.Histograms | None:
    return gating.load_histograms(set_dir) if (set_dir / "histograms.npz").exists() else None


def _checkpoint(exp: Path) -> str:
    """The epoch the models keep: ``train.checkpoint`` ("last" or "best") of the saved config."""
    return str((ExperimentDir(exp).read_config().get("train") or {}).get("checkpoint", "last"))


def _kept_row(log: pd.DataFrame, checkpoint: str) -> pd.Series | None:
    """The log row of the kept epoch: the last one, or ("best") the highest val_mean_dice."""
    if log.empty or "val_mean_dice" not in log or log["val_mean_dice"].isna().all():
        return None
    return log.loc[log["val_mean_dice"].idxmax()] if checkpoint == "best" else log.iloc[-1]


def _kept_loss(exp: Path) -> float:
    """Validation loss at each model's kept epoch (:func:`_kept_row`), mean over the models."""
    rows = [
        _kept_row(pd.read_csv(p), _checkpoint(exp)) for p in sorted((exp / "segmenter").glob("*/log.csv"))
    ]
    losses = [float(r["val_loss"]) for r in rows if r is not None and "val_loss" in r]
    return float(np.mean(losses)) if losses else float("nan")


def _evaluation_set(exp: Path) -> tuple[gating.Histograms | None, str]:
    """(histograms, how the maps were made): the holdout test split (main model) when predicted,
    else every study's cross-fitted out-of-fold map (fold model k on fold k)."""
    test = _load(exp / "predictions" / "test")
    if test is not None:
        return test, HOLDOUT
    oof = _load(exp / "predictions" / "oof")
    return oof, CROSSFIT


def _backbone_rows(exp: Path, notes: list[str]) -> tuple[dict | None, dict | None]:
    test, maps = _evaluation_set(exp)
    if test is None:
        notes.append(f"{exp.name}: no predictions/test or predictions/oof histograms (run segment predict)")
        return None, None
    op = OperatingPoints.read_or_none(ExperimentDir(exp).operating_point) if maps == HOLDOUT else None
    if maps == HOLDOUT and op is None:
        notes.append(
            f"{exp.name}: Table 2's chosen operating point not available: "
            f"{ExperimentDir(exp).operating_point} missing; run `segment sweep`"
        )
    default_point = default_rule(configured_threshold(exp))
    default = _scores(test, default_point)
    row2 = {
        "experiment": exp.name,
        "backbone": _encoder(exp),
        "operating_point": f"threshold {default_point['threshold']:g}",
        "maps": maps,
        "n": default["n"],
    }
    row2.update({k: default[k] for k in KEYS})
    if op is not None:
        chosen, scored = _chosen_scores(exp, test, op)
        row2.update({f"chosen_{k}": scored[k] for k in KEYS})
        row2["chosen_rule"] = json.dumps(chosen)
    row1 = {
        "experiment": exp.name,
        "backbone": _encoder(exp),
        "val_loss_kept_epoch": _kept_loss(exp),
        "iou_pooled": _pooled_iou(test, default_point),
        "iou": default["iou"],
        "iou_pos": default["iou_pos"],
        "pixel_accuracy": default["pixel_accuracy"],
        "mean_dice": default["mean_dice"],
    }
    return row2, row1


def _table3(exp: Path, notes: list[str]) -> pd.DataFrame | None:
    path = exp / "sweep" / "test" / "table3_thresholds.csv"
    cross = exp / "sweep" / "oof" / "table3_thresholds.csv"  # the sweep's curve over every study
    if not path.exists() and cross.exists():
        return pd.read_csv(cross)[["threshold", *KEYS]].assign(
            maps="cross-fitted out-of-fold maps, every study"
        )
    if not path.exists():
        notes.append(f"{exp.name}: Table 3 not available ({path} missing: run segment sweep)")
        return None
    table = pd.read_csv(path)
    op = OperatingPoints.read_or_none(ExperimentDir(exp).operating_point)
    if op is not None:
        chosen = op.rule("threshold")["threshold"]
        table["chosen_on_selection_set"] = np.isclose(table["threshold"], chosen)
    return table[["threshold", *KEYS, *[c for c in table.columns if c == "chosen_on_selection_set"]]]


def _table4(exp: Path, notes: list[str]) -> pd.DataFrame | None:
    op = OperatingPoints.read_or_none(ExperimentDir(exp).operating_point)
    test = _load(exp / "predictions" / "test")
    if op is None or test is None:
        notes.append(
            f"{exp.name}: Table 4 not available (holdout view only: needs operating_point.json and test "
            "predictions; the cross-fitted view chooses its areas per fold)"
        )
        return None
    chosen_on = op.chosen_on
    sel = pd.read_csv(exp / "sweep" / chosen_on / "table4_threshold_area.csv")
    rows = []
    for area in TABLE4_AREAS:
        part = sel[np.isclose(sel["min_area"], area)]
        if part.empty:
            continue
        best = part.sort_values(["mean_dice", "threshold"], ascending=[False, True]).iloc[0]
        scored = _scores(
            test, {"rule": "threshold_area", "threshold": float(best["threshold"]), "min_area": area}
        )
        rows.append(
            {
                "threshold": float(best["threshold"]),
                "min_area_1024": area,
                **{k: scored[k] for k in KEYS},
                "threshold_chosen_on": chosen_on,
            }
        )
    return pd.DataFrame(rows)


def _kept_val_dice(fold_dir: Path, checkpoint: str) -> float:
    """Inner-validation mean Dice of the epoch the model keeps (last, or best by that Dice)."""
    path = fold_dir / "log.csv"
    row = _kept_row(pd.read_csv(path), checkpoint) if path.is_file() else None
    return float("nan") if row is None else float(row["val_mean_dice"])


def _cv_summary(exp: Path, notes: list[str]) -> pd.DataFrame | None:
    """The progressive paper's k-fold CV: each fold model on its own held-out fold (its out-of-fold
    maps: ``oof_mean_dice``), with the inner-validation Dice of its kept epoch beside it
    (``inner_val_mean_dice``: studies carved from the model's own training folds)."""
    folds = sorted(p.name for p in (exp / "segmenter").glob("fold_*") if (p / "last.pt").exists())
    if not folds:
        notes.append(f"{exp.name}: no fold models: the k-fold summary needs segment train --fold all")
        return None
    checkpoint, rule = _checkpoint(exp), default_rule(configured_threshold(exp))
    oof_dir = exp / "predictions" / "oof"
    oof = _load(oof_dir)
    index = pd.read_csv(oof_dir / "index.csv", dtype={"image_id": str}) if oof is not None else None
    rows = []
    for fold in folds:
        row = {
            "fold": fold,
            "inner_val_mean_dice": _kept_val_dice(exp / "segmenter" / fold, checkpoint),
            "oof_mean_dice": np.nan,
            "n_oof": 0,
        }
        if oof is not None:
            keep = np.isin(oof.image_id, index.loc[index["fold_model"] == fold, "image_id"].to_numpy())
            if keep.any():
                part = gating.Histograms(
                    oof.image_id[keep], oof.hist[keep], oof.height[keep], oof.width[keep]
                )
                row["oof_mean_dice"] = _scores(part, rule)["mean_dice"]
                row["n_oof"] = int(keep.sum())
        rows.append(row)
    table = pd.DataFrame(rows)
    if table["oof_mean_dice"].isna().all():
        notes.append(f"{exp.name}: per-fold out-of-fold Dice not run (segment predict --split oof)")
    return table


def _markdown(frame: pd.DataFrame | None, title: str) -> str:
    if frame is None or frame.empty:
        return f"### {title}\n\n_not available: see the notes below_\n"

    def cell(v) -> str:
        return f"{v:.4f}" if isinstance(v, float | np.floating) else str(v)

    head = "| " + " | ".join(map(str, frame.columns)) + " |\n|" + " --- |" * len(frame.columns) + "\n"
    body = "".join("| " + " | ".join(cell(v) for v in row) + " |\n" for row in frame.itertuples(index=False))
    return f"### {title}\n\n{head}{body}"


def evaluate(exp_dirs: list[str | Path], out: str | Path | None = None) -> dict:
    """Write the papers' stage-one tables for one or more experiment folders; returns them."""
    exps = [Path(e) for e in exp_dirs]
    for e in exps:
        if not (e / "segmenter").is_dir():
            raise FileNotFoundError(f"{e}: not a trained experiment folder (no segmenter/)")
    out = Path(out) if out else exps[0] / "evaluation"
    notes: list[str] = []
    table2, dual1, sections = [], [], []
    for exp in exps:
        r2, r1 = _backbone_rows(exp, notes)
        if r2:
            table2.append(r2)
            dual1.append(r1)
    tables = {
        "progressive_table2": pd.DataFrame(table2) if table2 else None,
        "dualstage_table1": pd.DataFrame(dual1) if dual1 else None,
    }
    for exp in exps:
        tables[f"{exp.name}_table3"] = _table3(exp, notes)
        tables[f"{exp.name}_table4"] = _table4(exp, notes)
        tables[f"{exp.name}_cv"] = cv = _cv_summary(exp, notes)
        if cv is not None:
            summary = {
                c: (float(cv[c].mean()), float(cv[c].std(ddof=1)) if len(cv) > 1 else float("nan"))
                for c in ("inner_val_mean_dice", "oof_mean_dice")
            }
            tables[f"{exp.name}_cv_summary"] = pd.DataFrame(
                [{"set": k, "mean": m, "std": s, "folds": len(cv)} for k, (m, s) in summary.items()]
            )
    where = ", ".join(sorted({str(m) for m in tables["progressive_table2"]["maps"]})) if table2 else "-"
    titles = {
        "progressive_table2": f"Progressive paper, Table 2: backbones ({where})",
        "dualstage_table1": f"Dual-stage paper, Table 1: loss, IoU, pixel accuracy ({where}; loss = "
        "validation loss at the kept epoch)",
    }
    for name, frame in tables.items():
        if frame is not None:
            write_csv_atomic(frame, out / f"{name}.csv")
        title = titles.get(name, name.replace("_", " "))
        sections.append(_markdown(frame, title))
    text = "\n".join(sections) + (
        "\n**Notes**\n\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else ""
    )
    atomic_write_text(out / "tables.md", text)
    write_json_atomic(
        out / "evaluation.json",
        {
            "experiments": [str(e) for e in exps],
            "notes": notes,
            "tables": sorted(k for k, v in tables.items() if v is not None),
        },
    )
    return {"text": text, "tables": tables, "notes": notes, "out": str(out)}
