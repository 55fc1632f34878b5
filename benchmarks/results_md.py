"""Turn ``benchmarks/results.json`` into ``benchmarks/RESULTS.md``: machine, date and one table row per claim.

Run by ``make bench`` after every ``benchmarks/bench_*.py``; or
``.venv/bin/python benchmarks/results_md.py [results.json] [RESULTS.md]``.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

from _results import load, machine, results_path


def render(results: dict, info: dict, date: str) -> str:
    """The Markdown page: a machine line, the date, then claim | measured | target | unit | met? | date."""
    lines = [
        "# Benchmark results",
        "",
        f"Written {date} by `make bench` (benchmarks/results_md.py from benchmarks/results.json).",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} with {info['torch_threads']} "
        f"threads, native CPU bf16: {'yes' if info.get('cpu_bf16') else 'no'}, xgboost "
        f"{info.get('xgboost') or 'not installed'}, Python {info['python']}.",
        "",
        "Ratios are bare time / real time measured side by side in one run (1.0 = no overhead); the",
        "machine is shared, so compare ratios, not absolute times. Details (sizes, seconds) are in",
        "results.json beside each claim.",
        "",
        "| claim | measured | target | unit | met? | measured on |",
        "|---|---|---|---|---|---|",
    ]
    for claim, entry in sorted(results.items()):
        target = f"{entry.get('op', '>=')} {entry.get('target')}"
        met = "yes" if entry.get("met") else "**no**"
        lines.append(
            f"| {claim} | {entry.get('measured')} | {target} | {entry.get('unit', '')} | {met} | "
            f"{entry.get('date', '')} |"
        )
    notes = {c: e["note"] for c, e in sorted(results.items()) if e.get("note")}
    if notes:
        lines += ["", "## Notes", ""] + [f"- **{c}**: {n}" for c, n in notes.items()]
    for run in sorted(Path(__file__).parent.glob("gpu_check_*.json")):
        lines += gpu_section(run)
    return "\n".join(lines) + "\n"


def gpu_section(path: Path) -> list[str]:
    """A table of one GPU check's figures (``benchmarks/gpu_check.sh``'s $OUT/gpu_check.json, kept as
    ``benchmarks/gpu_check_<gpu>.json``)."""
    if not path.is_file():
        return []
    run = json.loads(path.read_text())
    lines = [
        "",
        f"## GPU check: {run.get('gpu', run.get('device'))} ({path.name})",
        "",
        f"torch {run.get('torch')}, CUDA {run.get('cuda')}, {run.get('cpus')} CPU cores; "
        f"`benchmarks/gpu_check.sh`, {run.get('seconds')} s in all.",
        "",
        "| figure | measured | unit |",
        "|---|---|---|",
    ]
    for name, c in run.get("claims", {}).items():
        lines.append(f"| {name} | {c.get('measured')} | {c.get('unit', '')} |")
    return lines


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else results_path()
    dst = Path(sys.argv[2]) if len(sys.argv) > 2 else src.with_name("RESULTS.md")
    text = render(load(src), machine(), dt.datetime.now().astimezone().isoformat(timespec="seconds"))
    dst.write_text(text)
    print(f"{dst}: {len(load(src))} claims")


if __name__ == "__main__":
    main()
