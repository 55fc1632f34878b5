"""The README's demo figures, rendered from a run's ``summary.json``; the demo's reference summary.

Figures in the README that describe a run are never typed: they sit between markers
``<!-- begin: NAME ... -->`` / ``<!-- end: NAME -->`` and are rendered here from the run's
``report/summary.json``. The demo's summary is committed as ``docs/demo_summary.json`` (the
reference); ``make demo`` ends by comparing its fresh summary with it, and a test renders the README
block from it, so a change that moves the answer is seen the day it is made.

    python -m dualstage.report.readme render  [--summary S] [--readme R]   rewrite the block(s)
    python -m dualstage.report.readme check   [--summary S] [--readme R]   exit 1 when they differ
    python -m dualstage.report.readme compare FRESH [--reference S]        which gates moved, by how much
    python -m dualstage.report.readme accept  FRESH [--reference S] [--readme R]
                                           FRESH becomes the reference and the README is re-rendered

``--block demo-external`` does the same for the demo's external-site table: its reference
``docs/demo_external_summary.json`` is the ``external.site_b`` entry of a run's summary.json
(``make demo-external``; :func:`dualstage.report.external.external_summary`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from dualstage.core.cli import run_cli
from dualstage.core.io import atomic_write_text, write_json_atomic
from dualstage.report.document import markdown_table
from dualstage.report.external import transfer_frame

__all__ = [
    "BLOCK",
    "BLOCKS",
    "render_block",
    "render_external_block",
    "replace_block",
    "compare_summaries",
    "strip_dates",
    "main",
]

BLOCK = "demo-comparison"
REFERENCE = Path("docs/demo_summary.json")
EXTERNAL_BLOCK = "demo-external"
EXTERNAL_REFERENCE = Path("docs/demo_external_summary.json")
EXTERNAL_SET = "site_b"  # the demo's external set (make demo-external)
README = Path("README.md")
TOL = 1e-9  # a number moved when it differs by more than this
LABELS = {
    "no_gate": "no gate",
    "best_threshold": "best threshold",
    "threshold_area": "threshold + min area",
    "triplet": "triplet",
    "classifier": "classifier gate",
    "classifier_and_area": "classifier AND min area",
    "all_empty": "all empty (baseline)",
}
REF = "threshold_area"


def strip_dates(summary: dict) -> dict:
    """The summary without keys that change from run to run while the answer does not."""
    return {k: v for k, v in summary.items() if k not in ("generated", "dates", "provenance", "external")}


def _ci(v: list, signed: bool = False) -> str:
    """``value [low, high]`` at 3 decimals (4 when every figure is below 0.005 but one is not 0)."""
    if v is None or any(x is None for x in v):
        return "-"
    digits = 4 if all(abs(x) < 0.005 for x in v) and any(x != 0 for x in v) else 3
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    if v is None or any(x is None or (isinstance(x, float) and math.isnan(x)) for x in v):
        return "-"
    return f"{f.format(v[0])} [{f.format(v[1])}, {f.format(v[2])}]"


def _table(s: dict) -> list[str]:
    rows = [
        "| Gate | mean Dice | Δ vs threshold + min area | positive-case Dice | negative-case Dice |",
        "| --- | --- | --- | --- | --- |",
    ]
    for key, g in s["gates"].items():
        rows.append(
            f"| {LABELS.get(key, key)} | {_ci(g['mean_dice'])} | {_ci(g['delta_vs_threshold_area'], True)} "
            f"| {_ci(g['pos_dice'])} | {_ci(g['neg_dice'])} |"
        )
    return rows


def _findings(s: dict) -> list[str]:
    """Which gates are separated from threshold + min area, which are not; outcomes; warnings."""
    g, lines = s["gates"], []
    above, below, level = [], [], []
    same_as_ref = next((grp for grp in s.get("outcomes", []) if REF in grp), [REF])
    for key, entry in g.items():
        d = entry.get("delta_vs_threshold_area")
        if key in same_as_ref or d is None or d[0] is None:
            continue
        text = f"{LABELS.get(key, key)} {_ci(d, True)}"
        (above if d[1] > 0 else below if d[2] < 0 else level).append(text)
    lines.append(
        "Against threshold + min area (paired 95 % intervals): "
        + "; ".join(
            part
            for part in (
                f"clearly better: {', '.join(above)}" if above else "",
                f"clearly worse: {', '.join(below)}" if below else "",
                f"not separated (interval includes 0): {', '.join(level)}" if level else "",
            )
            if part
        )
        + "."
    )
    for group in s.get("outcomes", []):
        if len(group) > 1:
            names = " = ".join(LABELS.get(k, k) for k in group)
            lines.append(f"Same masks on every study (one outcome): {names}.")
    for v in s.get("vacuous", []):
        where = f"fold {v['fold']}" if v.get("fold") is not None else "every study"
        lines.append(f"{LABELS.get(v['gate'], v['gate'])} {v['what']} in {where}.")
    warnings = s.get("warnings", [])
    lines.append("Fold models: " + ("; ".join(warnings) if warnings else "none collapsed") + ".")
    return lines


def render_block(s: dict) -> str:
    """The README block (Markdown) of one summary.json: the comparison table and what it shows."""
    n, pos = s["n_studies"], s["n_positive"]
    head = (
        f"Cross-fitted comparison over all {n} studies ({pos} positive), each scored by a pipeline that "
        f"never saw it; 95 % bootstrap intervals over studies, {s['resamples']} resamples, paired between "
        "gates:"
        if s["protocol"] == "crossfit"
        else f"Holdout comparison over {n} test studies ({pos} positive):"
    )
    per_fold = s.get("per_fold") or {}
    spread = ", ".join(
        f"{LABELS.get(k, k)} {v['sd']:.3f}" for k, v in per_fold.items() if v.get("sd") is not None
    )
    lines = [head, "", *_table(s), ""]
    lines += [f"- {x}" for x in _findings(s)]
    if spread:
        lines.append(f"- Standard deviation of mean Dice over the folds: {spread}.")
    return "\n".join(lines)


def render_external_block(s: dict) -> str:
    """The README block of one external set's summary entry: source, frozen, re-chosen, gap per gate."""
    head = (
        f"External site `{s['set']}`: {s['n_studies']} studies ({s['n_positive']} positive) through the "
        f"demo's deployed pipeline ({s['deployed']}); mean Dice with 95 % bootstrap intervals "
        f"({s['resamples']} resamples); the gap is paired over the same studies. Areas: {s['area']['text']}."
    )
    travel = [LABELS.get(k, k) for k, g in s["gates"].items() if not g["travels"].startswith("does")]
    stay = [LABELS.get(k, k) for k, g in s["gates"].items() if g["travels"].startswith("does")]
    lines = [head, "", markdown_table(transfer_frame(s, LABELS)), ""]
    lines.append(f"- Travel (gap interval not below 0): {', '.join(travel) or 'none'}.")
    lines.append(f"- Do not travel (re-chosen clearly better): {', '.join(stay) or 'none'}.")
    lines.append(
        f"- Best frozen gate: {LABELS.get(s['best_frozen'], s['best_frozen'])}; best re-chosen: "
        f"{LABELS.get(s['best_rechosen'], s['best_rechosen'])}."
    )
    return "\n".join(lines)


