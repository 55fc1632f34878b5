"""The pixel limit: the one guard every reader of a user's image asks before it allocates.

An image (one frame) may hold at most ``data.max_pixels`` pixels (``--max-pixels``), checked on
the size its header declares (DICOM Rows x Columns, a PNG's IHDR, a JPEG's SOF) before any pixel
is decoded. The default, 32 million, admits every real radiograph and mammogram:

    4,300 x 4,300    43 x 43 cm flat-panel DR at 100 um            18.5 Mpx
    4,096 x 5,600    full-field digital mammography                22.9 Mpx
    3,000 x 9,000    stitched full-spine / long-leg DR             27.0 Mpx
    4,800 x 6,000    24 x 30 cm mammography at 50 um               28.8 Mpx

and nothing like a 12,000 x 12,000 PNG (144 Mpx) or a DICOM claiming 60,000 x 60,000. Pillow's
own decompression-bomb limit is set from the same number while one of our readers opens a file.

The limit is one process setting (:func:`set_max_pixels`, done by ``open_experiment`` from the
experiment's ``data.max_pixels``); a stage that starts worker processes passes it explicitly.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "ImageTooLarge",
    "max_pixels",
    "set_max_pixels",
    "resolve",
    "check_pixels",
    "pillow_limit",
    "open_pillow",
]

DEFAULT_MAX_PIXELS = 32_000_000
_setting = {"max_pixels": DEFAULT_MAX_PIXELS}
_pillow_lock = threading.RLock()  # Pillow's limit is a module global: one reader sets it at a time


class ImageTooLarge(ValueError):
    """An image whose declared (or decoded) size is over the pixel limit (one line naming the file)."""


def max_pixels() -> int:
    """The pixel limit in force in this process."""
    return _setting["max_pixels"]


def set_max_pixels(value: int | None) -> int:
    """Set the process's pixel limit (None: the default); returns it. ValueError when not positive."""
    limit = DEFAULT_MAX_PIXELS if value is None else value
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ValueError(f"data.max_pixels / --max-pixels: expected a positive integer, got {value!r}")
    _setting["max_pixels"] = limit
    return limit


def resolve(limit: int | None) -> int:
    """``limit``, or the process setting when None."""
    return max_pixels() if limit is None else int(limit)


def check_pixels(
    path: str | Path, height: int, width: int, limit: int | None = None, what: str = "declares"
) -> None:
    """ImageTooLarge naming the file, the size and the limit when ``height x width`` is over it
    (or not a positive size)."""
    limit = resolve(limit)
    if height <= 0 or width <= 0:
        raise ValueError(f"{path}: {what} an empty image ({height}x{width} pixels)")
    if height * width > limit:
        raise ImageTooLarge(
            f"{path}: {what} {height}x{width} pixels ({height * width / 1e6:,.1f} Mpx), over the pixel "
            f"limit of {limit:,} (data.max_pixels / --max-pixels)"
        )


@contextlib.contextmanager
def pillow_limit(limit: int | None = None) -> Iterator[None]:
    """Pillow's ``MAX_IMAGE_PIXELS`` set to the limit, its bomb warning an error, for the block."""
    with _pillow_lock:
        before = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = resolve(limit)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = before


def _declared_size(path: str | Path) -> tuple[int, int]:
    """(height, width) a file's header declares, read with Pillow's own bomb check off."""
    with _pillow_lock:
        before, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as im:
                return im.height, im.width
        finally:
            Image.MAX_IMAGE_PIXELS = before


@contextlib.contextmanager
def open_pillow(path: str | Path, limit: int | None = None) -> Iterator[Image.Image]:
    """``Image.open(path)`` (lazy: the header only) refused with ImageTooLarge when its size is over
    the limit, before any pixel is decoded; decode inside the block (Pillow's own check agrees)."""
    limit = resolve(limit)
    with pillow_limit(limit):
        try:
            im = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            check_pixels(path, *_declared_size(path), limit)  # the same one-line refusal
            raise
        with im:
            check_pixels(path, im.height, im.width, limit)
            yield im
