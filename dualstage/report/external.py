"""The report's external-validation section: does each gate's operating point travel to another site?

Reads ``external/<set>/counts.csv`` and ``external.json``
(:mod:`dualstage.artifacts.external_counts`; written by ``python -m dualstage external``) and
compares, on the external studies:

* **frozen**: every gate exactly as chosen on the source (the deployed pipeline);
* **re-chosen**: the same gate with its operating point chosen on the external set itself,
  cross-fitted over that set's own patient-grouped folds;
* **gap** = frozen minus re-chosen mean Dice, a paired bootstrap interval (one index matrix shared
  by both variants and every gate, as in :mod:`dualstage.report.compare`).

A gate *travels* when its gap interval is not below 0 (frozen is not clearly worse than what the
site would choose for itself); it *does not travel* when the whole interval is below 0.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from dualstage.artifacts.external_counts import gate_columns, read_counts, read_record
from dualstage.artifacts.gates import GATES, SUMMARY_NAMES, gate_name
from dualstage.artifacts.layout import ExperimentDir
from dualstage.report.compare import (
    Gate,
    bootstrap_indices,
    compare_counts,
    describe_rule,
    gate_table,
    interval,
    resampled_metrics,
)
from dualstage.report.document import Note, Paragraph, Section, Table
from dualstage.report.summary import gates_block

__all__ = [
    "external_comparison",
    "external_summary",
    "external_section",
    "external_sections",
    "travel_verdict",
    "transfer_frame",
]

KEYS = ("mean_dice", "pos_dice", "neg_dice", "pos_accuracy")


def _rule_text(record: dict, variant: str, key: str) -> str:
    """The rules of one gate in words: per pipeline (frozen) or per external fold and pipeline."""
    spec = next(g for g in GATES if g.key == key)
    sets = (
        record["frozen"]
        if variant == "frozen"
        else {f"ext fold {j} {p}": c for j, per in record["rechosen"].items() for p, c in per.items()}
    )
    parts = []
    for where, c in sets.items():
        text = describe_rule(c["rules"][key])
        if spec.classifier:
            text += f"; classifier p >= {c['thresholds'][key]:g}"
        parts.append(f"{where}: {text}")
    return "; ".join(parts)


def _gates(counts: pd.DataFrame, record: dict, variant: str) -> list[Gate]:
    """The scored gates of one variant as :class:`Gate` rows (identity by mask digest)."""
    out = []
    for key in record["gates"]:
        spec = next(g for g in GATES if g.key == key)
        cols = gate_columns(counts, variant, key)
        first = next(iter(record["frozen"].values()))["rules"][key]
        params = {"mask_digest": cols["digest"]}
        out.append(
            Gate(
                key,
                gate_name(spec, first),
                _rule_text(record, variant, key),
                params,
                cols["inter"],
                cols["area"],
                cols["decision"] if spec.classifier else None,
            )
        )
    return out


def _gap(frozen: list[Gate], rechosen: list[Gate], true_area, resamples: int, seed: int) -> dict:
    """{gate: {value, lo, hi, share_above_zero}} of frozen minus re-chosen mean Dice (paired)."""
    idx = bootstrap_indices(np.asarray(true_area).size, resamples, seed)
    out = {}
    for f, r in zip(frozen, rechosen, strict=True):
        bf = resampled_metrics(f.inter, f.pred_area, true_area, idx)["mean_dice"]
        br = resampled_metrics(r.inter, r.pred_area, true_area, idx)["mean_dice"]
        pf = resampled_metrics(f.inter, f.pred_area, true_area, np.arange(true_area.size)[None])["mean_dice"]
        pr = resampled_metrics(r.inter, r.pred_area, true_area, np.arange(true_area.size)[None])["mean_dice"]
        lo, hi = interval(bf - br)
        out[f.key] = {
            "value": float(pf[0] - pr[0]),
            "lo": lo,
            "hi": hi,
            "share_above_zero": float(np.mean(bf - br > 0)),
        }
    return out


def travel_verdict(gap: dict) -> str:
    """ "travels" (the gap interval is not below 0) or "does not travel" (entirely below 0)."""
    if gap["hi"] < 0:
        return "does not travel"
    if gap["lo"] > 0:
        return "travels (frozen ahead)"
    return "travels (not separated)" if gap["value"] != 0 or gap["hi"] != 0 else "travels (same masks)"


def external_comparison(exp_dir, name: str, resamples: int = 2000, seed: int = 0) -> dict:
    """{record, frozen: compare_counts result, rechosen: ..., gap: {gate: ...}} of one external set."""
    exp = ExperimentDir(exp_dir)
    counts, record = read_counts(exp, name), read_record(exp, name)
    ids = counts["image_id"].to_numpy(dtype=str)
    true_area, n_pix = counts["true_area"].to_numpy(np.int64), counts["n_pixels"].to_numpy(np.int64)
    folds = counts["fold"].to_numpy(np.int64)
    skipped = record.get("skipped", {})
    frozen, rechosen = _gates(counts, record, "frozen"), _gates(counts, record, "rechosen")
    cmp = {}
    for variant, gates, fold in (("frozen", frozen, None), ("rechosen", rechosen, folds)):
        table = gate_table(
            ids,
            true_area,
            n_pix,
            gates,
            skipped,
            f"{variant} ({name})",
            record["pipelines"],
            fold=fold,
            pred_set=name,
        )
        cmp[variant] = compare_counts(table, resamples, seed, split=f"external {variant}")
    return {"record": record, **cmp, "gap": _gap(frozen, rechosen, true_area, resamples, seed)}


def _source_gates(source_summary: dict | None) -> dict:
    return (source_summary or {}).get("gates", {})


def external_summary(ext: dict, source_summary: dict | None = None) -> dict:
    """summary.json's ``external.<set>`` entry: per gate source / frozen / re-chosen / gap [v, lo, hi]."""
    rec, fz, rc = ext["record"], ext["frozen"], ext["rechosen"]
    frozen_b, re_b, source = gates_block(fz), gates_block(rc), _source_gates(source_summary)
    gates = {}
    for key in rec["gates"]:
        s, g = SUMMARY_NAMES.get(key, key), ext["gap"][key]
        gates[s] = {
            "source": (source.get(s) or {}).get("mean_dice"),
            "frozen": frozen_b[s]["mean_dice"],
            "rechosen": re_b[s]["mean_dice"],
            "gap": [g["value"], g["lo"], g["hi"]],
            "travels": travel_verdict(g),
            **{f"frozen_{m}": frozen_b[s][m] for m in KEYS[1:]},
        }
    return {
        "set": rec["set"],
        "n_studies": fz["n"],
        "n_positive": fz["n_pos"],
        "resamples": fz["resamples"],
        "deployed": rec["deployed"],
        "area": {k: rec["area"][k] for k in ("mode", "text", "factor")},
        "external_folds": len(rec["external_folds"]),
        "left_out_no_features": rec["left_out_no_features"],
        "overlap_with_source": rec.get("overlap_with_source", {}),
        "gates": gates,
        "best_frozen": SUMMARY_NAMES.get(fz["best"], fz["best"]),
        "best_rechosen": SUMMARY_NAMES.get(rc["best"], rc["best"]),
        "outcomes_frozen": [[SUMMARY_NAMES.get(k, k) for k in grp] for grp in fz["outcomes"]],
        "skipped": rec.get("skipped", {}),
    }


