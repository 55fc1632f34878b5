"""``segment sweep``: choose operating points on out-of-fold / validation data, tabulate every set.

Reads a predictions folder (``<pred_root>/<set>/maps/*.png``, ``index.csv``, ``histograms.npz``),
sweeps every rule of :mod:`dualstage.core.gating` from the histograms (exact, no map in RAM) and writes::

    <out_dir>/sweep/<set>/table3_thresholds.csv     coarse thresholds (paper Table 3)
    <out_dir>/sweep/<set>/thresholds_fine.csv       thresholds on the rules' grid (GRID)
    <out_dir>/sweep/<set>/table4_threshold_area.csv GRID x min_area, long format (paper Table 4)
    <out_dir>/sweep/<set>/triplet.csv               top x min_area x bottom on GRID (bottom <= top)
    <out_dir>/sweep/<set>/lcc_thresholds.csv        threshold + largest component (lcc=True only)
    <out_dir>/sweep/<set>/chosen.csv                the chosen operating points scored on this set
    <out_dir>/operating_point.json                  chosen on the selection set only

The selection set is ``oof`` (else ``val``); ``test`` is never chosen on, only reported.
One threshold grid (GRID, 0.02 .. 0.98 step 0.02) serves every tuned pixel rule: best threshold,
threshold + min area and the triplet's top and bottom. So threshold + area is exactly the triplet's
top == bottom subset and best threshold its min_area 0 subset: on the selection set the three are
nested, and a difference between them is the rule, never the grid. (Step 0.02, not 0.01: the
triplet's cost grows with the square of the grid, 4x fewer cells than 0.01.)
Ties in mean Dice (within 1e-12) go to the simpler setting: for the triplet the smaller top - bottom
gap first (so a triplet that does no better than threshold + area on the selection set *is* that
rule), then smaller min_area, then lower threshold; between rules: threshold < threshold_area <
triplet < lcc.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from dualstage.artifacts.operating_points import OperatingPoints, default_rule
from dualstage.artifacts.prediction_set import PredictionSet, find_sets
from dualstage.core import gating
from dualstage.core.io import write_csv_atomic
from dualstage.core.metrics import summarize_counts
from dualstage.core.progress import progress as progress_iter
from dualstage.core.tolerance import TOL, tied_mask
from dualstage.data.annotations import TruthFn, truth_from_rle_csv

__all__ = [
    "run_sweep",
    "find_sets",
    "selection_set",
    "lcc_sweep",
    "truth_from_rle_csv",
    "sweep_tables",
    "write_tables",
    "choose_rules",
    "score_rules",
    "best_rule",
    "make_grids",
    "grid_record",
    "COARSE",
    "GRID",
    "FINE",
    "MIN_AREAS",
]

COARSE = np.round(np.arange(1, 10) / 10, 2)  # the paper's Table 3 rows (reported, never chosen on)
GRID = np.round(np.arange(1, 50) * 0.02, 2)  # THE threshold grid of every tuned pixel rule
FINE = TOPS = BOTTOMS = GRID  # best threshold / threshold + area, triplet top, triplet bottom
MIN_AREAS = np.union1d(np.arange(0, 5001, 100), [250])  # 250: a row of the progressive Table 4
LCC_THRESHOLDS = np.round(np.arange(5, 96, 5) / 100, 2)
RULE_ORDER = ("threshold", "threshold_area", "triplet", "lcc")


def selection_set(pred_root: str | Path, select_on: str = "auto") -> str:
    """The set to choose operating points on: ``oof`` if it has truth, else ``val``; never ``test``."""
    if select_on == "test":
        raise ValueError(
            "refusing to choose operating points on the test set: choose on oof or val, report on test"
        )
    sets = find_sets(pred_root)
    found = ", ".join(f"{k} ({v} with truth)" for k, v in sets.items()) or "no prediction sets"
    if select_on == "auto":
        for name in ("oof", "val"):
            if sets.get(name, 0) > 0:
                return name
        raise ValueError(f"{pred_root}: need oof/ or val/ with histograms.npz to choose on; found {found}")
    if sets.get(select_on, 0) == 0:
        raise ValueError(f"{pred_root}: selection set {select_on!r} has no images with truth; found {found}")
    return select_on


def _check_index(set_dir: Path, hist: gating.Histograms, selecting: bool) -> None:
    """index.csv (when present) must list exactly the histogram images as has_truth, and no test rows."""
    path = set_dir / "index.csv"
    if not path.is_file():
        return
    index = pd.read_csv(path, dtype={"image_id": str}, keep_default_na=False)
    if selecting and "split" in index and (index["split"].astype(str) == "test").any():
        raise ValueError(f"{path}: selection set holds test-split images; refusing to choose on test data")
    if "has_truth" in index:
        truth_ids = set(index.loc[index["has_truth"].astype(int) == 1, "image_id"])
        if truth_ids != set(hist.image_id.tolist()):
            raise ValueError(
                f"{path}: has_truth images differ from {set_dir / 'histograms.npz'} (stale files?)"
            )


def lcc_sweep(
    set_dir: str | Path, hist: gating.Histograms, thresholds, truth: TruthFn, progress: bool = True
):
    """Threshold + largest-component metrics (T,), streaming one map at a time from ``maps/``."""
    pset = PredictionSet(set_dir)
    lv = gating.levels(np.atleast_1d(thresholds))
    order = np.argsort(lv, kind="stable")
    inter = np.zeros((lv.size, len(hist.image_id)), dtype=np.int64)
    area = np.zeros_like(inter)
    for i, image_id in enumerate(
        progress_iter(hist.image_id, desc=f"lcc {Path(set_dir).name}", enabled=progress)
    ):
        path = pset.map_path(image_id)
        q = pset.read_map(image_id)
        true = np.asarray(truth(image_id, int(hist.height[i]), int(hist.width[i]))) > 0
        if q.shape != true.shape or q.shape != (hist.height[i], hist.width[i]) or q.dtype != np.uint8:
            raise ValueError(
                f"{path}: {q.dtype} {q.shape} map, expected uint8 {(hist.height[i], hist.width[i])}"
            )
        if np.count_nonzero(true) != hist.hist[i, 1].sum():
            raise ValueError(f"{path}: truth area disagrees with histograms.npz for {image_id}")
        live = q >= lv.min()
        rows, cols = np.flatnonzero(live.any(axis=1)), np.flatnonzero(live.any(axis=0))
        if rows.size == 0:
            continue
        crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))  # components never leave it
        qc, tc = q[crop], true[crop]
        for j in order:
            mask = qc >= lv[j]
            if not mask.any():
                break  # higher levels are empty too
            comp = gating.largest_component(mask)
            inter[j, i], area[j, i] = np.count_nonzero(comp & tc), np.count_nonzero(comp)
    return summarize_counts(inter, area, hist.hist[:, 1].sum(axis=1), hist.height * hist.width)


def _frame(params: dict, res: dict) -> pd.DataFrame:
    return pd.DataFrame({**params, **{k: np.ravel(v) for k, v in res.items()}})


def _best(table: pd.DataFrame, keys: list[str], ascending: list[bool]) -> pd.Series:
    """Row with the highest mean Dice; ties (within TOL) broken by ``keys`` in order."""
    top = table[tied_mask(table["mean_dice"].to_numpy())]
    return top.sort_values(keys, ascending=ascending, kind="mergesort").iloc[0]


def _clean(value):
    """JSON-friendly scalar: NaN -> None, floats rounded to 1e-10, numpy ints -> int."""
    if isinstance(value, float | np.floating):
        return None if np.isnan(value) else round(float(value), 10)
    return int(value) if isinstance(value, np.integer) else value


def _area(row) -> int | float:
    a = float(row["min_area"])
    return int(a) if a.is_integer() else a


def _metrics(row, names) -> dict:
    return {k: _clean(row[k]) for k in names}


def _describe(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    d = np.diff(v)
    if v.size >= 3 and np.allclose(d, d[0]):
        return {
            "start": _clean(v[0]),
            "stop": _clean(v[-1]),
            "step": round(float(d[0]), 10),
            "n": int(v.size),
        }
    return {"values": [_clean(x) for x in v]}


def sweep_tables(
    hist: gating.Histograms,
    grids: dict,
    lcc_truth: TruthFn | None = None,
    set_dir: Path | None = None,
    progress: bool = False,
) -> dict[str, pd.DataFrame]:
    """Every rule's metrics over its grid on one set of histograms (N images): {table name: frame}.

    ``lcc_truth`` (with ``set_dir``, whose maps the component filter needs) adds ``lcc_thresholds``.
    """
    h, H, W = hist.hist, hist.height, hist.width
    tables = {
        "table3_thresholds": _frame(
            {"threshold": grids["coarse"]}, gating.sweep_threshold(h, grids["coarse"])
        ),
        "thresholds_fine": _frame({"threshold": grids["fine"]}, gating.sweep_threshold(h, grids["fine"])),
    }
    t, a = np.meshgrid(grids["fine"], grids["min_areas"], indexing="ij")
    res = gating.sweep_threshold_area(h, H, W, grids["fine"], grids["min_areas"])
    tables["table4_threshold_area"] = _frame({"threshold": t.ravel(), "min_area": a.ravel()}, res)
    tables["triplet"] = gating.sweep_triplet(h, H, W, grids["tops"], grids["min_areas"], grids["bottoms"])
    if lcc_truth is not None:
        res = lcc_sweep(set_dir, hist, grids["lcc"], lcc_truth, progress)
        tables["lcc_thresholds"] = _frame({"threshold": grids["lcc"]}, res)
    return tables


def write_tables(tables: dict[str, pd.DataFrame], out: Path) -> None:
    """Each table as ``<out>/<name>.csv``."""
    for name, frame in tables.items():
        write_csv_atomic(frame, out / f"{name}.csv")


def _sweep_set(
    set_dir: Path, out: Path, grids: dict, lcc_truth: TruthFn | None, progress: bool, selecting: bool
):
    """Write one set's tables; returns (histograms, {table name: frame})."""
    hist = gating.load_histograms(set_dir)
    _check_index(set_dir, hist, selecting)
    tables = sweep_tables(hist, grids, lcc_truth, set_dir, progress)
    write_tables(tables, out)
    return hist, tables


