"""DICOM pixels: the real JPEG Baseline file, MONOCHROME1, 16-bit windowing, non-square."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from dualstage.data.dicom import read_dicom_header, read_dicom_pixels

REAL = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def write_dicom(path, array: np.ndarray, photometric="MONOCHROME2", **tags) -> None:
    """A minimal uncompressed Secondary Capture file holding ``array`` (uint8 or uint16)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = array.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    bits = array.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = tags.pop("BitsStored", bits)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = array.tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_real_jpeg_baseline_dicom(siim):
    image, header = read_dicom_pixels(siim / "dicom" / REAL)
    assert image.shape == (1024, 1024) and image.dtype == np.uint8
    assert header["transfer_syntax"] == "1.2.840.10008.1.2.4.50"
    assert header["patient_id"] == "16d7f894-55d7-4d95-8957-d18987f0e981"
    assert header["sex"] == "M" and header["age"] == 62 and header["view_position"] == "PA"
    assert 50 < image.mean() < 200  # a radiograph, not a blank


def test_monochrome1_is_inverted(siim):
    normal, _ = read_dicom_pixels(siim / "dicom" / REAL)
    inverted, header = read_dicom_pixels(siim / "dicom" / "Fake_MONOHR1.dcm")
    assert header["photometric"] == "MONOCHROME1"
    np.testing.assert_array_equal(inverted, 255 - normal)


def test_16bit_uses_file_window(tmp_path):
    arr = np.array([[0, 1000, 1500], [2000, 3000, 4095]], dtype=np.uint16)
    path = tmp_path / "w.dcm"
    write_dicom(path, arr, BitsStored=12, WindowCenter=2000, WindowWidth=1000)
    image, header = read_dicom_pixels(path)
    assert header["height"] == 2 and header["width"] == 3
    # values below 1500 clip to 0, above 2500 to 255, 2000 sits mid-window
    assert image[0, 0] == 0 and image[0, 1] == 0 and image[1, 1] == 255 and image[1, 2] == 255
    assert 120 <= image[1, 0] <= 135


def test_16bit_without_window_min_max_and_monochrome1(tmp_path):
    arr = np.array([[100, 200], [350, 500]], dtype=np.uint16)
    path = tmp_path / "m1.dcm"
    write_dicom(path, arr, photometric="MONOCHROME1")
    image, _ = read_dicom_pixels(path)
    np.testing.assert_array_equal(image, 255 - np.array([[0, 64], [159, 255]], dtype=np.uint8))


def test_non_square_header(tmp_path):
    path = tmp_path / "ns.dcm"
    write_dicom(path, np.zeros((20, 30), np.uint8), PatientID="p1", PatientAge="045Y")
    header = read_dicom_header(path)
    assert (header["height"], header["width"]) == (20, 30)
    assert header["patient_id"] == "p1" and header["age"] == 45


def test_broken_file_names_itself(tmp_path):
    path = tmp_path / "broken.dcm"
    path.write_bytes(b"not a dicom at all")
    with pytest.raises(ValueError, match="broken.dcm"):
        read_dicom_pixels(path)
    assert pydicom.__version__
