"""The prepared cache (``<prepared>/cache/<size>/{images,masks}/<image_id>.png``): its paths, which
sizes it holds, reading it, and decoding one item into it (:func:`process_item`, what the workers of
``segment prepare`` run: this module stays light, so a spawned worker starts without the splits'
scikit-learn or the models' torch)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dualstage.core import rle
from dualstage.core.io import atomic_write, ensure_inside
from dualstage.data import limits
from dualstage.data.annotations import masks_from_rows
from dualstage.data.images import read_image_file, read_mask_file
from dualstage.data.layouts import Item

__all__ = [
    "CACHE_PIXELS",
    "SIZE_RANGE",
    "cache_paths",
    "cached_sizes",
    "load_cached",
    "load_cached_image",
    "pick_cache_size",
    "process_item",
]

SIZE_RANGE = (32, 4096)  # cache side in px: below, nothing is learnable; above, memory runs out
CACHE_PIXELS = SIZE_RANGE[1] ** 2  # the pixel limit of a cached file (ours: at most 4096 x 4096)


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


def cache_paths(out: str | Path, size: int, image_id: str) -> tuple[Path, Path]:
    """(image PNG, mask PNG) of one image in the prepared cache at one size."""
    base = Path(out) / "cache" / str(size)
    return base / "images" / f"{image_id}.png", base / "masks" / f"{image_id}.png"


def load_cached_image(out: str | Path, size: int, image_id: str) -> np.ndarray:
    """Cached image uint8 (S, S) of one image, without its mask (what inference needs)."""
    with limits.open_pillow(cache_paths(out, size, image_id)[0], CACHE_PIXELS) as im:
        return np.asarray(im)


def load_cached(out: str | Path, size: int, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Cached (image uint8 (S, S), mask bool (S, S)) of one image."""
    with limits.open_pillow(cache_paths(out, size, image_id)[1], CACHE_PIXELS) as im:
        mask = np.asarray(im) > 127
    return load_cached_image(out, size, image_id), mask


def _save_png(array: np.ndarray, path: Path) -> None:
    image = Image.fromarray(array)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", compress_level=1))


def _resize(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    if image.shape == (size, size):
        return image, (mask * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR, reducing_gap=2.0))
    m = Image.fromarray(mask.astype(np.float32)).resize((size, size), Image.BILINEAR)
    return img, np.where(np.asarray(m) >= 0.5, 255, 0).astype(np.uint8)


def process_item(item: Item, out: str, sizes: list[int], max_pixels: int | None = None) -> dict:
    """Decode one image and its mask, write the cache, return its manifest row.

    Returns ``{"row": {...}}`` or ``{"rejected": {"item", "reason"}}``; never raises for bad data. An
    image over the pixel limit ``max_pixels`` (default: the process's) is refused before decoding.
    """
    try:
        image, header = read_image_file(item.image_path, max_pixels)
        shape = image.shape
        if item.rle_rows:
            rows = pd.DataFrame(
                [(item.image_id, s, line) for s, line in item.rle_rows], columns=["image_id", "rle", "row"]
            )
            mask, n_lesions = masks_from_rows(rows, shape[0], shape[1], source=item.rle_source)
            mask = np.ascontiguousarray(mask)
        else:
            mask = read_mask_file(item.mask_path, shape)
            n_lesions = int(mask.any())
        area = int(np.count_nonzero(mask))
        if item.has_pneumo is not None and item.has_pneumo != int(area > 0):
            raise ValueError(
                f"{item.mask_path}: index says has_pneumo={item.has_pneumo} but the mask has {area} pixels"
            )
        for size in sizes:
            img_path, mask_path = (ensure_inside(out, p) for p in cache_paths(out, size, item.image_id))
            small_img, small_mask = _resize(image, mask, size)
            _save_png(small_mask, mask_path)
            _save_png(small_img, img_path)  # image last: its presence marks the entry complete
    except ValueError as exc:
        return {"rejected": {"item": item.image_path, "reason": str(exc)}}
    pixels = image.astype(np.float64) / 255.0
    row = {
        "image_id": item.image_id,
        "image_path": item.image_path,
        "layout": item.layout,
        "height": shape[0],
        "width": shape[1],
        "has_pneumothorax": int(area > 0),
        "mask_area_px": area,
        "mask_area_1024": area * (1024 * 1024) / (shape[0] * shape[1]),
        "n_lesions": n_lesions,
        "pixel_mean": float(pixels.mean()),
        "pixel_sq_mean": float((pixels**2).mean()),
        "rle": rle.encode(mask),
        "source_bytes": os.path.getsize(item.image_path),
    }
    for key in ("patient_id", "sex", "age", "view_position", "photometric", "transfer_syntax"):
        row[key] = header.get(key, "")
    return {"row": row}
