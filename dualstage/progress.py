"""Progress reporting: tqdm on a terminal (placeholder until the log-friendly version lands)."""

from __future__ import annotations

from tqdm.auto import tqdm

__all__ = ["progress"]


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it", enabled: bool = True):
    """A tqdm bar over ``iterable`` (disabled when ``enabled`` is False)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled)