def _external_entry(summary: dict) -> dict:
    """The demo's external entry of a run's summary.json (or a reference file that is one already)."""
    if "gates" in summary and "set" in summary:
        return summary
    entry = (summary.get("external") or {}).get(EXTERNAL_SET)
    if entry is None:
        raise ValueError(f"no external.{EXTERNAL_SET} in the summary; run `make demo-external` first")
    return entry


# block name -> (reference file, render of a summary, the block's part of a run's summary.json)
BLOCKS = {
    BLOCK: (REFERENCE, render_block, strip_dates),
    EXTERNAL_BLOCK: (EXTERNAL_REFERENCE, render_external_block, _external_entry),
}


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the lines between the ``name`` markers replaced by ``content``; ValueError when
    the markers are missing."""
    tag = re.escape(name)
    pattern = re.compile(rf"(<!-- begin: {tag}[^\n]*-->\n)(.*?)(<!-- end: {tag} -->)", re.S)
    if not pattern.search(text):
        raise ValueError(f"no <!-- begin: {name} --> ... <!-- end: {name} --> markers")
    return pattern.sub(lambda m: m.group(1) + content.rstrip("\n") + "\n" + m.group(3), text, count=1)


def _numbers(obj, prefix: str = ""):
    """(path, number) of every number in a nested summary."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{prefix}[{i}]")
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        yield prefix, float(obj)


