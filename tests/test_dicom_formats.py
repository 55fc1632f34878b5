"""A folder of DICOM files in every transfer syntax the decoders support, and broken ones.

Every decodable file reads to uint8 (H, W) matching its header; every broken or non-image
file raises a one-line ``ValueError`` that names the file and says why. Sources: pydicom's
bundled test files, the small fixtures in tests/data/dicom (JPEG Lossless and HTJ2K, made by
tests/data/make_dicom_fixtures.py) and files edited here.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import synthetic, write_fixtures  # noqa: E402  (tests/ is on sys.path)
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import get_decoder
from pydicom.uid import AllTransferSyntaxes, ExplicitVRLittleEndian, generate_uid

from dualstage.data.dicom import to_uint8
from dualstage.data.images import image_shape, read_image_file

N_FIXTURES = 5  # made at test time by write_fixtures: JPEG Lossless x 2, HTJ2K x 3

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


def _bundled(name: str) -> Path:
    return Path(get_testdata_file(name))


def _refragment(source: str, out: Path, edit, syntax: str | None = None) -> None:
    """Copy a bundled encapsulated file with its frames passed through ``edit`` (bytes -> bytes)."""
    ds = pydicom.dcmread(_bundled(source))
    frames = generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1) or 1))
    ds.PixelData = encapsulate([edit(f) for f in frames])
    if syntax:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(out)


def _without_meta(source: str, out: Path, implicit: bool, little: bool) -> None:
    """A bundled file rewritten as a bare dataset: no preamble, no 'DICM', no file meta."""
    ds = pydicom.dcmread(_bundled(source))
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


def _make_good(folder: Path) -> None:
    for name, source in BUNDLED_GOOD.items():
        shutil.copy(_bundled(source), folder / name)
    write_fixtures(folder, prefix="fixture_")
    raw = _bundled("MR_small.dcm").read_bytes()
    (folder / "no_preamble.dcm").write_bytes(raw[132:])  # starts with the group 0002 meta
    _without_meta("MR_small_implicit.dcm", folder / "no_meta_implicit_le.dcm", True, True)
    _without_meta("MR_small_bigendian.dcm", folder / "no_meta_explicit_be.dcm", False, False)
    ds = pydicom.dcmread(_bundled("MR_small.dcm"))
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(folder / "monochrome1_signed16.dcm")


def _make_bad(folder: Path) -> None:
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "notes.dcm").write_text("Patient notes: chest pain, rule out pneumothorax.\n")
    (folder / "dicm_then_garbage.dcm").write_bytes(bytes(128) + b"DICM" + bytes(range(256)) * 2)
    raw = _bundled("MR_small.dcm").read_bytes()
    (folder / "header_cut_short.dcm").write_bytes(raw[:200])
    (folder / "cut_in_pixel_data.dcm").write_bytes(raw[: int(len(raw) * 0.7)])
    ds = pydicom.dcmread(_bundled("MR_small.dcm"))
    del ds.PixelData
    ds.save_as(folder / "header_only.dcm")
    ds = pydicom.dcmread(_bundled("MR_small.dcm"))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(folder / "pixel_data_too_short.dcm")
    _refragment("SC_rgb_jpeg_dcmtk.dcm", folder / "jpeg_truncated.dcm", lambda f: f[: len(f) // 3])
    _refragment("MR_small_jp2klossless.dcm", folder / "j2k_truncated.dcm", lambda f: f[: len(f) // 2])
    zeroed = lambda f: f[:40] + bytes(len(f) - 42) + f[-2:]  # noqa: E731
    _refragment("MR_small_jp2klossless.dcm", folder / "j2k_zeroed_stream.dcm", zeroed)
    _refragment("MR_small_RLE.dcm", folder / "rle_truncated.dcm", lambda f: f[: len(f) // 2])
    _refragment("MR_small_jp2klossless.dcm", folder / "mpeg2_video.dcm", bytes, "1.2.840.10008.1.2.4.100")
    shutil.copy(_bundled("JPEG-lossy.dcm"), folder / "jpeg_invalid_scan.dcm")  # invalid SOS
    shutil.copy(_bundled("JPEG2000-embedded-sequence-delimiter.dcm"), folder / "j2k_embedded_delimiter.dcm")
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
        shutil.copy(_bundled(source), folder / name)
    shutil.copy(_bundled("CT_small.dcm").parent / "dicomdirtests" / "DICOMDIR", folder / "dicomdir.dcm")
    _object(folder / "presentation_state.dcm", "1.2.840.10008.5.1.4.1.1.11.1", "PR")
    pdf = b"%PDF-1.4\n%%EOF\n"
    _object(folder / "encapsulated_pdf.dcm", "1.2.840.10008.5.1.4.1.1.104.1", "DOC", EncapsulatedDocument=pdf)
    (folder / "notes.png").write_text("not a PNG")
    png = io.BytesIO()
    Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))).save(png, format="PNG")
    (folder / "truncated.png").write_bytes(png.getvalue()[: len(png.getvalue()) // 2])


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> Path:
    """``good/`` (every decodable kind) and ``bad/`` (every broken or non-image kind)."""
    root = tmp_path_factory.mktemp("formats")
    (root / "good").mkdir()
    (root / "bad").mkdir()
    _make_good(root / "good")
    _make_bad(root / "bad")
    return root


def test_every_decodable_file_reads_to_uint8(formats):
    good = sorted((formats / "good").iterdir())
    assert len(good) == len(BUNDLED_GOOD) + N_FIXTURES + 4
    syntaxes = set()
    for path in good:
        image, info = read_image_file(path)
        assert image.dtype == np.uint8 and image.ndim == 2, path.name
        assert image.shape == (info["height"], info["width"]) == image_shape(path), path.name
        assert image.max() > image.min(), f"{path.name}: blank image"
        assert info["frame"] == 0 and info["n_frames"] >= 1
        syntaxes.add(info["transfer_syntax"])
    assert syntaxes == _decodable_syntaxes()  # 16 with the pylibjpeg plug-ins


def _decodable_syntaxes() -> set[str]:
    """Every transfer syntax pydicom can decode with the installed plug-ins."""
    out = set()
    for syntax in AllTransferSyntaxes:
        try:
            if get_decoder(syntax).is_available:
                out.add(str(syntax))
        except NotImplementedError:
            continue
    return out


def test_lossless_encodings_agree(formats):
    images = {name: read_image_file(formats / "good" / name)[0] for name in SAME_MR}
    reference = images[SAME_MR[0]]
    for name, image in images.items():
        np.testing.assert_array_equal(image, reference, err_msg=name)
    inverted, info = read_image_file(formats / "good" / "monochrome1_signed16.dcm")
    assert info["photometric"] == "MONOCHROME1"
    np.testing.assert_array_equal(inverted, 255 - reference)


def test_fixtures_decode_losslessly(tmp_path):
    fixtures = tmp_path / "fixtures"
    for path in write_fixtures(fixtures):
        ds = pydicom.dcmread(path)
        if "lossy" in path.name:
            continue
        np.testing.assert_array_equal(ds.pixel_array, synthetic(int(ds.BitsStored)), err_msg=path.name)
    p14, _ = read_image_file(fixtures / "jpeg_lossless_p14_pred6_16bit.dcm")  # MONOCHROME1
    sv1, _ = read_image_file(fixtures / "jpeg_lossless_sv1_12bit.dcm")
    assert np.abs(p14.astype(int) - (255 - sv1.astype(int))).max() <= 1


def test_colour_and_multiframe(formats):
    good = formats / "good"
    rgb, _ = read_image_file(good / "rle_rgb.dcm")
    for name in ("jpeg_baseline_ybr_full.dcm", "native_ybr_full_422.dcm", "rle_rgb_16bit_2_frames.dcm"):
        assert np.abs(read_image_file(good / name)[0].astype(int) - rgb).mean() < 3, name
    image, info = read_image_file(good / "jpeg_baseline_30_frames_ybr.dcm")
    assert info["n_frames"] == 30 and info["frame"] == 0 and image.shape == (240, 320)
    frames = pydicom.dcmread(good / "rle_rgb_16bit_2_frames.dcm").pixel_array  # (2, H, W, 3)
    luma = frames[0].astype(float) @ [0.299, 0.587, 0.114]
    expected = np.rint((luma - luma.min()) * 255 / (luma.max() - luma.min()))
    assert np.abs(read_image_file(good / "rle_rgb_16bit_2_frames.dcm")[0] - expected).max() <= 1


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_file_is_one_line_value_error(formats, name):
    path = formats / "bad" / name
    with pytest.raises(ValueError) as info:
        read_image_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert BAD[name] in message, message


def test_at_least_ten_broken_files_and_headers(formats):
    assert len(BAD) >= 10 and len(list((formats / "bad").iterdir())) == len(BAD)
    # non-image objects are refused from their header already (predict reads headers first)
    for name in ("sr_basic_text.dcm", "rt_plan.dcm", "ecg_waveform.dcm", "empty.dcm", "dicomdir.dcm"):
        with pytest.raises(ValueError, match="not a readable DICOM image"):
            image_shape(formats / "bad" / name)


def test_voi_lut_sequence_output_range_maps_to_0_255():
    ds = Dataset()
    ds.BitsAllocated, ds.BitsStored, ds.PixelRepresentation = 16, 12, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    lut = Dataset()
    lut.LUTDescriptor, lut.LUTData = [4096, 0, 12], [int(v) for v in np.arange(4096) // 2]
    ds.VOILUTSequence = [lut]
    arr = np.array([[0, 1000], [3000, 4095]], np.uint16)
    np.testing.assert_array_equal(to_uint8(ds, arr), [[0, 62], [187, 255]])
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, 0.0  # the LUT reads modality output values
    np.testing.assert_array_equal(to_uint8(ds, arr), [[0, 31], [93, 128]])  # 2047.5 rounds to 2048
