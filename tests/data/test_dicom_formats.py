"""A folder of DICOM files in every transfer syntax the decoders support, and broken ones.

Every decodable file reads to uint8 (H, W) matching its header; every broken or non-image
file raises a one-line ``ValueError`` that names the file and says why. Sources: pydicom's
bundled test files, the small fixtures in tests/data/dicom (JPEG Lossless and HTJ2K, made by
tests/data/make_dicom_fixtures.py) and files edited here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import AllTransferSyntaxes

from dualstage.data.dicom import to_uint8
from dualstage.data.images import image_shape, read_image_file
from helpers.dicom_files import BAD, BUNDLED_GOOD, SAME_MR, make_bad, make_good
from helpers.dicom_fixtures import synthetic, write_fixtures

N_FIXTURES = 5  # made at test time by write_fixtures: JPEG Lossless x 2, HTJ2K x 3


@pytest.fixture(scope="module")
def formats(tmp_path_factory) -> Path:
    """``good/`` (every decodable kind) and ``bad/`` (every broken or non-image kind)."""
    root = tmp_path_factory.mktemp("formats")
    (root / "good").mkdir()
    (root / "bad").mkdir()
    make_good(root / "good")
    make_bad(root / "bad")
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