def choose_rules(tables: dict, default_threshold: float) -> dict[str, dict]:
    """{name: rule}: the default point (``train.val_threshold``) and the best point of every rule."""
    return {"default": default_rule(default_threshold), **_choose(tables)}


def score_rules(rules: dict, hist: gating.Histograms, tables: dict) -> dict[str, dict]:
    """{rule name: metrics} of every rule on one set (lcc rules looked up in that set's tables)."""
    metric_names = [c for c in tables["thresholds_fine"].columns if c != "threshold"]
    return {k: _metrics(_score(r, hist, tables), metric_names) for k, r in rules.items()}


def best_rule(scored: dict[str, dict]) -> str:
    """The rule with the highest mean Dice; ties go to the simpler rule (RULE_ORDER)."""
    dice = {k: scored[k]["mean_dice"] for k in RULE_ORDER if k in scored}
    return next(k for k, v in dice.items() if v >= max(dice.values()) - TOL)


def make_grids(
    thresholds_coarse: Sequence[float] = COARSE,
    thresholds: Sequence[float] = GRID,
    min_areas: Sequence[float] = MIN_AREAS,
    lcc_thresholds: Sequence[float] = LCC_THRESHOLDS,
) -> dict[str, np.ndarray]:
    """The searched grids as float arrays; ``thresholds`` is the one grid of every tuned pixel rule
    (``fine``, ``tops`` and ``bottoms`` are that same array)."""
    grid = np.asarray(thresholds, dtype=np.float64)
    values = {
        "coarse": thresholds_coarse,
        "fine": grid,
        "min_areas": min_areas,
        "tops": grid,
        "bottoms": grid,
        "lcc": lcc_thresholds,
    }
    return {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}


