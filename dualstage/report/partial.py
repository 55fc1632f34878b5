"""A report that cannot compute a row because an input is bad stops, or (``--allow-partial``) says so.

A hand-off file that is there but malformed (:class:`~dualstage.core.io.HandoffError`: a mistyped
``operating_point.json``, a truncated ``decisions.csv``, ...) is not a step that was not run. Without
``--allow-partial`` the report stops with one line naming the file and the field (exit 2) before it
writes anything. With it, the report is written without those rows and says so in a banner at the
top of report.md / report.html and in ``summary.json`` / ``metrics.json`` (``partial``, ``bad_inputs``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from dualstage.core.io import HandoffError
from dualstage.report.compare import BAD_INPUT
from dualstage.report.document import Note, Paragraph, Section

__all__ = ["guarded", "bad_rows", "stop_unless_partial", "banner", "partial_fields"]

T = TypeVar("T")


def guarded(read: Callable[[], T], allow_partial: bool, bad: list[str], fallback: T) -> T:
    """``read()``; a HandoffError re-raised, or with ``allow_partial`` noted in ``bad`` (``fallback``)."""
    try:
        return read()
    except HandoffError as exc:
        if not allow_partial:
            raise
        bad.append(str(exc))
        return fallback


def bad_rows(*comparisons: dict | None) -> list[str]:
    """``"<gate>: <file>: <field>: ..."`` of every gate row skipped because an input is bad."""
    return [
        f"{label}: {reason.removeprefix(BAD_INPUT)}"
        for cmp in comparisons
        if cmp
        for label, reason in cmp.get("skipped", {}).items()
        if reason.startswith(BAD_INPUT)
    ]


def stop_unless_partial(bad: list[str], allow_partial: bool) -> None:
    """HandoffError naming the first bad input unless ``allow_partial`` (nothing written yet)."""
    if bad and not allow_partial:
        more = f" ({len(bad) - 1} more)" if len(bad) > 1 else ""
        raise HandoffError(
            f"report cannot compute a row: {bad[0]}{more}; regenerate that file, or pass --allow-partial "
            "to write the report without it"
        )


def banner(bad: list[str]) -> Section:
    """The first section of a partial report: what is missing and which file is bad."""
    lead = (
        f"PARTIAL REPORT: {len(bad)} input(s) are malformed, so rows that need them are missing "
        "(written with --allow-partial). Regenerate the files below and run the report again."
    )
    return Section("Partial report", [Paragraph(lead, kind="lead"), *(Note(f"bad input: {b}") for b in bad)])


def partial_fields(bad: list[str]) -> dict:
    """The ``partial`` / ``bad_inputs`` fields of summary.json and metrics.json."""
    return {"partial": bool(bad), "bad_inputs": list(bad)}