def compare_summaries(fresh: dict, reference: dict, tol: float = TOL) -> list[str]:
    """Lines naming every number (gate metric, per-fold figure, count) and every outcome, warning
    or key that differs between two summaries; empty when they agree within ``tol``."""
    a, b = dict(_numbers(strip_dates(fresh))), dict(_numbers(strip_dates(reference)))
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x is None or y is None:
            now, ref = ("missing" if v is None else v for v in (x, y))
            out.append(f"{key}: {now} now, reference {ref}")
        elif not (abs(x - y) <= tol or (math.isnan(x) and math.isnan(y))):
            out.append(f"{key}: {x:.4f} (reference {y:.4f}, moved {x - y:+.4f})")
    for key in ("outcomes", "warnings", "vacuous", "protocol"):
        if fresh.get(key) != reference.get(key):
            out.append(f"{key}: {fresh.get(key)} (reference {reference.get(key)})")
    return out


def _read(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read the summary ({exc})") from None


def _block(name: str):
    if name not in BLOCKS:
        raise ValueError(f"unknown README block {name!r}; valid blocks: {', '.join(BLOCKS)}")
    return BLOCKS[name]


def _render(summary: Path, readme: Path, block: str = BLOCK) -> str:
    _, render, part = _block(block)
    return replace_block(readme.read_text(), block, render(part(_read(summary))))


def _cmd(args: argparse.Namespace) -> int:
    reference, _, part = _block(args.block)
    if getattr(args, "summary", None) is None and args.cmd in ("render", "check"):
        args.summary = reference
    if getattr(args, "reference", None) is None and args.cmd in ("compare", "accept"):
        args.reference = reference
    if args.cmd == "render":
        atomic_write_text(args.readme, _render(args.summary, args.readme, args.block))
        print(f"{args.readme}: {args.block} rendered from {args.summary}")
    elif args.cmd == "check":
        if _render(args.summary, args.readme, args.block) != args.readme.read_text():
            print(f"{args.readme}: the {args.block} block differs from the render of {args.summary}")
            return 1
        print(f"{args.readme}: the {args.block} block equals the render of {args.summary}")
    elif args.cmd == "compare":
        moved = compare_summaries(part(_read(args.fresh)), part(_read(args.reference)))
        if not moved:
            print(f"{args.fresh}: same as the reference ({args.reference})")
        else:
            print(f"{args.fresh}: differs from the reference ({args.reference}) in {len(moved)} number(s):")
            print("\n".join(f"  {m}" for m in moved))
            print("  (`make demo-reference` accepts the new answer: reference + README in one commit)")
    else:  # accept
        write_json_atomic(args.reference, part(_read(args.fresh)))
        atomic_write_text(args.readme, _render(args.reference, args.readme, args.block))
        print(f"{args.reference} <- {args.fresh}; {args.readme} re-rendered")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dualstage.report.readme", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("render", "check", "compare", "accept"):
        s = sub.add_parser(name)
        if name in ("compare", "accept"):
            s.add_argument("fresh", type=Path, help="a run's report/summary.json")
            s.add_argument("--reference", type=Path, default=None, help="default: the block's reference")
        else:
            s.add_argument("--summary", type=Path, default=None, help="default: the block's reference")
        s.add_argument("--readme", type=Path, default=README)
        s.add_argument("--block", default=BLOCK, help=f"the README block: {' | '.join(BLOCKS)}")
    p.set_defaults(func=_cmd)
    return p


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
