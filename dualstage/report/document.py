"""The report as a list of sections of blocks, rendered to Markdown here and to HTML in ``html.py``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "Code",
    "Figure",
    "Note",
    "Paragraph",
    "Section",
    "Table",
    "cell",
    "markdown_table",
    "render_markdown",
]


@dataclass
class Paragraph:
    """Plain text; ``kind`` "lead" for the headline finding, "warning" for a banner (a failed model)."""

    text: str
    kind: str = "text"


@dataclass
class Note:
    """A visible "not run" / caveat line."""

    text: str


@dataclass
class Table:
    """A captioned table; ``frame`` None means not run (``note`` says what is missing)."""

    key: str
    caption: str
    frame: pd.DataFrame | None
    note: str | None = None
    footer: str | None = None
    row_class: dict[int, str] = field(default_factory=dict)  # row position -> CSS class (HTML only)


@dataclass
class Figure:
    """A PNG figure under the report folder; ``path`` None means not drawn (``note`` says why)."""

    key: str
    caption: str
    path: Path | None
    note: str | None = None


@dataclass
class Code:
    """Preformatted text (JSON), collapsed in HTML."""

    summary: str
    text: str


@dataclass
class Section:
    """A titled list of blocks."""

    title: str
    blocks: list = field(default_factory=list)


def cell(value, digits: int = 4) -> str:
    """Table cell text: floats to ``digits`` places, NaN/None as "-", the rest as str."""
    if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
        return "-"
    if isinstance(value, bool | np.bool_):
        return "yes" if value else ""
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """A pipe table of ``frame`` (columns as headers, no index); "|" in cells escaped."""

    def esc(v) -> str:
        return cell(v, digits).replace("|", "\\|")

    head = "| " + " | ".join(esc(c) for c in frame.columns) + " |"
    rule = "|" + "|".join(" --- " for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(esc(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def _block_md(block, root: Path) -> str:
    if isinstance(block, Paragraph):
        if block.kind == "warning":
            return f"> **WARNING: {block.text}**"
        return f"**{block.text}**" if block.kind == "lead" else block.text
    if isinstance(block, Note):
        return f"> _{block.text}_"
    if isinstance(block, Table):
        parts = [f"**{block.caption}**", ""]
        if block.frame is None or block.frame.empty:
            parts.append(f"_{block.note or 'not run'}_")
        else:
            parts.append(markdown_table(block.frame))
            if block.note:
                parts += ["", f"_{block.note}_"]
        if block.footer:
            parts += ["", block.footer]
        return "\n".join(parts)
    if isinstance(block, Figure):
        if block.path is None:
            return f"**{block.caption}**: _{block.note or 'not drawn'}_"
        rel = Path(block.path).relative_to(root).as_posix()
        title, _, rest = block.caption.partition("\n")
        lines = [f"![{title}]({rel})", "", f"_{title}_"] + [f"{line}  " for line in rest.splitlines()]
        return "\n".join(lines) + (f"\n\n{block.note}" if block.note else "")
    if isinstance(block, Code):
        return f"<details><summary>{block.summary}</summary>\n\n```json\n{block.text}\n```\n\n</details>"
    raise TypeError(f"unknown block {type(block).__name__}")


def render_markdown(title: str, sections: list[Section], root: Path) -> str:
    """The whole report as Markdown; figure links relative to ``root`` (the report folder)."""
    out = [f"# {title}", ""]
    for sec in sections:
        out += [f"## {sec.title}", ""]
        for block in sec.blocks:
            out += [_block_md(block, root), ""]
    return "\n".join(out).rstrip() + "\n"