def _choose(tables: dict) -> dict:
    """Best operating point per rule (no metrics) on the selection set's tables."""
    chosen = {}
    r = _best(tables["thresholds_fine"], ["threshold"], [True])
    chosen["threshold"] = {"rule": "threshold", "threshold": _clean(r["threshold"])}
    r = _best(tables["table4_threshold_area"], ["min_area", "threshold"], [True, True])
    chosen["threshold_area"] = {
        "rule": "threshold_area",
        "threshold": _clean(r["threshold"]),
        "min_area": _area(r),
    }
    trip = tables["triplet"].assign(gap=lambda f: (f["top"] - f["bottom"]).round(9))
    r = _best(trip, ["gap", "min_area", "top"], [True, True, True])
    chosen["triplet"] = {
        "rule": "triplet",
        "top": _clean(r["top"]),
        "min_area": _area(r),
        "bottom": _clean(r["bottom"]),
    }
    if "lcc_thresholds" in tables:
        r = _best(tables["lcc_thresholds"], ["threshold"], [True])
        chosen["lcc"] = {"rule": "threshold", "threshold": _clean(r["threshold"]), "lcc": True}
    return chosen


def _score(rule: dict, hist: gating.Histograms, tables: dict) -> dict:
    """Metrics of one chosen rule on one set (histograms; lcc: looked up in that set's lcc table)."""
    if rule.get("lcc"):
        lcc = tables["lcc_thresholds"]
        row = lcc[np.isclose(lcc["threshold"], rule["threshold"])].iloc[0]
        return {k: row[k] for k in lcc.columns if k != "threshold"}
    return summarize_counts(*gating.rule_counts(hist.hist, hist.height, hist.width, rule))


