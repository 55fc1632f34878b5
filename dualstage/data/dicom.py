"""DICOM radiographs through pydicom: header fields and display-ready uint8 pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.pixels import apply_modality_lut, apply_voi_lut

__all__ = ["read_dicom_header", "read_dicom_pixels", "to_uint8"]


def _age_years(value: object) -> float:
    """'062', '62', '062Y', '18M' -> years (NaN when absent or unparsable)."""
    text = str(value or "").strip().upper()
    if not text:
        return float("nan")
    unit = text[-1] if text[-1] in "DWMY" else "Y"
    digits = text[:-1] if text[-1] in "DWMY" else text
    try:
        n = float(digits)
    except ValueError:
        return float("nan")
    return n / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[unit]


def _header_fields(ds: pydicom.Dataset) -> dict:
    tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")
    return {
        "height": int(ds.Rows),
        "width": int(ds.Columns),
        "patient_id": str(ds.get("PatientID", "") or ""),
        "sex": str(ds.get("PatientSex", "") or ""),
        "age": _age_years(ds.get("PatientAge", "")),
        "view_position": str(ds.get("ViewPosition", "") or ""),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "bits_stored": int(ds.get("BitsStored", 8)),
        "transfer_syntax": str(tsuid),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
    }


def read_dicom_header(path: str | Path) -> dict:
    """Header fields of one DICOM file without decoding its pixels.

    Keys: height, width, patient_id, sex, age (years, NaN if absent), view_position,
    photometric, bits_stored, transfer_syntax, sop_instance_uid.
    Raises ``ValueError`` naming the file when it is not a readable image DICOM.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return _header_fields(ds)
    except Exception as exc:  # pydicom raises many types for broken files
        raise ValueError(f"{path}: not a readable DICOM image ({type(exc).__name__}: {exc})") from exc


def to_uint8(ds: pydicom.Dataset, arr: np.ndarray) -> np.ndarray:
    """Map stored pixel values (H, W) to display uint8 (H, W), MONOCHROME2 convention.

    8-bit unsigned data passes through unchanged. Deeper data goes through the modality
    LUT, then the file's VOI window / LUT when present (else its min-max range), and is
    scaled to 0..255. MONOCHROME1 is inverted so that bright always means dense.
    """
    if arr.ndim == 3:  # colour secondary capture: luminance
        arr = arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    if arr.dtype == np.uint8:
        out = arr
    else:
        values = apply_modality_lut(arr, ds).astype(np.float64)
        has_voi = "WindowCenter" in ds or "VOILUTSequence" in ds
        if has_voi:
            values = apply_voi_lut(values, ds, index=0).astype(np.float64)
            if "WindowCenter" in ds and "VOILUTSequence" not in ds:
                # pydicom windows into the stored bit range; map that range to 0..255
                bits = int(ds.get("BitsStored", 16))
                signed = int(ds.get("PixelRepresentation", 0)) == 1
                lo = -(2 ** (bits - 1)) if signed else 0
                hi = lo + 2**bits - 1
            else:
                lo, hi = float(values.min()), float(values.max())
        else:
            lo, hi = float(values.min()), float(values.max())
        scale = 255.0 / (hi - lo) if hi > lo else 0.0
        out = np.clip(np.rint((values - lo) * scale), 0, 255).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
    return np.ascontiguousarray(out, dtype=np.uint8)


def read_dicom_pixels(path: str | Path) -> tuple[np.ndarray, dict]:
    """Decode one DICOM to ``(image, header)``: image uint8 (H, W), MONOCHROME2.

    Compressed transfer syntaxes (JPEG Baseline etc.) decode through pydicom's
    plug-ins (Pillow, pylibjpeg). Raises ``ValueError`` naming the file on failure.
    """
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
        header = _header_fields(ds)
        return to_uint8(ds, arr), header
    except Exception as exc:
        raise ValueError(f"{path}: cannot decode DICOM pixels ({type(exc).__name__}: {exc})") from exc
