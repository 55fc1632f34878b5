"""The comparison report: which gate wins under the challenge metric, by how much, how sure.

``build_report(exp_dir)`` reads a finished experiment folder and writes ``<exp>/report/``::

    report.md        tables in Markdown, figures linked
    report.html      self-contained (CSS inline, figures as data:image/png;base64 URIs)
    metrics.json     the comparison with 95 % bootstrap intervals, paired differences, baseline, provenance
    per_image.csv    per test image: true area, each gate's predicted area, Dice (and classifier decision)
    figures/*.png    Dice vs threshold, threshold x area heat map, classifier ROC / PR and probabilities,
                     training curves, gallery of disagreements
    evaluation/      the papers' stage-one tables, only when <exp>/evaluation/ lacks them

The primary comparison is cross-fitted over every study (each scored by a pipeline that never saw it);
with a main model, the papers' holdout view on the ``test`` split follows as a second, labelled view.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from dualstage.artifacts.gates import BASELINE
from dualstage.artifacts.layout import ExperimentDir
from dualstage.artifacts.operating_points import OperatingPoints
from dualstage.core.io import atomic_write_text, json_safe, write_csv_atomic, write_json_atomic
from dualstage.core.locks import holding
from dualstage.core.tolerance import GATE_TIE_RULE
from dualstage.report import figures as F
from dualstage.report.compare import compare, compare_counts
from dualstage.report.document import (
    Figure,
    Note,
    Paragraph,
    Section,
    Table,
    markdown_table,
    render_markdown,
)
from dualstage.report.external import external_sections
from dualstage.report.gallery import gallery as draw_gallery
from dualstage.report.html import render_html
from dualstage.report.partial import bad_rows, banner, guarded, partial_fields, stop_unless_partial
from dualstage.report.provenance import provenance, provenance_section
from dualstage.report.summary import summary_json, threshold_table
from dualstage.report.tables import comparison_display, comparison_frame, paper_tables, rules_method

__all__ = ["build_report", "compare"]


def _ci(d: dict, signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    return f"{f.format(d['value'])} [{f.format(d['lo'])}, {f.format(d['hi'])}]"


def _headline(cmp: dict) -> list:
    """The finding in words: best gate, margin over the next gate and over the all-empty baseline."""
    g, best = cmp["gates"], cmp["best"]
    if best is None:
        return [Note("no gate could be scored")]
    md = g[best]["metrics"]["mean_dice"]
    names = ", ".join(f"\u201c{g[k]['name']}\u201d" for k in cmp["tied"])
    lead = (
        f"the best distinct outcomes (tied) are {names}"
        if len(cmp["tied"]) > 1
        else f"the best distinct outcome is {names}"
    )
    where = (
        f"all {cmp['n']} studies ({cmp['n_pos']} positive), each scored by a pipeline that never saw it "
        f"(cross-fitted over {len(cmp['fold_model'])} folds)"
        if cmp["split"] == "crossfit"
        else f"{cmp['n']} held-out test studies ({cmp['n_pos']} positive)"
    )
    text = f"On {where}, under the challenge metric {lead}: mean Dice {_ci(md)} (95 % bootstrap interval)."
    w = cmp["winner"]
    if w:
        sure = "clearly ahead" if w["lo"] > 0 else "not clearly ahead: the interval includes 0"
        text += (
            f" Margin over the next gate \u201c{g[w['other']]['name']}\u201d: {_ci(w, True)} "
            f"(paired; ahead in {w['share_above_zero']:.0%} of {cmp['resamples']} resamples, {sure})."
        )
    b = cmp["baseline"]
    base = g[BASELINE.key]["metrics"]["mean_dice"]
    clear = "clear of it" if b["lo"] > 0 else "NOT clear of it"
    text += (
        f" All-empty baseline (share of negative studies): {_ci(base)}; best gate minus baseline "
        f"{_ci(b, True)}, {clear}."
    )
    return [Paragraph(text, "lead"), *_outcome_notes(cmp)]


def same_outcome_lines(cmp: dict) -> list[str]:
    """Gates with identical masks on every study, and folds where a gate does nothing, in words."""
    g, lines = cmp["gates"], []
    for group in cmp.get("outcomes", []):
        if len(group) > 1:
            n = cmp["same_masks"][f"{group[0]}|{group[1]}"][1]
            names = " = ".join(g[k]["name"] for k in group)
            lines.append(f"{names}: same masks on {n} / {n} studies (one outcome, ranked once)")
    for v in cmp.get("vacuous", []):
        where = f"fold {v['fold']}" if v["fold"] is not None else "every study"
        lines.append(f"{g[v['gate']]['name']} {v['what']} in {where}")
    return lines


def _outcome_notes(cmp: dict) -> list:
    lines = same_outcome_lines(cmp)
    if not lines:
        return []
    return [Paragraph("Identical and vacuous gates: " + "; ".join(lines) + ".")]


def _how(cmp: dict, op: OperatingPoints | None) -> str:
    if cmp["split"] == "crossfit":
        return (
            "Cross-fitted: for the studies of fold k, the segmenter is fold model k (never trained on "
            "fold k), "
            "every operating point is chosen on the other folds' out-of-fold maps "
            "(crossfit/fold_k/operating_point.json) and the classifier and its gate threshold are fitted on "
            "the other folds' out-of-fold features (crossfit/fold_k/classifier/): every rule is applied to "
            f"maps of the kind it was chosen on. {cmp['n']} studies, {cmp['n_pos']} positive, "
            f"{cmp['n_neg']} negative; folds {', '.join(cmp['fold_model'])}."
        )
    return (
        f"The papers' holdout view: operating points chosen on {cmp['chosen_on'] or '?'} "
        f"({op.n_images if op else '?'} images, operating_point.json); classifier and gate thresholds "
        "fitted on "
        f"val (classifier/). Scored on the test split only ({cmp['n']} studies, {cmp['n_pos']} positive, "
        f"{cmp['n_neg']} negative), maps from {', '.join(cmp['fold_model']) or '?'}."
    )


def _per_fold_table(cmp: dict) -> Table:
    rows = [
        {
            "Gate": cmp["gates"][k]["name"],
            "Mean Dice, mean over folds": f"{v['mean']:.3f}",
            "sd": f"{v['sd']:.3f}",
            "Folds": v["n_folds"],
            **{f"fold {f}": f"{x:.3f}" for f, x in v["folds"].items()},
        }
        for k, v in cmp["per_fold"].items()
    ]
    return Table(
        "per_fold",
        "Mean Dice per fold (each fold a test fold once): mean and sd over folds",
        pd.DataFrame(rows),
    )


def _comparison_section(
    exp: Path, cmp: dict | None, op: OperatingPoints | None, error: str | None, key: str = "comparison"
) -> Section:
    crossfit = cmp is not None and cmp["split"] == "crossfit"
    title = "Which gate wins (every study, cross-fitted)" if crossfit else "Which gate wins (test split)"
    if key == "holdout":
        title = "The papers' holdout view (test split)"
    sec = Section(title)
    if cmp is None:
        sec.blocks.append(Table(key, "Gate comparison", None, error))
        return sec
    sec.blocks += [Paragraph(w, "warning") for w in cmp.get("warnings", [])]
    sec.blocks += _headline(cmp)
    sec.blocks.append(Paragraph(_how(cmp, op)))
    if (method := rules_method(exp, cmp["split"])) is not None:
        sec.blocks.append(Paragraph(method))
    sec.blocks.append(Paragraph(GATE_TIE_RULE))
    display = comparison_display(cmp)
    order = list(cmp["gates"])
    classes = {order.index(cmp["best"]): "best"} if cmp["best"] else {}
    classes[order.index(BASELINE.key)] = "baseline"
    ref = cmp["gates"][cmp["reference"]]["name"] if cmp["reference"] else "-"
    sec.blocks.append(
        Table(
            key,
            f"Gate comparison ({cmp['split']}): value [95 % bootstrap interval], "
            f"{cmp['resamples']} resamples, seed {cmp['seed']}",
            display,
            None,
            "Mean Dice: challenge metric (empty vs empty = 1). Positive accuracy: share of positive "
            "studies with a non-empty mask (= recall). Precision / recall / F1 / specificity: image-level "
            "presence (non-empty final mask vs true pneumothorax). \u0394: paired bootstrap difference of "
            f"mean Dice from \u201c{ref}\u201d (the same resampled studies for every gate).",
            classes,
        )
    )
    if cmp.get("per_fold"):
        sec.blocks.append(_per_fold_table(cmp))
    sec.blocks += [Note(f"{name}: {why}") for name, why in cmp["skipped"].items()]
    return sec


def _comparisons(
    exp: Path, resamples: int, seed: int, allow_partial: bool, bad: list[str], gates: Callable | None
) -> tuple[dict | None, dict | None, str | None]:
    """(primary comparison, holdout view or None, why the primary is missing).

    The primary comparison is cross-fitted over every study when the experiment has it, else the
    holdout test split. A malformed input stops it (HandoffError), or with ``allow_partial`` is noted
    in ``bad`` and the view is left out.
    """
    cross, holdout, errors = None, None, []
    try:
        if gates is None:
            raise FileNotFoundError("no cross-fitted gate table was asked for")
        cross = guarded(
            lambda: compare_counts(gates(exp), resamples, seed, split="crossfit"), allow_partial, bad, None
        )
    except FileNotFoundError as exc:
        errors.append(f"cross-fitted view not run: {exc}")
    try:
        holdout = guarded(lambda: compare(exp, resamples, seed), allow_partial, bad, None)
    except FileNotFoundError as exc:
        errors.append(f"holdout view not run: {exc}")
    if bad and cross is None and holdout is None:
        errors.append("not computed: an input is bad (see the banner above)")
    if cross is None:
        return holdout, None, None if holdout else "; ".join(errors)
    return cross, holdout, None


def _write_summary(
    exp: Path, out: Path, cmp: dict | None, holdout: dict | None, bad: list[str], external: dict
) -> None:
    """report/summary.json (see :mod:`dualstage.report.summary`), with ``partial`` / ``bad_inputs``;
    ``external``: {set: its entry}."""
    if cmp is None:
        if bad:
            write_json_atomic(out / "summary.json", {**partial_fields(bad), "gates": None})
        return
    protocol = "crossfit" if cmp["split"] == "crossfit" else "holdout"
    table3 = (
        ExperimentDir(exp).sweep / ("oof" if protocol == "crossfit" else "test") / "table3_thresholds.csv"
    )
    thresholds = threshold_table(pd.read_csv(table3)) if table3.is_file() else None
    summary = summary_json(cmp, protocol, thresholds, holdout)
    write_json_atomic(out / "summary.json", {**partial_fields(bad), **summary, "external": external})


def _figures(exp: Path, op: OperatingPoints | None, figdir: Path) -> list[Figure]:
    """The report's figures (each drawn, or a Figure whose note says why not)."""
    return [
        F.dice_vs_threshold(exp, op, figdir),
        F.threshold_area_heatmap(exp, op, figdir),
        F.classifier_curves(exp, figdir),
        F.probability_by_class(exp, figdir),
        F.training_curves(exp, figdir),
    ]


