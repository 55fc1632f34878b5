"""DICOM radiographs through pydicom: header fields and display-ready uint8 pixels.

Pixels decode through pydicom's pixel API with its plug-ins: pylibjpeg (JPEG Baseline,
Extended 12-bit, Lossless, JPEG-LS), pylibjpeg-openjpeg (JPEG 2000, HTJ2K), pylibjpeg-rle or
pydicom (RLE), pydicom itself (native little / big endian, deflated). Files without the
128-byte preamble or file meta are read again with ``force=True``. Every failure is a
one-line ``ValueError`` naming the file and the reason; objects without pixels (SR, RT plan /
structure set, waveforms, presentation states, ...) are named by their SOP Class.

Before any pixel is decoded the header is held to the pixel limit (:mod:`dualstage.data.limits`):
Rows x Columns over it, native Pixel Data shorter than the header declares, a compressed frame whose
own header (JPEG SOF, JPEG 2000 SIZ) says another or a larger size, or a deflated data set that
inflates past the limit are each refused with a one-line reason. Big values are read lazily
(``defer_size``), so a header read costs the header, not the pixels.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
)

from dualstage.data import limits
from dualstage.data.codestreams import inflates_past, stream_size

__all__ = ["read_dicom_header", "read_dicom_pixels", "to_uint8", "describe", "PIXEL_KEYWORDS"]

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# SOP classes that carry pixel data but are not radiographs to segment
NOT_RADIOGRAPHS = {
    "1.2.840.10008.5.1.4.1.1.66.4": "a segmentation (label map), not a radiograph",
    "1.2.840.10008.5.1.4.1.1.481.2": "a radiotherapy dose grid, not a radiograph",
}
# JPEG, JPEG-LS, JPEG 2000 and HTJ2K frames end with the EOI / EOC marker FFD9
_ENDS_WITH_FFD9 = {*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes, *JPEG2000TransferSyntaxes}
_STREAM_FAMILY = {
    **{u: "jpeg" for u in (*JPEGTransferSyntaxes, *JPEGLSTransferSyntaxes)},
    **{u: "j2k" for u in JPEG2000TransferSyntaxes},
}
_DEFER = 4096  # values longer than this (the pixel data) are read only when used
_UNDEFINED = 0xFFFFFFFF
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as in DICOM's YBR_FULL


class _Unusable(ValueError):
    """A file this module refuses for a reason of its own (the message is the reason)."""


def _reason(exc: BaseException) -> str:
    """One-line reason of a failure: ours verbatim, others as ``Type: message``."""
    text = " ".join(str(exc).split())
    if isinstance(exc, _Unusable):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


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


def describe(ds: Dataset) -> str:
    """What a dataset is, for messages: its SOP Class name and modality.

    ``'Basic Text SR Storage (modality SR)'``; ``'DICOM object of unknown class'`` when the
    file names no SOP Class.
    """
    try:
        meta = getattr(ds, "file_meta", None) or {}
        uid = ds.get("SOPClassUID") or meta.get("MediaStorageSOPClassUID")
        name = UID(str(uid)).name if uid else "DICOM object of unknown class"
        modality = str(ds.get("Modality", "") or "")
    except Exception:  # a forced read of garbage can fail on any access
        return "DICOM object of unknown class"
    return f"{name} (modality {modality})" if modality else name


def _check_deflated(path: str | Path, limit: int) -> None:
    """Refuse a deflated data set that inflates past what an image at the pixel limit can need
    (pydicom inflates the whole stream in memory before reading a single element)."""
    try:
        meta = read_file_meta_info(path)
    except Exception:  # noqa: BLE001 - no usable file meta: not a deflated file we can check
        return
    if str(meta.get("TransferSyntaxUID", "")) != DeflatedExplicitVRLittleEndian:
        return
    offset = 128 + 4 + 12 + int(meta.get("FileMetaInformationGroupLength", 0) or 0)
    bound = limit * 8 + (1 << 20)  # 8 bytes a pixel (64-bit or RGB 16-bit) and 1 MB of header
    if inflates_past(path, offset, bound):
        raise limits.ImageTooLarge(
            f"{path}: its deflated data set inflates past {bound:,} bytes, more than an image within "
            f"the pixel limit of {limit:,} needs (data.max_pixels / --max-pixels)"
        )


def _dcmread(path: str | Path, limit: int) -> tuple[Dataset, bool]:
    """(dataset, forced): files without preamble / 'DICM' marker are read with ``force=True``.

    Big values (the pixel data) are deferred: read from the file when first used."""
    _check_deflated(path, limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's per-file chatter; failures are reported
        try:
            return pydicom.dcmread(path, defer_size=_DEFER), False
        except InvalidDicomError:
            return pydicom.dcmread(path, defer_size=_DEFER, force=True), True


def _value_length(ds: Dataset, keyword: str, path: str | Path) -> int | None:
    """Bytes of a pixel data element's value present in the file; None when encapsulated."""
    elem = ds.get_item(keyword, keep_deferred=True)
    length = getattr(elem, "length", None)
    if length is None:  # a read DataElement
        if elem.is_undefined_length:
            return None
        return len(elem.value or b"")
    if length == _UNDEFINED:
        return None
    if elem.value is not None:
        return len(elem.value)
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if syntax == DeflatedExplicitVRLittleEndian:  # positions are in the inflated stream
        return int(length)
    return max(0, min(int(length), os.path.getsize(path) - int(elem.value_tell)))