def _ci(v) -> str:
    if v is None or any(x is None or (isinstance(x, float) and np.isnan(x)) for x in v):
        return "-"
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def transfer_frame(summary: dict, labels: dict[str, str]) -> pd.DataFrame:
    """The transfer table: gate, source, frozen, re-chosen, gap, verdict (display text)."""
    rows = []
    for s, g in summary["gates"].items():
        gap = g["gap"]
        gap_text = "-" if gap[0] is None else f"{gap[0]:+.3f} [{gap[1]:+.3f}, {gap[2]:+.3f}]"
        rows.append(
            {
                "Gate": labels.get(s, s),
                "Source (cross-fitted)": _ci(g["source"]),
                "Frozen": _ci(g["frozen"]),
                "Re-chosen on the site": _ci(g["rechosen"]),
                "Gap frozen − re-chosen": gap_text,
                "Verdict": g["travels"],
            }
        )
    return pd.DataFrame(rows)


def external_section(ext: dict, summary: dict) -> Section:
    """The report section of one external set (markdown and html from the same blocks)."""
    rec = ext["record"]
    labels = {SUMMARY_NAMES.get(g.key, g.key): g.label for g in GATES}
    sec = Section(f"External validation: {rec['set']} (does the operating point travel?)")
    travel = [labels.get(k, k) for k, g in summary["gates"].items() if not g["travels"].startswith("does")]
    stay = [labels.get(k, k) for k, g in summary["gates"].items() if g["travels"].startswith("does")]
    where = f"{summary['n_studies']} external studies ({summary['n_positive']} positive)"
    lead = (
        f"{where} through the deployed pipeline ({rec['deployed']}). Travel (gap interval not below 0): "
        f"{', '.join(travel) or 'none'}; do not travel: {', '.join(stay) or 'none'}."
    )
    how = (
        "Frozen: every rule, minimum area, classifier and gate threshold exactly as chosen on the "
        f"source. Re-chosen: {rec['rechosen_how']}, cross-fitted over the set's own "
        f"{len(rec['external_folds'])} patient-grouped folds, so no study is scored by a choice made on "
        f"it. Gap: frozen minus re-chosen mean Dice, paired bootstrap ({summary['resamples']} resamples) "
        "over the same studies."
    )
    sec.blocks += [Paragraph(lead, "lead"), Paragraph(how)]
    sec.blocks.append(Paragraph(f"Areas: {rec['area']['text']}."))
    sec.blocks.append(
        Table(
            f"external_{rec['set']}",
            "Mean Dice [95 % bootstrap interval] per gate",
            transfer_frame(summary, labels),
            None,
            "Source: the main cross-fitted comparison on the source studies (other studies, "
            "unpaired); it says how much the site costs before any re-choosing.",
        )
    )
    for key, cmp in (("frozen", ext["frozen"]), ("rechosen", ext["rechosen"])):
        frame = pd.DataFrame(
            {
                "Gate": [g["name"] for g in cmp["gates"].values()],
                "Operating point": [g["rule"] for g in cmp["gates"].values()],
            }
        )
        sec.blocks.append(
            Table(f"external_{rec['set']}_{key}_rules", f"Operating points applied ({key})", frame)
        )
    if rec.get("left_out_no_features"):
        sec.blocks.append(Note(f"{rec['left_out_no_features']} studies had no features and were left out"))
    sec.blocks += [Note(f"{k}: {v}") for k, v in rec.get("skipped", {}).items()]
    return sec


def external_sections(exp_dir, source_cmp: dict | None, resamples: int = 2000, seed: int = 0):
    """([one section per external set], {set: its summary.json entry}) of every scored external set."""
    sections, summaries = [], {}
    source = {"gates": gates_block(source_cmp)} if source_cmp else None
    for name in ExperimentDir(exp_dir).external_sets():
        ext = external_comparison(exp_dir, name, resamples, seed)
        summaries[name] = external_summary(ext, source)
        sections.append(external_section(ext, summaries[name]))
    return sections, summaries
