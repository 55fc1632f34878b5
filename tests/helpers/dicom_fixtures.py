"""The small DICOM files pydicom does not bundle, made at test time (no image file is committed).

:func:`write_fixtures` encodes a synthetic 48 x 64 grayscale radiograph-like image (see
:func:`synthetic`) in JPEG Lossless (process 14, and its selection value 1) and HTJ2K (lossless,
lossless RPCL, lossy), as Digital X-Ray images, with imagecodecs (a dev dependency: libjpeg-turbo 3
for lossless JPEG, OpenJPH for HTJ2K; pydicom has no encoder for either).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPE = (48, 64)


def synthetic(bits: int = 12) -> np.ndarray:
    """(48, 64) uint16 test image using ``bits`` bits: gradient, a bright disc, a dark band."""
    y, x = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    img = x * 40.0 + y * 25.0 + ((x - 32) ** 2 + (y - 24) ** 2 < 150) * 900.0 - (np.abs(y - 10) < 3) * 500.0
    img = np.clip(img, 0, 4095) * ((2**bits - 1) / 4095)
    return np.rint(img).astype(np.uint16)


def _write(
    out: Path, name: str, frame: bytes, syntax: str, bits: int, photometric: str = "MONOCHROME2"
) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID, DigitalXRayImageStorageForPresentation, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.ViewPosition = "DX", "fixture", "PA"
    ds.Rows, ds.Columns = SHAPE
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(out / name, enforce_file_format=True)
    return out / name


def _progression(j2c: bytes) -> int:
    """Progression order byte of a J2K codestream's COD marker (2 = RPCL)."""
    i = j2c.index(b"\xff\x52")
    return j2c[i + 5]


def write_fixtures(out: Path, prefix: str = "") -> list[Path]:
    """Write the five fixtures into ``out`` (names start with ``prefix``); their paths."""
    import imagecodecs

    out.mkdir(parents=True, exist_ok=True)
    a12, a16 = synthetic(12), synthetic(16)
    lossless = imagecodecs.htj2k_encode(a12, reversible=True)
    assert _progression(lossless) == 2, "OpenJPH no longer writes RPCL by default"
    jobs = [
        (
            "jpeg_lossless_sv1_12bit.dcm",
            imagecodecs.jpeg8_encode(a12, lossless=True, predictor=1, bitspersample=12),
            "1.2.840.10008.1.2.4.70",
            12,
            "MONOCHROME2",
        ),
        (
            "jpeg_lossless_p14_pred6_16bit.dcm",
            imagecodecs.jpeg8_encode(a16, lossless=True, predictor=6, bitspersample=16),
            "1.2.840.10008.1.2.4.57",
            16,
            "MONOCHROME1",
        ),
        ("htj2k_lossless_12bit.dcm", lossless, "1.2.840.10008.1.2.4.201", 12, "MONOCHROME2"),
        ("htj2k_lossless_rpcl_12bit.dcm", lossless, "1.2.840.10008.1.2.4.202", 12, "MONOCHROME2"),
        (
            "htj2k_lossy_12bit.dcm",
            imagecodecs.htj2k_encode(a12, level=0.001, reversible=False),
            "1.2.840.10008.1.2.4.203",
            12,
            "MONOCHROME2",
        ),
    ]
    return [
        _write(out, prefix + name, frame, syntax, bits, photo) for name, frame, syntax, bits, photo in jobs
    ]