def _check_declared(ds: Dataset, path: str | Path, limit: int) -> None:
    """Refuse Rows x Columns over the pixel limit, and native pixel data shorter than the header
    declares (a 1.6 KB file claiming 60000 x 60000); headers only, nothing decoded."""
    limits.check_pixels(path, int(ds.Rows), int(ds.Columns), limit)
    keyword = next((k for k in PIXEL_KEYWORDS if k in ds), None)
    if keyword is None:
        return
    have = _value_length(ds, keyword, path)
    if have is None:  # encapsulated: each frame's own header is checked before it is decoded
        return
    try:
        need = int(get_expected_length(ds, unit="bytes"))
    except (AttributeError, KeyError, TypeError, ValueError):
        return  # an incomplete image module: the decoder names what is missing
    if have < need:
        frames, spp = _n_frames(ds), int(ds.get("SamplesPerPixel", 1) or 1)
        raise _Unusable(
            f"Pixel Data holds {have:,} bytes, less than expected: the header declares {need:,} "
            f"({ds.Rows}x{ds.Columns}, "
            f"{spp} sample(s), {ds.get('BitsAllocated')} bits, {frames} frame(s)): "
            "truncated file or false header"
        )


def _n_frames(ds: Dataset) -> int:
    text = str(ds.get("NumberOfFrames", "") or "1").strip()
    return max(int(float(text)), 1) if text.replace(".", "", 1).isdigit() else 1


def _check_image(ds: Dataset, forced: bool, need_pixels: bool) -> None:
    """Raise ``ValueError`` (reason only) when ``ds`` is not an image this project can use."""
    if forced and "SOPClassUID" not in ds and "Rows" not in ds:
        raise _Unusable("not a DICOM file (no 'DICM' marker and no image header)")
    uid = str(ds.get("SOPClassUID", ""))
    if uid in NOT_RADIOGRAPHS:
        raise _Unusable(f"{describe(ds)} is {NOT_RADIOGRAPHS[uid]}")
    if "Rows" not in ds or "Columns" not in ds:
        what = describe(ds)
        if " Image " in f" {what} ":  # an image class without its image module: cut short
            raise _Unusable(f"{what} without Rows / Columns / Pixel Data (truncated file?)")
        raise _Unusable(f"{what} holds no image (no Rows / Columns / Pixel Data)")
    if need_pixels and not any(k in ds for k in PIXEL_KEYWORDS):
        raise _Unusable(f"{describe(ds)}: image header without Pixel Data (truncated or header-only file)")


