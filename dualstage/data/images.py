"""Radiograph readers: DICOM (pydicom) and PNG / JPEG (Pillow) to uint8 (H, W) grayscale.

Every failure for a bad file is a one-line ``ValueError`` that names the file and the reason,
so a batch can record it and go on. Every reader asks the header for the size first and refuses an
image over the pixel limit (:mod:`dualstage.data.limits`, ``max_pixels``; default the process's
``data.max_pixels``) before it decodes a pixel.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from dualstage.data import limits
from dualstage.data.dicom import read_dicom_header, read_dicom_pixels
from dualstage.data.layouts import IMAGE_EXTS

__all__ = [
    "read_image_file",
    "image_shape",
    "read_mask_file",
    "is_dicom_file",
    "DICOM_EXTS",
    "find_images",
    "image_id_of",
]

DICOM_EXTS = (".dcm", ".dicom")


def is_dicom_file(path: str | Path) -> bool:
    """True for a ``.dcm`` / ``.dicom`` name or a file with the 'DICM' marker at byte 128."""
    path = Path(path)
    if path.suffix.lower() in DICOM_EXTS:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def _to_gray(im: Image.Image) -> np.ndarray:
    """A Pillow image (first frame) as uint8 (H, W); deeper grayscale min-max scaled."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if hi <= lo:
            return np.zeros(arr.shape, np.uint8)
        return np.rint((arr - lo) / (hi - lo) * 255).astype(np.uint8)
    return np.asarray(im.convert("L"))


def _cannot_read(path: Path, exc: Exception) -> ValueError:
    if isinstance(exc, limits.ImageTooLarge):
        return exc
    reason = " ".join(str(exc).split())
    return ValueError(f"{path}: cannot read image ({type(exc).__name__}: {reason})")


def read_image_file(path: str | Path, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """Read a DICOM or PNG / JPEG radiograph as (image uint8 (H, W), info).

    ``info`` has at least height, width, frame (always 0: the first frame) and n_frames;
    DICOM adds its header fields (see :func:`dualstage.data.dicom.read_dicom_header`).
    Raises a one-line ``ValueError`` naming the file for anything unreadable, and
    :class:`~dualstage.data.limits.ImageTooLarge` (a ValueError) for a size over ``max_pixels``.
    """
    path = Path(path)
    if is_dicom_file(path):
        return read_dicom_pixels(path, max_pixels)
    try:
        with limits.open_pillow(path, max_pixels) as im:
            n_frames = int(getattr(im, "n_frames", 1) or 1)
            img = _to_gray(im)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, DecompressionBombError, ...
        raise _cannot_read(path, exc) from exc
    return img, {"height": img.shape[0], "width": img.shape[1], "frame": 0, "n_frames": n_frames}


def image_shape(path: str | Path, max_pixels: int | None = None) -> tuple[int, int]:
    """(height, width) of a DICOM / PNG / JPEG file from its header, without decoding the pixels;
    ValueError as :func:`read_image_file` (over the limit, or DICOM pixel data shorter than declared)."""
    path = Path(path)
    if is_dicom_file(path):
        header = read_dicom_header(path, max_pixels)
        return header["height"], header["width"]
    try:
        with limits.open_pillow(path, max_pixels) as im:
            return im.height, im.width
    except Exception as exc:
        raise _cannot_read(path, exc) from exc


def read_mask_file(path: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """A PNG / JPEG mask as bool (H, W) (foreground ``> 127``); ``ValueError`` when unreadable or
    its size differs from the image's ``shape`` (H, W)."""
    size, mask = None, None
    try:
        with limits.pillow_limit(), Image.open(path) as im:
            size = (im.height, im.width)
            if size == tuple(shape):  # compared before decoding: a mask may declare any size
                mask = np.asarray(im.convert("L")) > 127
    except Exception as exc:
        raise ValueError(f"{path}: cannot read mask ({type(exc).__name__}: {exc})") from exc
    if mask is None:
        raise ValueError(f"{path}: mask is {size[0]}x{size[1]}, image is {shape[0]}x{shape[1]}")
    return mask


def _in_folder(folder: Path) -> list[Path]:
    """Image files under ``folder``: DICOM / PNG / JPEG names, and DICOM files of a study or series
    folder named without those extensions (the 'DICM' marker; DICOMDIR indexes are left out)."""
    found = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.upper() == "DICOMDIR" or p.name.startswith("."):
            continue
        if p.suffix.lower() in IMAGE_EXTS or is_dicom_file(p):
            found.append(p)
    return found


def find_images(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    """The image files of ``inputs``: files as given, folders searched recursively (duplicates once).

    FileNotFoundError naming a path that does not exist, or saying no image was found."""
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    paths: dict[Path, None] = {}
    for item in map(Path, items):
        if not item.exists():
            raise FileNotFoundError(f"--input {item}: no such file or folder")
        for p in [item] if item.is_file() else _in_folder(item):
            paths.setdefault(p, None)
    if not paths:
        names = ", ".join(map(str, items))
        raise FileNotFoundError(f"--input {names}: no DICOM/PNG/JPEG images found")
    return list(paths)


def image_id_of(path: Path) -> str:
    """A file's image id: its name without a DICOM / PNG / JPEG extension."""
    return path.stem if path.suffix.lower() in IMAGE_EXTS else path.name
