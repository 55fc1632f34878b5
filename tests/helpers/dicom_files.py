"""A folder of DICOM files in every transfer syntax the decoders support (:func:`make_good`) and
broken or non-image ones (:func:`make_bad`): pydicom's bundled files, fixtures and edited copies."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from helpers.dicom_fixtures import write_fixtures

# name in the folder -> pydicom bundled file (transfer syntax, photometric, what it covers)
BUNDLED_GOOD = {
    "explicit_le_signed16_rescale.dcm": "CT_small.dcm",
    "explicit_le_signed16_window.dcm": "MR_small.dcm",
    "implicit_le.dcm": "MR_small_implicit.dcm",
    "explicit_be.dcm": "MR_small_bigendian.dcm",
    "explicit_be_rgb.dcm": "ExplVR_BigEnd.dcm",
    "deflated_le.dcm": "image_dfl.dcm",
    "native_rgb.dcm": "examples_rgb_color.dcm",
    "native_ybr_full_422.dcm": "SC_ybr_full_422_uncompressed.dcm",
    "native_palette_color.dcm": "examples_palette.dcm",
    "native_12bit_window_overlay.dcm": "examples_overlay.dcm",
    "jpeg_baseline_ybr_full.dcm": "SC_rgb_jpeg_dcmtk.dcm",
    "jpeg_baseline_ybr_full_422.dcm": "SC_rgb_dcmtk_+eb+cy+np.dcm",
    "jpeg_baseline_rgb.dcm": "SC_jpeg_no_color_transform.dcm",
    "jpeg_baseline_30_frames_ybr.dcm": "examples_ybr_color.dcm",
    "jpeg_extended_12bit.dcm": "JPGExtended.dcm",
    "jpeg_lossless_sv1_rgb.dcm": "SC_rgb_jpeg_gdcm.dcm",
    "jpeg_ls_lossless_signed16.dcm": "MR_small_jpeg_ls_lossless.dcm",
    "jpeg_ls_near_lossless_16bit.dcm": "JPEGLSNearLossless_16.dcm",
    "jpeg_ls_near_lossless_rgb.dcm": "SC_rgb_jls_lossy_line.dcm",
    "j2k_lossless_signed16.dcm": "MR_small_jp2klossless.dcm",
    "j2k_lossless_ybr_rct.dcm": "GDCMJ2K_TextGBR.dcm",
    "j2k_lossy_signed_window.dcm": "693_J2KI.dcm",
    "j2k_lossy_rgb.dcm": "SC_rgb_gdcm_KY.dcm",
    "rle_signed16.dcm": "MR_small_RLE.dcm",
    "rle_rgb.dcm": "SC_rgb_rle.dcm",
    "rle_rgb_16bit_2_frames.dcm": "SC_rgb_rle_16bit_2frame.dcm",
    "rle_rgb_32bit.dcm": "SC_rgb_rle_32bit.dcm",
}
# the same 64 x 64 signed 16-bit MR in lossless encodings: all must give the same uint8 image
SAME_MR = [
    "explicit_le_signed16_window.dcm",
    "implicit_le.dcm",
    "explicit_be.dcm",
    "jpeg_ls_lossless_signed16.dcm",
    "j2k_lossless_signed16.dcm",
    "rle_signed16.dcm",
    "no_preamble.dcm",
    "no_meta_implicit_le.dcm",
    "no_meta_explicit_be.dcm",
]
# name in the folder -> a fragment of the one-line reason
BAD = {
    "empty.dcm": "not a DICOM file",
    "notes.dcm": "not a DICOM file",
    "dicm_then_garbage.dcm": "holds no image",
    "header_cut_short.dcm": "truncated file",
    "header_only.dcm": "without Pixel Data",
    "cut_in_pixel_data.dcm": "less than expected",
    "pixel_data_too_short.dcm": "less than expected",
    "jpeg_truncated.dcm": "no end-of-image marker",
    "j2k_truncated.dcm": "no end-of-image marker",
    "j2k_zeroed_stream.dcm": "cannot decode DICOM (RuntimeError",
    "rle_truncated.dcm": "cannot decode DICOM (RuntimeError",
    "jpeg_invalid_scan.dcm": "cannot decode DICOM (RuntimeError",
    "j2k_embedded_delimiter.dcm": "stream decodes to 1024x3722445056 pixels",  # its cut frame's SIZ
    "mpeg2_video.dcm": "is not supported",
    "compressed_no_meta.dcm": "no Transfer Syntax UID",
    "sr_basic_text.dcm": "Basic Text SR Storage",
    "sr_comprehensive.dcm": "Comprehensive SR Storage",
    "rt_plan.dcm": "RT Plan Storage",
    "rt_structure_set.dcm": "RT Structure Set Storage",
    "rt_ion_plan_no_meta.dcm": "RT Ion Plan Storage",
    "rt_dose.dcm": "RT Dose Storage",
    "ecg_waveform.dcm": "12-lead ECG Waveform Storage",
    "presentation_state.dcm": "Grayscale Softcopy Presentation State Storage",
    "encapsulated_pdf.dcm": "Encapsulated PDF Storage",
    "segmentation.dcm": "Segmentation Storage",
    "dicomdir.dcm": "Media Storage Directory Storage",
    "notes.png": "cannot read image",
    "truncated.png": "truncated",
}


def bundled(name: str) -> Path:
    return Path(get_testdata_file(name))


def _refragment(source: str, out: Path, edit, syntax: str | None = None) -> None:
    """Copy a bundled encapsulated file with its frames passed through ``edit`` (bytes -> bytes)."""
    ds = pydicom.dcmread(bundled(source))
    frames = generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))
    ds.PixelData = encapsulate([edit(f) for f in frames])
    if syntax:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(out)


def _without_meta(source: str, out: Path, implicit: bool, little: bool) -> None:
    """A bundled file rewritten as a bare dataset: no preamble, no 'DICM', no file meta."""
    ds = pydicom.dcmread(bundled(source))
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(out, ds, implicit_vr=implicit, little_endian=little, enforce_file_format=False)


def _object(out: Path, sop_class: str, modality: str, **tags) -> None:
    """A minimal non-image object of one SOP class (no pixel data)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = sop_class, meta.MediaStorageSOPInstanceUID, modality
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.save_as(out, enforce_file_format=True)