def _ensure_transfer_syntax(ds: Dataset) -> None:
    """Give a file without file meta the transfer syntax it was read with (native data only)."""
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    if ds.file_meta.get("TransferSyntaxUID"):
        return
    elem = ds["PixelData"] if "PixelData" in ds else None
    if elem is not None and elem.is_undefined_length:
        raise _Unusable("compressed (encapsulated) Pixel Data but no Transfer Syntax UID in the file meta")
    implicit, little = ds.original_encoding
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _check_first_frame(ds: Dataset, path: str | Path, limit: int) -> None:
    """Refuse a JPEG / JPEG-LS / JPEG 2000 first frame without its end marker (FFD9: a truncated
    stream that some decoders fill with grey instead of failing), or whose own header (SOF, SIZ)
    declares a size over the pixel limit or other than Rows x Columns (a decoder allocates for it)."""
    syntax = UID(str(ds.file_meta.TransferSyntaxUID))
    if syntax not in _STREAM_FAMILY or "PixelData" not in ds:
        return
    first = next(generate_frames(ds.PixelData, number_of_frames=_n_frames(ds)), b"")
    size = stream_size(first, _STREAM_FAMILY[syntax])
    if size is not None:
        rows, cols = int(ds.Rows), int(ds.Columns)
        height, width = (size[0] or rows), size[1]  # JPEG height 0: given later by a DNL marker
        limits.check_pixels(path, height, width, limit, what=f"its {syntax.name} stream decodes to")
        if (height, width) != (rows, cols):
            raise _Unusable(
                f"{syntax.name}: the frame is {height}x{width} but Rows x Columns say {rows}x{cols}"
            )
    if syntax in _ENDS_WITH_FFD9 and b"\xff\xd9" not in first[-16:]:  # encoders pad after it
        raise _Unusable(f"{syntax.name}: the first frame has no end-of-image marker (truncated stream)")


def _header_fields(ds: Dataset) -> dict:
    tsuid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "")
    return {
        "height": int(ds.Rows),
        "width": int(ds.Columns),
        "patient_id": str(ds.get("PatientID", "") or ""),
        "sex": str(ds.get("PatientSex", "") or ""),
        "age": _age_years(ds.get("PatientAge", "")),
        "view_position": str(ds.get("ViewPosition", "") or ""),
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "bits_stored": int(ds.get("BitsStored", 8) or 8),
        "transfer_syntax": str(tsuid),
        "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        "n_frames": _n_frames(ds),
    }


def read_dicom_header(path: str | Path, max_pixels: int | None = None) -> dict:
    """Header fields of one DICOM file without decoding its pixels.

    Keys: height, width, patient_id, sex, age (years, NaN if absent), view_position,
    photometric, bits_stored, transfer_syntax, sop_instance_uid, n_frames.
    Raises a one-line ``ValueError`` naming the file when it is not a readable image DICOM
    (non-image objects are named by SOP Class, e.g. ``Basic Text SR Storage``), when Rows x Columns
    is over ``max_pixels`` (default: the process's limit; :class:`~dualstage.data.limits.ImageTooLarge`)
    or when native pixel data is shorter than the header declares.
    """
    limit = limits.resolve(max_pixels)
    try:
        ds, forced = _dcmread(path, limit)
        _check_image(ds, forced, need_pixels=False)
        _check_declared(ds, path, limit)
        return _header_fields(ds)
    except limits.ImageTooLarge:
        raise
    except Exception as exc:  # pydicom raises many types for broken files
        raise ValueError(f"{path}: not a readable DICOM image ({_reason(exc)})") from exc


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) float64 luma (BT.601 weights, the Y of YBR_FULL)."""
    return rgb[..., :3].astype(np.float64) @ _LUMA


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] to 0..255 uint8 (NaN -> 0)."""
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.rint((np.nan_to_num(values, nan=lo) - lo) * scale)
    return np.clip(out, 0, 255).astype(np.uint8)


