"""Each compressed transfer syntax decodes to the expected pixel values.

Expected values come from an uncompressed original: pydicom's bundled pairs,
images we compress with pydicom's encoders, and images DCMTK's ``dcmcjpeg``
compresses (pydicom has no JPEG encoder).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from flows.preprocess import gray_image, to_model_image
from prelim.synthetic import make_cxr_study

DCMCJPEG = Path("/usr/bin/dcmcjpeg")


@pytest.mark.parametrize(
    "name",
    ["emri_small_RLE.dcm", "emri_small_jpeg_ls_lossless.dcm", "emri_small_jpeg_2k_lossless.dcm"],
)
def test_bundled_lossless_multiframe_equals_uncompressed(name: str) -> None:
    reference = gray_image(pydicom.dcmread(get_testdata_file("emri_small.dcm")))
    assert np.array_equal(gray_image(pydicom.dcmread(get_testdata_file(name))), reference)


@pytest.mark.parametrize(
    "name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"]
)
def test_bundled_lossless_signed_equals_uncompressed(name: str) -> None:
    reference = gray_image(pydicom.dcmread(get_testdata_file("MR_small.dcm")))
    assert np.array_equal(gray_image(pydicom.dcmread(get_testdata_file(name))), reference)


def test_bundled_jpeg_baseline_color_close_to_uncompressed() -> None:
    reference = np.asarray(to_model_image(pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))))
    lossy = np.asarray(to_model_image(pydicom.dcmread(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"))))
    assert np.abs(reference.astype(int) - lossy).mean() < 2


def test_bundled_jpeg_lossless_8bit() -> None:
    ds = pydicom.dcmread(get_testdata_file("JPGLosslessP14SV1_1s_1f_8b.dcm"))
    out = gray_image(ds)
    assert out.shape == (ds.Rows, ds.Columns) and out.std() > 10


def cxr(rows: int = 64, columns: int = 48) -> Dataset:
    ds = make_cxr_study(11, rows=rows, columns=columns, views=("PA",))[0]
    ds.WindowCenter, ds.WindowWidth = 2200, 2400
    return ds


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_pydicom_encoded_lossless_equals_original(syntax: str) -> None:
    original = cxr()
    expected = gray_image(original)
    compressed = cxr()
    compressed.compress(syntax)
    assert compressed.file_meta.TransferSyntaxUID == syntax
    assert np.array_equal(gray_image(compressed), expected)


@pytest.mark.dcmtk
@pytest.mark.parametrize(
    ("flag", "syntax_name", "tolerance"),
    [
        ("+e1", "JPEG Lossless, Non-Hierarchical, First-Order Prediction", 0.0),
        ("+el", "JPEG Lossless, Non-Hierarchical (Process 14)", 0.0),
        ("+ee", "JPEG Extended", 1.5),
    ],
)
def test_dcmtk_encoded_jpeg(tmp_path: Path, flag: str, syntax_name: str, tolerance: float) -> None:
    original = cxr()
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    original.save_as(src, enforce_file_format=True)
    subprocess.run([str(DCMCJPEG), flag, str(src), str(dst)], check=True, capture_output=True)
    ds = pydicom.dcmread(dst)
    assert ds.file_meta.TransferSyntaxUID.name.startswith(syntax_name)
    diff = np.abs(gray_image(ds).astype(int) - gray_image(original))
    assert diff.mean() <= tolerance


@pytest.mark.dcmtk
def test_dcmtk_encoded_jpeg_baseline_8bit(tmp_path: Path) -> None:
    original = cxr()
    pixels = (original.pixel_array >> 4).astype(np.uint8)
    original.BitsAllocated, original.BitsStored, original.HighBit = 8, 8, 7
    original.WindowCenter, original.WindowWidth = 128, 256
    original.PixelData = pixels.tobytes()
    src, dst = tmp_path / "in.dcm", tmp_path / "out.dcm"
    original.save_as(src, enforce_file_format=True)
    subprocess.run([str(DCMCJPEG), "+eb", str(src), str(dst)], check=True, capture_output=True)
    ds = pydicom.dcmread(dst)
    assert ds.file_meta.TransferSyntaxUID.name.startswith("JPEG Baseline")
    assert np.abs(gray_image(ds).astype(int) - gray_image(original)).mean() < 2