def _score_all(rules: dict, hist: gating.Histograms, tables: dict, out: Path) -> dict:
    """{rule name: metrics} of every chosen rule on one set; writes that set's chosen.csv."""
    metric_names = [c for c in tables["thresholds_fine"].columns if c != "threshold"]
    scored = score_rules(rules, hist, tables)
    rows = [{"name": k, **r, **scored[k]} for k, r in rules.items()]
    columns = ["name", "rule", "threshold", "min_area", "top", "bottom", "lcc", *metric_names]
    write_csv_atomic(pd.DataFrame(rows).reindex(columns=columns), out / "chosen.csv")
    return scored


def grid_record(grids: dict, lcc: bool) -> dict:
    """The searched grids and conventions, recorded beside the chosen points."""
    return {
        "thresholds_coarse": _describe(grids["coarse"]),
        "thresholds": _describe(grids["fine"]),
        "thresholds_used_by": "best threshold, threshold + min area, triplet top and bottom (one grid: "
        "threshold + area = the triplet's top == bottom rows, best threshold = their min_area 0 rows)",
        "min_areas": _describe(grids["min_areas"]),
        "triplet": {
            "tops": _describe(grids["tops"]),
            "bottoms": _describe(grids["bottoms"]),
            "keep": "bottom <= top",
        },
        **({"lcc_thresholds": _describe(grids["lcc"])} if lcc else {}),
        "pixel_rule": "positive iff q >= floor(t * 255) + 1, q = round(p * 255)",
        "min_area_unit": "pixels at 1024x1024: area * 1024^2 / (H * W)",
        "tie_break": "smaller top - bottom (triplet), then smaller min_area, then lower threshold; rules in "
        "order " + " < ".join(RULE_ORDER),
    }


def run_sweep(
    pred_root: str | Path,
    out_dir: str | Path,
    select_on: str = "auto",
    report_on: Sequence[str] = ("test",),
    thresholds_coarse: Sequence[float] = COARSE,
    thresholds: Sequence[float] = GRID,
    min_areas: Sequence[float] = MIN_AREAS,
    lcc: bool = False,
    lcc_thresholds: Sequence[float] = LCC_THRESHOLDS,
    truth: str | Path | TruthFn | None = None,
    progress: bool = True,
    *,
    default_threshold: float,
) -> dict:
    """Sweep the selection set and the report sets, write tables + ``operating_point.json``.

    ``default_threshold``: ``train.val_threshold``, the "no gate" rule (no silent default).
    ``truth`` (needed by ``lcc=True`` only): prepare's ``masks.csv`` (challenge RLE on each image's
    grid) or a callable ``(image_id, height, width) -> mask``. Report sets that are missing or have
    no truth are skipped (listed under ``skipped``). Returns a summary dict.
    """
    start = time.perf_counter()
    root, out = Path(pred_root), Path(out_dir)
    chosen_set = selection_set(root, select_on)
    available = find_sets(root)
    report = [s for s in dict.fromkeys(report_on) if s != chosen_set and available.get(s, 0) > 0]
    skipped = [s for s in dict.fromkeys(report_on) if s != chosen_set and s not in report]
    if lcc and truth is None:
        raise ValueError("lcc=True needs truth masks: pass truth=<prepared>/masks.csv or a loader function")
    truth_fn = (truth if callable(truth) else truth_from_rle_csv(truth)) if lcc else None
    grids = make_grids(thresholds_coarse, thresholds, min_areas, lcc_thresholds)
    summary = {"chosen_on": chosen_set, "report": {}, "skipped": skipped}
    rules: dict = {}
    op = None
    for name in progress_iter([chosen_set, *report], desc="sweep sets", enabled=progress):
        hist, tables = _sweep_set(
            root / name, out / "sweep" / name, grids, truth_fn, progress, name == chosen_set
        )
        if op is None:  # the selection set comes first
            rules = choose_rules(tables, default_threshold)
        scored = _score_all(rules, hist, tables, out / "sweep" / name)
        if op is None:
            best = best_rule(scored)
            op = OperatingPoints(name, len(hist.image_id), best, rules, scored, grid_record(grids, lcc))
        summary["report"][name] = {k: m["mean_dice"] for k, m in scored.items()}
    op.write(Path(out_dir) / "operating_point.json")
    summary.update(
        n_images=op.n_images,
        best_rule=op.best_rule,
        operating_points=op.rules,
        seconds=round(time.perf_counter() - start, 3),
    )
    return summary
