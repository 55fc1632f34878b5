"""The review page of a ``python -m dualstage predict`` output folder: one self-contained HTML file.

``review.html`` lists every study as a card (thumbnail, decision, classifier probability, mask
area, the warning), sorts by the classifier's probability (or the distance to the training data,
or the id), filters by decision and by warning, and opens a study large (its overlay and the full
reason) in a dialog. Styles and the small script are inline; images are files inside the output
folder (``thumbs/``, ``overlays/``), referenced by relative paths: no network, no server. Without
script, each thumbnail links to its overlay. Files that could not be read are listed at the end.
Reads ``decisions.csv`` and ``rejected.csv`` only.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import pandas as pd

from dualstage.core.io import atomic_write_text

__all__ = ["write_review_page", "PAGE_NAME"]

PAGE_NAME = "review.html"

CSS = """
body { font: 14px/1.4 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0;
       background: #f4f4f7; color: #1d1d1f; }
header { background: #1c1c22; color: #eee; padding: 14px 24px; }
header h1 { margin: 0 0 4px; font-size: 20px; } header p { margin: 2px 0; font-size: 13px; color: #bbb; }
#controls { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd; padding: 8px 24px;
            z-index: 2; display: flex; gap: 18px; align-items: center; flex-wrap: wrap; }
#studies { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr)); gap: 12px;
           padding: 16px 24px; }
.study { background: #fff; border: 1px solid #ddd; border-radius: 6px; overflow: hidden; }
.study.warned { border: 2px solid #b00020; }
.study img { width: 100%; display: block; background: #000; cursor: zoom-in; }
.study .meta { padding: 6px 8px; font-size: 13px; }
.study .id { font-family: monospace; font-size: 11px; color: #555; word-break: break-all; }
.badge { display: inline-block; padding: 1px 6px; border-radius: 3px; font-weight: 600; font-size: 12px; }
.present { background: #ffe2e2; color: #a00000; } .absent { background: #e6f4e6; color: #1d6b1d; }
.warn { background: #b00020; color: #fff; }
.reason { display: none; }
dialog { width: min(96vw, 1100px); max-height: 96vh; padding: 0; border: 0; border-radius: 6px; }
dialog img { width: 100%; display: block; } dialog .text { padding: 10px 14px; }
dialog button { float: right; margin: 8px; }
table { border-collapse: collapse; margin: 0 24px 24px; font-size: 12px; background: #fff; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: left; }
h2 { margin: 18px 24px 8px; font-size: 16px; }
"""

SCRIPT = """
const grid = document.getElementById('studies');
const cards = Array.from(grid.querySelectorAll('.study'));
const keys = {
  'probability-desc': c => -parseFloat(c.dataset.probability),
  'probability-asc': c => parseFloat(c.dataset.probability),
  'distance-desc': c => -parseFloat(c.dataset.distance || '0'),
  'id': c => c.dataset.id,
};
function update() {
  const key = keys[document.getElementById('sort').value];
  const dec = document.getElementById('decision').value;
  const warn = document.getElementById('warning').value;
  cards.sort((a, b) => { const x = key(a), y = key(b); return x < y ? -1 : x > y ? 1 : 0; });
  let shown = 0;
  for (const c of cards) {
    const ok = (dec === 'all' || c.dataset.decision === dec)
      && (warn === 'all' || c.dataset.warning === warn);
    c.hidden = !ok; shown += ok; grid.appendChild(c);
  }
  document.getElementById('shown').textContent = shown;
}
const dialog = document.getElementById('viewer');
for (const c of cards) {
  c.querySelector('a.open').addEventListener('click', e => {
    e.preventDefault();
    dialog.querySelector('img').src = c.querySelector('a.open').getAttribute('href');
    dialog.querySelector('.text').innerHTML = c.querySelector('.meta').innerHTML
      + '<p>' + c.querySelector('.reason').innerHTML + '</p>';
    dialog.showModal();
  });
}
dialog.addEventListener('click', e => { if (e.target === dialog) dialog.close(); });
for (const id of ['sort', 'decision', 'warning']) {
  document.getElementById(id).addEventListener('change', update);
}
update();
"""


def _select(name: str, label: str, options: list[tuple[str, str]]) -> str:
    opts = "".join(f'<option value="{escape(v)}">{escape(t)}</option>' for v, t in options)
    return f'<label>{escape(label)} <select id="{name}">{opts}</select></label>'


def _card(row: pd.Series) -> str:
    """One study's card; its ``data-*`` attributes carry what the controls sort and filter on."""
    image_id, decision = str(row["image_id"]), int(row["decision"])
    warned = int(row.get("unlike_training", 0) or 0)
    distance = row.get("distance")
    dist = "" if pd.isna(distance) else f"{float(distance):.3f}"
    badge = "present" if decision else "absent"
    warn = '<span class="badge warn">unlike the training data</span>' if warned else ""
    reason = escape(str(row.get("reason", "") or ""))
    if warned:
        reason += "<br><b>Warning:</b> " + escape(str(row.get("warning", "")))
    return (
        f'<article class="study{" warned" if warned else ""}" data-id="{escape(image_id)}" '
        f'data-probability="{float(row["probability"]):.6f}" data-decision="{decision}" '
        f'data-warning="{warned}" data-distance="{dist}">'
        f'<a class="open" href="{escape(str(row["overlay"]))}">'
        f'<img loading="lazy" src="{escape(str(row["thumbnail"]))}" alt="{escape(image_id)}"></a>'
        f'<div class="meta"><span class="badge {badge}">{badge}</span> {warn} '
        f"p {float(row['probability']):.2f} &middot; mask {int(row['mask_area_px']):,} px"
        f"{f' &middot; distance {float(distance):.1f}' if dist else ''}"
        f'<div class="id">{escape(image_id)}</div></div>'
        f'<p class="reason">{reason}</p></article>'
    )


def _rejected(rejected: pd.DataFrame) -> str:
    if rejected.empty:
        return ""
    rows = "".join(
        "<tr>" + "".join(f"<td>{escape(str(r[c]))}</td>" for c in ("item", "stage", "reason")) + "</tr>"
        for _, r in rejected.iterrows()
    )
    head = "<tr><th>file</th><th>stage</th><th>reason</th></tr>"
    return f'<h2 id="rejected">Not predicted ({len(rejected)})</h2><table>{head}{rows}</table>'


def rule_text(rule: dict) -> str:
    """A pixel rule in words: ``p >= 0.46, area >= 4,200 px at 1024``."""
    name = rule.get("rule")
    if name == "triplet":
        text = (
            f"top p >= {rule['top']:g} on >= {rule['min_area']:,.0f} px at 1024, mask p >= {rule['bottom']:g}"
        )
    else:
        text = f"p >= {float(rule.get('threshold', 0.5)):g}"
        if name == "threshold_area":
            text += f", area >= {float(rule['min_area']):,.0f} px at 1024"
    return text + (", largest component" if rule.get("lcc") else "")


def _header(decisions: pd.DataFrame, rejected: pd.DataFrame, info: dict) -> str:
    n = len(decisions)
    present = int(decisions["decision"].sum()) if n else 0
    warned = int(decisions["unlike_training"].sum()) if n and "unlike_training" in decisions else 0
    pipes = "; ".join(
        f"{p['name']}: classifier p >= {float(p['threshold']):.2f}, pixels {rule_text(p['rule'])}"
        for p in info.get("pipelines", [])
    )
    thr = info.get("warning_threshold")
    warn = (
        f"distance > {float(thr):.1f} (99th percentile of the training studies, out of fold)"
        if thr
        else "off"
    )
    return (
        f"<header><h1>dualstage review: {n} studies, {present} present, {warned} unlike the training data"
        f"{f', {len(rejected)} not read' if len(rejected) else ''}</h1>"
        f"<p>experiment {escape(str(info.get('experiment', '')))} &middot; gate mode "
        f"{escape(str(info.get('mode', '')))} &middot; warning: {escape(warn)}</p>"
        f"<p>pipelines (final mask: pixels kept by more than half): {escape(pipes)}</p>"
        "<p>Left: the final mask's outline. Right: the probability map (transparent below 0.1). "
        "A research tool, not a diagnosis.</p></header>"
    )


def write_review_page(
    out_dir: str | Path, decisions: pd.DataFrame, rejected: pd.DataFrame, info: dict
) -> Path:
    """Write ``out_dir/review.html`` from the decisions (one row per study, with ``overlay`` and
    ``thumbnail`` paths relative to ``out_dir``), the rejected files and the run's ``info``."""
    controls = (
        '<div id="controls">'
        + _select(
            "sort",
            "sort",
            [
                ("probability-desc", "classifier probability, high first"),
                ("probability-asc", "classifier probability, low first"),
                ("distance-desc", "distance to the training data, far first"),
                ("id", "image id"),
            ],
        )
        + _select("decision", "decision", [("all", "all"), ("1", "present"), ("0", "absent")])
        + _select(
            "warning", "warning", [("all", "all"), ("1", "unlike the training data"), ("0", "no warning")]
        )
        + f'<span><b id="shown">{len(decisions)}</b> of {len(decisions)} shown'
        + (' &middot; <a href="#rejected">not predicted</a>' if len(rejected) else "")
        + "</span></div>"
    )
    cards = "".join(_card(row) for _, row in decisions.iterrows())
    viewer = (
        '<dialog id="viewer"><form method="dialog"><button>close</button></form>'
        '<img alt=""><div class="text"></div></dialog>'
    )
    html = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dualstage review</title><style>{CSS}</style></head><body>"
        f'{_header(decisions, rejected, info)}{controls}<main id="studies">{cards}</main>'
        f"{_rejected(rejected)}{viewer}<script>{SCRIPT}</script></body></html>\n"
    )
    return atomic_write_text(Path(out_dir) / PAGE_NAME, html)