def _notes(sections: list[Section]) -> list[str]:
    """What was not run or drawn, one line each (the notes of metrics.json and the command)."""
    blocks = [b for s in sections for b in s.blocks]
    notes = [
        f"{b.key}: {b.note}" for b in blocks if isinstance(b, Table | Figure) and b.note and "not" in b.note
    ]
    return notes + [b.text for b in blocks if isinstance(b, Note)]


def _write_metrics(out: Path, cmp: dict, holdout, error, tables, figs, notes, prov, bad: list[str]) -> None:
    """report/metrics.json: the comparison, the holdout view, what ran, notes, partial, provenance."""
    summary = {k: v for k, v in cmp.items() if k != "per_image"}
    record = {
        "comparison": summary or {"error": error},
        "holdout": {k: v for k, v in holdout.items() if k != "per_image"} if holdout else None,
        "tables": {t.key: {"caption": t.caption, "run": t.frame is not None, "note": t.note} for t in tables},
        "figures": {f.key: str(f.path.relative_to(out)) if f.path else f.note for f in figs},
        "notes": notes,
        **partial_fields(bad),
        "provenance": prov,
    }
    write_json_atomic(out / "metrics.json", json_safe(record))


def build_report(
    exp_dir: str | Path,
    out: str | Path | None = None,
    resamples: int = 2000,
    seed: int = 0,
    gallery: int = 8,
    allow_partial: bool = False,
    gates: Callable[[Path], dict] | None = None,
) -> dict:
    """Write the report of one experiment folder; returns its paths, the comparison and its text.

    ``gates``: the maker of the cross-fitted gate table from the folder (the commands pass
    :func:`dualstage.crossfit.compare.crossfit_gates`; the report reads, it runs no stage); None: the
    holdout view only.

    Returns {out, report_md, report_html, metrics_json, per_image_csv, figures (paths), table (numeric
    DataFrame, one row per gate), markdown (display table), summary_markdown (gate, mean / pos / neg Dice,
    difference), best (the best distinct outcome's gate name or None), notes (what was not run),
    warnings (collapsed fold models), outcomes (identical and vacuous gates in words), external,
    bad_inputs}. A malformed input stops it before anything is written (HandoffError naming the file
    and the field), or with ``allow_partial`` leaves those rows out under a banner
    (:mod:`dualstage.report.partial`).
    """
    exp = Path(exp_dir)
    if not exp.is_dir():
        raise FileNotFoundError(f"{exp}: experiment folder not found")
    out = Path(out) if out else exp / "report"
    bad: list[str] = []
    op = guarded(
        lambda: OperatingPoints.read_or_none(ExperimentDir(exp).operating_point), allow_partial, bad, None
    )
    cmp, holdout, error = _comparisons(exp, resamples, seed, allow_partial, bad, gates)
    bad = list(dict.fromkeys([*bad, *bad_rows(cmp, holdout)]))  # once each
    stop_unless_partial(bad, allow_partial)
    with holding(out, "report"):  # one report writer at a time
        return _write_report(exp, out, op, (cmp, holdout, error), (gallery, resamples, seed), bad)


