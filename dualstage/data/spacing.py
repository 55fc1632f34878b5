"""Pixel spacing of prepared studies, for carrying a minimum area across image sizes physically.

The gates count a mask's area on a common grid: ``area * 1024**2 / (H * W)`` (a share of the image).
Where DICOM gives ``PixelSpacing`` (else ``ImagerPixelSpacing``), one pixel of that 1024 x 1024
grid covers ``row_mm * col_mm * H * W / 1024**2`` mm^2 of the detector: :func:`grid_pixel_mm2`
reads it per study from the files a prepared manifest names (headers only). NaN where a study has
no spacing (PNG / JPEG, or a DICOM without the tag).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pydicom

__all__ = ["pixel_spacing", "grid_pixel_mm2", "REF_PIXELS"]

REF_PIXELS = 1024 * 1024


def pixel_spacing(path: str | Path) -> tuple[float, float] | None:
    """(row mm, column mm) of a DICOM file's PixelSpacing (else ImagerPixelSpacing); None without."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - an unreadable header simply has no spacing here
        return None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return row, col
    return None


def grid_pixel_mm2(manifest: pd.DataFrame) -> pd.Series:
    """mm^2 covered by one pixel of the common 1024 x 1024 grid, per study (index image_id; NaN: unknown).

    ``manifest``: prepare's manifest (image_id, image_path, height, width)."""
    out = []
    for row in manifest.itertuples(index=False):
        path, syntax = str(row.image_path), str(getattr(row, "transfer_syntax", "") or "")
        is_dicom = path.lower().endswith((".dcm", ".dicom")) or syntax not in ("", "nan")
        spacing = pixel_spacing(path) if is_dicom else None
        if spacing is None:
            out.append(np.nan)
        else:
            out.append(spacing[0] * spacing[1] * float(row.height) * float(row.width) / REF_PIXELS)
    return pd.Series(out, index=manifest["image_id"].astype(str).to_numpy(), dtype=np.float64)
