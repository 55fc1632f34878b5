"""Self-contained HTML rendering: one file, simple CSS, figures embedded as base64 PNG data URIs."""

from __future__ import annotations

import base64
import re
from html import escape
from pathlib import Path

from dualstage.report.document import Code, Figure, Note, Paragraph, Section, Table, cell

__all__ = ["render_html"]

CSS = """
body { font: 15px/1.45 -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; color: #1d1d1f;
       max-width: 1280px; margin: 24px auto; padding: 0 24px; background: #fff; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 20px; margin-top: 36px;
     border-bottom: 2px solid #e3e3e8; padding-bottom: 4px; }
nav { font-size: 13px; color: #555; margin-bottom: 16px; } nav a { margin-right: 14px; color: #0b63c5; }
p.warning { font-size: 16px; font-weight: bold; color: #8b0000; background: #ffecec;
  border-left: 6px solid #d00000; padding: 10px 14px; }
p.lead { font-size: 16px; background: #eef5ff; border-left: 4px solid #0b63c5; padding: 10px 14px; }
p.note, div.note, td.note { color: #8a5300; background: #fff7e6; border-left: 4px solid #f0a020;
                            padding: 6px 12px; font-size: 13px; margin: 8px 0; }
.wrap { overflow-x: auto; margin: 10px 0 4px; }
table { border-collapse: collapse; font-size: 13px; }
caption { caption-side: top; text-align: left; font-weight: 600; padding: 6px 0; font-size: 14px;
          white-space: nowrap; }
th, td { border: 1px solid #d9d9de; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f3f3f6; text-align: center; }
td:first-child, th:first-child, td.t { text-align: left; }
tr:nth-child(even) td { background: #fafafc; }
tr.best td { background: #e7f6e7; font-weight: 600; }
tr.baseline td { color: #666; font-style: italic; }
.ci { color: #666; font-size: 11px; font-weight: normal; white-space: nowrap; }
p.foot { font-size: 12px; color: #555; margin: 2px 0 14px; }
figure { margin: 18px 0; } figure img { max-width: 100%; border: 1px solid #e3e3e8; }
figcaption { font-size: 13px; color: #333; margin-top: 4px; }
details { margin: 8px 0; } summary { cursor: pointer; color: #0b63c5; }
pre { background: #f6f8fa; padding: 10px; font-size: 12px; overflow-x: auto; max-height: 480px; }
"""
_CI = re.compile(r"^([+-]?[\d.]+) (\[[^\]]+\])$")
_NUMBER = re.compile(r"^([+-]?[\d.]+(e[+-]?\d+)?|-)$")


def _cell(value) -> str:
    """One <td>: numbers right-aligned, text left; "value [lo, hi]" with the interval small below."""
    text = cell(value)
    m = _CI.match(text)
    if m:
        return f'<td>{escape(m.group(1))}<br><span class="ci">{escape(m.group(2))}</span></td>'
    return f"<td>{escape(text)}</td>" if _NUMBER.match(text) else f'<td class="t">{escape(text)}</td>'


def _table(t: Table) -> str:
    cap = f"<caption>{escape(t.caption)}</caption>"
    if t.frame is None or t.frame.empty:
        body = f'<tr><td class="note">{escape(t.note or "not run")}</td></tr>'
        parts = [f'<div class="wrap"><table>{cap}{body}</table></div>']
    else:
        head = "".join(f"<th>{escape(str(c))}</th>" for c in t.frame.columns)
        rows = []
        for i, row in enumerate(t.frame.itertuples(index=False)):
            cls = f' class="{t.row_class[i]}"' if i in t.row_class else ""
            rows.append(f"<tr{cls}>" + "".join(_cell(v) for v in row) + "</tr>")
        table = f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        parts = [f'<div class="wrap">{table}</div>']
        if t.note:
            parts.append(f'<p class="note">{escape(t.note)}</p>')
    if t.footer:
        parts.append(f'<p class="foot">{escape(t.footer)}</p>')
    return "\n".join(parts)


def _figure(f: Figure) -> str:
    title, _, rest = f.caption.partition("\n")
    if f.path is None:
        return f'<div class="note"><b>{escape(title)}</b>: {escape(f.note or "not drawn")}</div>'
    data = base64.b64encode(Path(f.path).read_bytes()).decode("ascii")
    extra = "".join(f"<br>{escape(line)}" for line in rest.splitlines())
    return (
        f'<figure id="fig-{escape(f.key)}"><img alt="{escape(title)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(title)}{extra}</figcaption></figure>"
    )


def _block(block) -> str:
    if isinstance(block, Paragraph):
        return f'<p class="{escape(block.kind)}">{escape(block.text)}</p>'
    if isinstance(block, Note):
        return f'<p class="note">{escape(block.text)}</p>'
    if isinstance(block, Table):
        return _table(block)
    if isinstance(block, Figure):
        return _figure(block)
    if isinstance(block, Code):
        return f"<details><summary>{escape(block.summary)}</summary><pre>{escape(block.text)}</pre></details>"
    raise TypeError(f"unknown block {type(block).__name__}")


def render_html(title: str, sections: list[Section]) -> str:
    """The report as one HTML document (UTF-8), every figure embedded."""
    anchors = [f"s{i}" for i in range(len(sections))]
    nav = "".join(f'<a href="#{a}">{escape(s.title)}</a>' for a, s in zip(anchors, sections, strict=True))
    body = []
    for a, sec in zip(anchors, sections, strict=True):
        body.append(f'<h2 id="{a}">{escape(sec.title)}</h2>')
        body.extend(_block(b) for b in sec.blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n<h1>{escape(title)}</h1>\n<nav>{nav}</nav>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