def _write_report(exp: Path, out: Path, op, views: tuple, settings: tuple, bad: list[str]) -> dict:
    """Every file of report/ (see :func:`build_report`) from the comparisons ``views``;
    ``settings`` = (gallery size, bootstrap resamples, seed)."""
    cmp, holdout, error = views
    gallery, resamples, seed = settings
    figdir = out / "figures"
    tables, eval_notes = paper_tables(exp, out, op)
    figs = _figures(exp, op, figdir)
    gal = draw_gallery(exp, cmp, figdir, gallery) if cmp else Figure("gallery", "Gallery", None, error)
    prov = provenance(exp, cmp)
    ext_sections, ext_summary = external_sections(exp, cmp, resamples, seed)
    sections = [
        *([banner(bad)] if bad else []),
        _comparison_section(exp, cmp, op, error),
        *([_comparison_section(exp, holdout, op, None, key="holdout")] if holdout is not None else []),
        *ext_sections,
        Section("The papers' tables", [*tables, *(Note(n) for n in eval_notes)]),
        Section("Figures", figs),
        Section("Gallery: where the gates disagree", [gal]),
        provenance_section(prov),
    ]
    _write_summary(exp, out, cmp, holdout, bad, ext_summary)
    title = f"dualstage report: {exp.name}" + (" (PARTIAL: an input is bad)" if bad else "")
    atomic_write_text(out / "report.md", render_markdown(title, sections, out))
    atomic_write_text(out / "report.html", render_html(title, sections))
    table = comparison_frame(cmp) if cmp else pd.DataFrame()
    notes = _notes(sections)
    per_image = out / "per_image.csv"
    if cmp:
        write_csv_atomic(cmp["per_image"], per_image)
    _write_metrics(out, cmp or {}, holdout, error, tables, [*figs, gal], notes, prov, bad)
    return {
        "out": out,
        "report_md": out / "report.md",
        "report_html": out / "report.html",
        "metrics_json": out / "metrics.json",
        "per_image_csv": per_image if cmp else None,
        "figures": [f.path for f in [*figs, gal] if f.path],
        "table": table,
        "markdown": markdown_table(comparison_display(cmp)) if cmp else error,
        "summary_markdown": markdown_table(comparison_display(cmp, short=True)) if cmp else error,
        "best": cmp["gates"][cmp["best"]]["name"] if cmp and cmp["best"] else None,
        "split": cmp["split"] if cmp else None,
        "notes": notes,
        "warnings": list((cmp or {}).get("warnings", [])),
        "outcomes": same_outcome_lines(cmp) if cmp else [],
        "external": ext_summary,
        "bad_inputs": bad,
    }
