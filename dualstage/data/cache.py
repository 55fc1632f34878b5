"""Which resolutions the prepared cache holds, and which one a consumer should read."""

from __future__ import annotations

from pathlib import Path

__all__ = ["cached_sizes", "pick_cache_size"]


def cached_sizes(prepared: str | Path) -> list[int]:
    """Resolutions (px) present in ``<prepared>/cache``, ascending ([] without a cache)."""
    base = Path(prepared) / "cache"
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def pick_cache_size(prepared: str | Path, image_size: int, at_most: bool = False) -> int | None:
    """The cached size to read for ``image_size``; None when there is no cache.

    Default: the smallest size >= ``image_size`` (downsampling never upsamples), else the largest.
    ``at_most``: the largest size <= ``image_size`` (display thumbnails), else the smallest.
    """
    sizes = cached_sizes(prepared)
    if not sizes:
        return None
    if at_most:
        return next((s for s in reversed(sizes) if s <= image_size), sizes[0])
    return next((s for s in sizes if s >= image_size), sizes[-1])