def make_good(folder: Path) -> None:
    for name, source in BUNDLED_GOOD.items():
        shutil.copy(bundled(source), folder / name)
    write_fixtures(folder, prefix="fixture_")
    raw = bundled("MR_small.dcm").read_bytes()
    (folder / "no_preamble.dcm").write_bytes(raw[132:])  # starts with the group 0002 meta
    _without_meta("MR_small_implicit.dcm", folder / "no_meta_implicit_le.dcm", True, True)
    _without_meta("MR_small_bigendian.dcm", folder / "no_meta_explicit_be.dcm", False, False)
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(folder / "monochrome1_signed16.dcm")


def make_bad(folder: Path) -> None:
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "notes.dcm").write_text("Patient notes: chest pain, rule out pneumothorax.\n")
    (folder / "dicm_then_garbage.dcm").write_bytes(bytes(128) + b"DICM" + bytes(range(256)) * 2)
    raw = bundled("MR_small.dcm").read_bytes()
    (folder / "header_cut_short.dcm").write_bytes(raw[:200])
    (folder / "cut_in_pixel_data.dcm").write_bytes(raw[: int(len(raw) * 0.7)])
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    del ds.PixelData
    ds.save_as(folder / "header_only.dcm")
    ds = pydicom.dcmread(bundled("MR_small.dcm"))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(folder / "pixel_data_too_short.dcm")
    _refragment("SC_rgb_jpeg_dcmtk.dcm", folder / "jpeg_truncated.dcm", lambda f: f[: len(f) // 3])
    _refragment("MR_small_jp2klossless.dcm", folder / "j2k_truncated.dcm", lambda f: f[: len(f) // 2])
    zeroed = lambda f: f[:40] + bytes(len(f) - 42) + f[-2:]  # noqa: E731
    _refragment("MR_small_jp2klossless.dcm", folder / "j2k_zeroed_stream.dcm", zeroed)
    _refragment("MR_small_RLE.dcm", folder / "rle_truncated.dcm", lambda f: f[: len(f) // 2])
    _refragment("MR_small_jp2klossless.dcm", folder / "mpeg2_video.dcm", bytes, "1.2.840.10008.1.2.4.100")
    shutil.copy(bundled("JPEG-lossy.dcm"), folder / "jpeg_invalid_scan.dcm")  # invalid SOS
    shutil.copy(bundled("JPEG2000-embedded-sequence-delimiter.dcm"), folder / "j2k_embedded_delimiter.dcm")
    _without_meta("MR_small_jp2klossless.dcm", folder / "compressed_no_meta.dcm", False, True)
    for name, source in {
        "sr_basic_text.dcm": "reportsi.dcm",
        "sr_comprehensive.dcm": "test-SR.dcm",
        "rt_plan.dcm": "rtplan.dcm",
        "rt_structure_set.dcm": "rtstruct.dcm",
        "rt_ion_plan_no_meta.dcm": "ExplVR_LitEndNoMeta.dcm",
        "rt_dose.dcm": "rtdose.dcm",
        "ecg_waveform.dcm": "waveform_ecg.dcm",
        "segmentation.dcm": "liver_1frame.dcm",
    }.items():
        shutil.copy(bundled(source), folder / name)
    shutil.copy(bundled("CT_small.dcm").parent / "dicomdirtests" / "DICOMDIR", folder / "dicomdir.dcm")
    _object(folder / "presentation_state.dcm", "1.2.840.10008.5.1.4.1.1.11.1", "PR")
    pdf = b"%PDF-1.4\n%%EOF\n"
    _object(folder / "encapsulated_pdf.dcm", "1.2.840.10008.5.1.4.1.1.104.1", "DOC", EncapsulatedDocument=pdf)
    (folder / "notes.png").write_text("not a PNG")
    png = io.BytesIO()
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))).save(png, format="PNG")
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
