"""ImageId validation: an id names cache files, so it must be one plain file name.

Ids enter from file names (siim / folders layouts), from the RLE CSV and from the PNG
layout's index. Each is checked once there; a bad one becomes a ``rejected.csv`` row and
the batch goes on. Writers check their final paths again (:func:`dualstage.core.io.ensure_inside`).
"""

from __future__ import annotations

import re

__all__ = ["check_image_id", "MAX_ID_LENGTH", "show_id"]

MAX_ID_LENGTH = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


def show_id(value: object, limit: int = 60) -> str:
    """A printable, bounded rendering of a (possibly hostile) id for messages."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _defect(text: str) -> str | None:
    """What is wrong with a stripped id, or ``None``."""
    if not text:
        return "is empty"
    if len(text) > MAX_ID_LENGTH:
        return f"is {len(text)} characters long (at most {MAX_ID_LENGTH})"
    if _CONTROL.search(text):
        return "contains a control character"
    if text.startswith(("/", "\\")):
        return "is an absolute path"
    if _DRIVE.match(text):
        return "starts with a drive letter"
    if ".." in text:
        return "contains '..'"
    if "/" in text or "\\" in text:
        return "contains a path separator"
    if text.startswith("."):
        return "starts with '.' (hidden file name)"
    return None


def check_image_id(value: str) -> str:
    """``value`` stripped of surrounding spaces; ``ValueError`` saying why it is not a safe id."""
    if not isinstance(value, str):
        raise ValueError(f"ImageId {show_id(value)} is not text")
    text = value.strip(" ")
    reason = _defect(text)
    if reason:
        raise ValueError(f"ImageId {show_id(text)} {reason}")
    return text