def _voi_range(ds: Dataset) -> tuple[float, float]:
    """Output range of the file's VOI (window or LUT): pydicom's output for extreme inputs."""
    if "VOILUTSequence" in ds:  # the LUT clamps its input: the first and last entries
        probe = np.array([np.iinfo(np.int32).min, np.iinfo(np.int32).max], np.int64)
    else:  # a window clamps to the modality output range
        probe = np.array([-1e300, 1e300], np.float64)
    ends = apply_voi_lut(probe, ds, index=0)
    return float(np.min(ends)), float(np.max(ends))


def to_uint8(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """Map decoded pixels (H, W) or (H, W, 3) to display uint8 (H, W), MONOCHROME2 convention.

    Colour (RGB; pydicom has already converted YBR_* to RGB; PALETTE COLOR through its LUT)
    becomes BT.601 luminance. 8-bit unsigned grayscale passes through unchanged. Other
    grayscale (12/16/32-bit, signed, float) goes through pydicom's ``apply_modality_lut``,
    then its ``apply_voi_lut`` when the file has a window or VOI LUT (that output range maps
    to 0..255), else the image's min-max range. MONOCHROME1 is inverted so that bright
    always means dense.
    """
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:
        luma = _luminance(arr)
        if arr.dtype == np.uint8:
            return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
        return _scale(luma, float(np.nanmin(luma)), float(np.nanmax(luma)))
    if arr.dtype == np.uint8:
        out = arr
    else:
        values = apply_modality_lut(arr, ds)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            if "VOILUTSequence" in ds and values.dtype.kind == "f":  # LUT entries are integer-indexed
                values = np.rint(values).astype(np.int64)
            lo, hi = _voi_range(ds)
            values = apply_voi_lut(values, ds, index=0)
        else:
            lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
        out = _scale(values.astype(np.float64), lo, hi)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return np.ascontiguousarray(out, dtype=np.uint8)


def read_dicom_pixels(path: str | Path, max_pixels: int | None = None) -> tuple[np.ndarray, dict]:
    """Decode one DICOM to ``(image, info)``: image uint8 (H, W), MONOCHROME2 convention.

    ``info`` is :func:`read_dicom_header`'s fields plus ``frame`` (0: a multi-frame file gives
    its first frame; ``n_frames`` says how many it holds). Raises a one-line ``ValueError``
    ``"<path>: cannot decode DICOM (<reason>)"`` for any failure (not DICOM, no pixel data,
    unsupported or corrupt compression, truncated pixel data, ...); the pixel limit
    (``max_pixels``, default the process's) is checked on every declared size before decoding.
    """
    limit = limits.resolve(max_pixels)
    try:
        ds, forced = _dcmread(path, limit)
        _check_image(ds, forced, need_pixels=True)
        _check_declared(ds, path, limit)
        _ensure_transfer_syntax(ds)
        _check_first_frame(ds, path, limit)
        info = _header_fields(ds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(ds, index=0)
            spp = int(ds.get("SamplesPerPixel", 1) or 1)
            if arr.ndim == (3 if spp > 1 else 2) + 1:  # a decoder that ignored the frame index
                arr = arr[0]
            image = to_uint8(ds, arr)
    except limits.ImageTooLarge:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: cannot decode DICOM ({_reason(exc)})") from exc
    if image.shape != (info["height"], info["width"]):
        got = "x".join(map(str, image.shape))
        raise ValueError(
            f"{path}: cannot decode DICOM (decoded {got}, Rows x Columns say "
            f"{info['height']}x{info['width']})"
        )
    info["frame"] = 0
    return image, info
