"""Tables: the gate comparison (numbers and display text) and the papers' tables in their own layout.

Stage-one tables come from ``<exp>/evaluation/*.csv`` (``segment evaluate``): the report reads
what evaluate saved and names what is missing. Backbone tables also pick up the paper experiments
beside this one (any folder whose saved config has ``report.paper_table: progressive`` or
``dualstage``, whatever its name) and name the papers' backbones that were not run.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from dualstage.artifacts.classifier_files import PAPER_TABLE2
from dualstage.artifacts.layout import ExperimentDir, find_experiments
from dualstage.artifacts.operating_points import OperatingPoints, configured_threshold
from dualstage.report.compare import METRICS
from dualstage.report.document import Table

__all__ = [
    "DUALSTAGE_BACKBONES",
    "PROGRESSIVE_BACKBONES",
    "comparison_display",
    "comparison_frame",
    "paper_tables",
    "rules_method",
    "stage_one_frames",
]

PROGRESSIVE_BACKBONES = {  # encoder -> the paper's name (experiments with report.paper_table: progressive)
    "resnet34": "ResNet34",
    "efficientnet-b4": "EfficientNet",
    "se_resnext50_32x4d": "SE-ResNeXt-50",
}
DUALSTAGE_BACKBONES = {  # encoder -> the paper's name (experiments with report.paper_table: dualstage)
    "resnet34": "ResNet34",
    "vgg16": "VGG16",
    "inceptionresnetv2": "InceptionResNetV2",
    "xception": "Xception",
}
SCORES = {
    "mean_dice": "Mean Dice",
    "pos_dice": "Positive-case Dice",
    "neg_dice": "Negative-case Dice",
    "pos_accuracy": "Positive accuracy",
}


def comparison_frame(cmp: dict) -> pd.DataFrame:
    """One row per gate: gate, operating_point, each metric with ``_lo`` / ``_hi``, and the paired mean-Dice
    difference from the reference gate (``diff_mean_dice``, ``_lo``, ``_hi``, ``diff_share_above_zero``)."""
    rows = []
    for key in cmp["order"]:
        g = cmp["gates"][key]
        row = {"gate": g["name"], "operating_point": g["rule"]}
        for m in METRICS:
            v = g["metrics"][m]
            row.update({m: v["value"], f"{m}_lo": v["lo"], f"{m}_hi": v["hi"]})
        d = g.get("diff_vs_reference") or {}
        row.update(
            {
                "diff_mean_dice": d.get("value", np.nan),
                "diff_mean_dice_lo": d.get("lo", np.nan),
                "diff_mean_dice_hi": d.get("hi", np.nan),
                "diff_share_above_zero": d.get("share_above_zero", np.nan),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _ci(v: float, lo: float, hi: float, signed: bool = False) -> str:
    if v is None or np.isnan(v):
        return "-"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    tail = "" if np.isnan(lo) else f" [{fmt.format(lo)}, {fmt.format(hi)}]"
    return fmt.format(v) + tail


def comparison_display(cmp: dict, short: bool = False) -> pd.DataFrame:
    """Display text "value [lo, hi]" per cell; ``short``: gate, mean Dice, difference, pos / neg Dice."""
    frame = comparison_frame(cmp)
    ref = cmp["gates"][cmp["reference"]]["name"] if cmp.get("reference") else None
    keep = ("mean_dice", "pos_dice", "neg_dice") if short else tuple(METRICS)
    out = pd.DataFrame({"Gate": frame["gate"]})
    if not short:
        out["Operating point"] = frame["operating_point"]
    for m in keep:
        out[METRICS[m]] = [_ci(r[m], r[f"{m}_lo"], r[f"{m}_hi"]) for _, r in frame.iterrows()]
        if m == "mean_dice" and ref:
            out[f"Δ mean Dice vs {ref}"] = [
                _ci(r["diff_mean_dice"], r["diff_mean_dice_lo"], r["diff_mean_dice_hi"], signed=True)
                for _, r in frame.iterrows()
            ]
    return out


def _grid_text(g: dict) -> str:
    """A recorded grid (``start/stop/step/n`` or ``values``) in words."""
    if "values" in g:
        return ", ".join(f"{v:g}" for v in g["values"])
    return f"{g['start']:g} to {g['stop']:g} step {g['step']:g} ({g['n']} values)"


def rules_method(exp: Path, split: str) -> str | None:
    """The pixel rules' search in words, from the grid recorded beside the chosen operating points
    (fold 0's when cross-fitted); None when no operating points were written."""
    d = ExperimentDir(exp)
    path = d.operating_point
    if split == "crossfit" and d.crossfit_folds():
        path = d.crossfit_fold(d.crossfit_folds()[0]) / "operating_point.json"
    op = OperatingPoints.read_or_none(path)
    grid = op.grid if op is not None else {}
    if op is None:
        return None
    if "thresholds" not in grid:
        return (
            f"Pixel rules: {path} records one grid per rule (an older sweep), so part of a difference "
            "between rules may be the grid; re-run `segment sweep`."
        )
    return (
        f"Pixel rules chosen on one threshold grid, {_grid_text(grid['thresholds'])}, for best threshold, "
        f"threshold + min area and the triplet's top and bottom (bottom <= top), with minimum areas "
        f"{_grid_text(grid['min_areas'])} px at 1024 x 1024: threshold + min area is exactly the triplet's "
        "top == bottom subset and best threshold its min area 0 subset, so on the data they were chosen on "
        "the three are nested and a difference between them is the rule, not the grid. Ties: "
        f"{grid.get('tie_break', '?')}."
    )


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() else None


def _paper_siblings(exp: Path, paper: str) -> list[Path]:
    """Experiments beside ``exp`` whose saved config says ``report.paper_table: <paper>``."""
    found = []
    for name, d in find_experiments(exp.parent).items():
        config = d.read_config()
        if name != exp.name and (config.get("report") or {}).get("paper_table") == paper:
            found.append(d.root)
    return found


def _encoder(d: Path) -> str | None:
    return (ExperimentDir(d).read_config().get("model") or {}).get("encoder")


def stage_one_frames(exp: Path, out: Path) -> tuple[dict[str, pd.DataFrame | None], list[str], list[Path]]:
    """({table name: frame}, notes, experiment folders) of what ``segment evaluate`` saved.

    Reads ``<d>/evaluation/*.csv`` for this experiment and the paper experiments beside it (found by
    their saved configs); an experiment whose tables are missing is named in the notes, not re-run.
    """
    dirs = list(
        dict.fromkeys([exp, *_paper_siblings(exp, "progressive"), *_paper_siblings(exp, "dualstage")])
    )
    notes = [
        f"not run: {d.name}/evaluation missing (segment evaluate --exp {d})"
        for d in dirs
        if not (ExperimentDir(d).evaluation / "progressive_table2.csv").is_file()
    ]
    frames: dict[str, pd.DataFrame | None] = {}
    for table in ("progressive_table2", "dualstage_table1"):
        parts = []
        for d in dirs:
            f = _read(ExperimentDir(d).evaluation / f"{table}.csv")
            if f is not None and "experiment" in f:
                parts.append(f[f["experiment"].astype(str) == d.name])
        frames[table] = pd.concat(parts, ignore_index=True) if parts else None
    for suffix in ("table3", "table4", "cv", "cv_summary"):
        frames[suffix] = _read(ExperimentDir(exp).evaluation / f"{exp.name}_{suffix}.csv")
    return frames, notes, dirs


def _g(values) -> list[str]:
    """Thresholds as short text (0.55, not 0.5500)."""
    return [f"{float(v):g}" for v in values]


def _untuned(exp: Path) -> str:
    """The un-tuned rule in words: ``threshold <train.val_threshold>`` of the folder's saved config."""
    try:
        return f"threshold {configured_threshold(exp):g}"
    except FileNotFoundError:
        return "threshold train.val_threshold (no saved config)"


def _maps(frame: pd.DataFrame | None, fallback: str) -> str:
    """Which maps a stage-one table scored ("holdout test split" / "cross-fitted out-of-fold maps")."""
    if frame is None or "maps" not in frame or frame.empty:
        return fallback
    return ", ".join(sorted({str(m) for m in frame["maps"].dropna()})) or fallback


def _not_run(missing: list[str], what: str) -> str | None:
    return f"not run: {', '.join(missing)} ({what})" if missing else None


def _backbone_table(frame, dirs, paper: dict, key: str, caption: str, columns: dict, footer: str) -> Table:
    run = {_encoder(d) for d in dirs}
    missing = _not_run(
        [label for enc, label in paper.items() if enc not in run], "no experiment with that encoder was run"
    )
    if frame is not None:
        frame = frame[frame["experiment"].astype(str).isin({d.name for d in dirs})]
    if frame is None or frame.empty:
        return Table(
            key,
            caption,
            None,
            "not run: no experiment with test predictions" + (f"; {missing}" if missing else ""),
        )
    out = pd.DataFrame({"Backbone": [paper.get(b, b) for b in frame["backbone"].astype(str)]})
    for col, label in columns.items():
        out[label] = frame[col] if col in frame else np.nan
    out["Experiment"] = frame["experiment"].astype(str)
    return Table(key, caption, out, missing, footer)


def _xgboost_text(base: dict) -> str:
    """The XGBoost settings every cell of Table 2 shares, in words."""
    keys = ("tree_method", "max_bin", "eval_metric", "device", "seed")
    return ", ".join(f"{k} {base[k]}" for k in keys if base.get(k) is not None) or "?"


def _crossfit_table2(path: Path) -> Table:
    record = path.with_name("table2.json")
    shared = (json.loads(record.read_text()) if record.is_file() else {}).get("xgboost")
    caption = (
        "Dual-stage paper, Table 2, cross-fitted over every study (out-of-fold probabilities): the paper's "
        "features (DenseNet of image and mask) and ours (plus map statistics), XGBoost defaults and tuned; "
        "threshold per fold from inner out-of-fold probabilities"
    )
    footer = (
        f"Every cell shares one XGBoost configuration ({_xgboost_text(shared)}); a column varies only the "
        "feature set, and defaults vs tuned only the searched hyper-parameters (the gate classifier's "
        "search on the same inner folds; 'ours, tuned' is the gate's classifier)."
        if shared
        else "not recorded which XGBoost settings the cells share (crossfit/table2.json from an older run: "
        "re-run `classify tune`)"
    )
    t = pd.read_csv(path)
    names = {
        "paper_default": "paper features, defaults",
        "paper_tuned": "paper features, tuned",
        "ours_default": "ours, defaults",
        "ours_tuned": "ours, tuned",
    }
    label = {"absent": "Normal (0)", "present": "Pneumothorax (1)"}
    rows, seen = [], set()
    for r in t.to_dict("records"):
        model, first = str(r["model"]), str(r["model"]) not in seen
        auc = f"{r['roc_auc']:.3f} [{r['roc_auc_lo']:.3f}, {r['roc_auc_hi']:.3f}]"
        rows.append(
            {
                "Model": names.get(model, model) if first else "",
                "Class": label.get(str(r["class"]), r["class"]),
                "Precision": r["precision"],
                "Recall": r["recall"],
                "F1 Score": r["f1"],
                "Support": int(r["support"]),
                "ROC AUC [95 % CI]": auc if first else "",
            }
        )
        seen.add(model)
    return Table("dual_table2", caption, pd.DataFrame(rows), None, footer)


def _dual_table2(exp: Path) -> Table:
    caption = "Dual-stage paper, Table 2: classifier before / after tuning (test split, probability 0.5)"
    params = exp / "classifier" / "params.json"
    base = (json.loads(params.read_text()) if params.is_file() else {}).get("base")
    footer = (
        f"Both rows share one XGBoost configuration ({_xgboost_text(base)}); they differ only in the "
        "searched hyper-parameters (XGBoost's defaults before tuning)."
        if base
        else None
    )
    path = exp / "classifier" / "table2.csv"
    if not path.is_file() and (exp / "crossfit" / "table2.csv").is_file():
        return _crossfit_table2(exp / "crossfit" / "table2.csv")
    if not path.is_file():
        return Table("dual_table2", caption, None, "not run: classifier/table2.csv missing (classify tune)")
    t = pd.read_csv(path)
    stage = {"default": "Before Tuning", "tuned": "After Tuning"}
    label = {"absent": "Normal (0)", "present": "Pneumothorax (1)"}
    rows, seen = [], set()
    for r in t.to_dict("records"):
        model, cls = str(r["model"]), str(r["class"])
        ref = PAPER_TABLE2.get(model, {}).get(cls)
        rows.append(
            {
                "Stage": "" if model in seen else stage.get(model, model),
                "Class": label.get(cls, cls),
                "Precision": r["precision"],
                "Recall": r["recall"],
                "F1 Score": r["f1"],
                "Support": int(r["support"]),
                "Paper P / R / F1": " / ".join(f"{x:.2f}" for x in ref) if ref else "-",
            }
        )
        seen.add(model)
    return Table("dual_table2", caption, pd.DataFrame(rows), None, footer)


def _cv_table(cv: pd.DataFrame | None, rule: str) -> Table:
    """The progressive paper's k-fold table: inner validation and out-of-fold Dice, named as such."""
    return Table(
        "prog_cv",
        f"Progressive paper, k-fold cross-validation ({rule}): mean and std over fold models",
        None
        if cv is None
        else cv.rename(columns={"set": "Set", "mean": "Mean Dice", "std": "Std", "folds": "Folds"}),
        "not run: no fold models (segment train --fold all)" if cv is None else None,
        "inner_val_mean_dice: each fold model on its inner validation (studies carved from its own "
        "training folds, at the kept epoch), not a held-out fold; oof_mean_dice: each fold model on its "
        "own held-out fold (its out-of-fold maps; the cross-validation score).",
    )


def paper_tables(exp: Path, out: Path, chosen: OperatingPoints | None) -> tuple[list[Table], list[str]]:
    """The papers' tables (progressive 2, 3, 4, k-fold; dual-stage 1, 2) and evaluate's notes."""
    frames, notes, dirs = stage_one_frames(exp, out)
    prog = [d for d in dirs if d == exp or d in _paper_siblings(exp, "progressive")]
    dual = [d for d in dirs if d == exp or d in _paper_siblings(exp, "dualstage")]
    rule = _untuned(exp)
    t2_maps = _maps(frames["progressive_table2"], "test split")
    tables = [
        _backbone_table(
            frames["progressive_table2"],
            prog,
            PROGRESSIVE_BACKBONES,
            "prog_table2",
            f"Progressive paper, Table 2: backbones ({t2_maps}, {rule})",
            SCORES,
            "Positive accuracy: share of positive studies with a non-empty mask.",
        )
    ]
    t3 = frames["table3"]
    thr = chosen.rules.get("threshold", {}).get("threshold") if chosen else None
    tables.append(
        Table(
            "prog_table3",
            f"Progressive paper, Table 3: confidence thresholds ({_maps(t3, 'test split')})",
            None
            if t3 is None
            else t3.rename(columns={"threshold": "Confidence threshold", **SCORES})[
                ["Confidence threshold", *SCORES.values()]
            ],
            "not run: sweep/test/table3_thresholds.csv missing (segment sweep)" if t3 is None else None,
            f"Threshold chosen on the selection set: {thr:g}." if thr is not None else None,
        )
    )
    t4 = frames["table4"]
    cols = {"threshold": "Confidence threshold", "min_area_1024": "Pixel threshold", **SCORES}
    tables.append(
        Table(
            "prog_table4",
            "Progressive paper, Table 4: confidence threshold x pixel threshold (test split)",
            None
            if t4 is None or t4.empty
            else t4.assign(threshold=_g(t4["threshold"])).rename(columns=cols)[list(cols.values())],
            "not run: needs operating_point.json, sweep tables and test predictions" if t4 is None else None,
            "Per pixel threshold (minimum mask area at 1024 x 1024), the confidence threshold chosen on the "
            "selection set; scores on test.",
        )
    )
    tables.append(_cv_table(frames["cv_summary"], rule))
    tables.append(
        _backbone_table(
            frames["dualstage_table1"],
            dual,
            DUALSTAGE_BACKBONES,
            "dual_table1",
            f"Dual-stage paper, Table 1: loss, IoU, accuracy per backbone ({t2_maps}, {rule})",
            {
                "val_loss_kept_epoch": "Loss",
                "iou_pooled": "IoU (pixel-pooled)",
                "iou": "IoU per image (empty = 1)",
                "iou_pos": "IoU (positives)",
                "pixel_accuracy": "Accuracy",
            },
            "Loss: validation loss at each model's kept epoch (mean over models). IoU (pixel-pooled): "
            "foreground intersection over union summed over every pixel of the set, the quantity comparable "
            "with the paper's 0.6085; IoU per image: mean with empty vs empty = 1 (not comparable); "
            "accuracy: pixel accuracy.",
        )
    )
    tables.append(_dual_table2(exp))
    return tables, notes
