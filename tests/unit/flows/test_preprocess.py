"""Preprocessing against pixel values computed here by the PS3.3 formulas, one step at a time."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from flows.preprocess import (
    CT_WINDOWS,
    PixelDataUnusable,
    ct_slice_image,
    fit_square,
    gray_image,
    to_model_image,
)


def image(
    pixels: np.ndarray, *, photometric: str = "MONOCHROME2", bits_stored: int = 12, **attrs: object
) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    ds.PixelData = pixels.tobytes()
    return ds


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out literally, to 0..255 with rounding."""
    low = center - 0.5 - (width - 1) / 2
    high = center - 0.5 + (width - 1) / 2
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    y = np.where(x <= low, 0.0, np.where(x > high, 255.0, y))
    return np.rint(y).astype(np.uint8)


RAMP = np.arange(0, 4096, 16, dtype=np.uint16).reshape(16, 16)


def test_window_matches_the_standard_formula() -> None:
    ds = image(RAMP, WindowCenter=2000, WindowWidth=1000)
    assert np.array_equal(gray_image(ds), linear_window(RAMP.astype(float), 2000, 1000))


def test_monochrome1_is_inverted() -> None:
    ds = image(RAMP, photometric="MONOCHROME1", WindowCenter=2000, WindowWidth=1000)
    expected = 255 - linear_window(RAMP.astype(float), 2000, 1000)
    assert np.array_equal(gray_image(ds), expected)
    assert gray_image(ds)[0, 0] == 255  # the lowest stored value is white in MONOCHROME1


def test_rescale_slope_and_intercept_come_before_the_window() -> None:
    ds = image(RAMP, RescaleSlope=0.5, RescaleIntercept=-100, WindowCenter=700, WindowWidth=800)
    hu = RAMP.astype(float) * 0.5 - 100
    assert np.array_equal(gray_image(ds), linear_window(hu, 700, 800))


def test_signed_pixels_with_fewer_bits_stored_than_allocated() -> None:
    values = np.array([[-2048, -1, 0, 2047]], dtype=np.int16)
    # Garbage in the unused high bits must not change the result.
    dirty = (values.view(np.uint16) & 0x0FFF) | 0xA000
    ds = image(dirty.view(np.int16), WindowCenter=0, WindowWidth=4096)
    assert gray_image(ds).tolist() == linear_window(values.astype(float), 0, 4096).tolist()


def test_no_window_stretches_the_values_used() -> None:
    pixels = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    expected = np.rint((pixels - 100) / 400 * 255).astype(np.uint8)
    assert np.array_equal(gray_image(image(pixels)), expected)


def test_first_of_several_windows_is_used() -> None:
    ds = image(RAMP, WindowCenter=[1000, 3000], WindowWidth=[500, 2000])
    assert np.array_equal(gray_image(ds), linear_window(RAMP.astype(float), 1000, 500))


def test_sigmoid_window() -> None:
    ds = image(RAMP, WindowCenter=2048, WindowWidth=1024, VOILUTFunction="SIGMOID")
    expected = 255.0 / (1.0 + np.exp(-4.0 * (RAMP - 2048.0) / 1024.0))
    assert np.abs(gray_image(ds).astype(int) - np.rint(expected)).max() == 0


def test_voi_lut_sequence_wins_over_the_window() -> None:
    item = Dataset()
    item.LUTDescriptor = [256, 1000, 8]
    item.LUTData = list(range(255, -1, -1))  # a decreasing LUT: clearly not the window
    ds = image(RAMP, WindowCenter=2000, WindowWidth=1000, VOILUTSequence=Sequence([item]))
    index = np.clip(RAMP.astype(int) - 1000, 0, 255)
    expected = np.rint((255 - index) / 255 * 255).astype(np.uint8)
    assert np.array_equal(gray_image(ds), expected)


def test_voi_lut_bundled_file_matches_pydicom() -> None:
    ds = pydicom.dcmread(get_testdata_file("vlut_04.dcm"))
    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    reference = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    expected = np.rint(reference.astype(float) / (2**bits - 1) * 255).astype(np.uint8)
    assert np.array_equal(gray_image(ds), expected)


def test_modality_lut_bundled_file_matches_pydicom() -> None:
    ds = pydicom.dcmread(get_testdata_file("mlut_18.dcm"))
    values = apply_modality_lut(ds.pixel_array, ds).astype(float)
    expected = np.rint((values - values.min()) / (values.max() - values.min()) * 255)
    assert np.array_equal(gray_image(ds), expected.astype(np.uint8))


def test_multi_frame_uses_the_middle_frame() -> None:
    frames = np.stack([np.full((4, 4), 100 * (i + 1), dtype=np.uint16) for i in range(5)])
    frames[:, 0, 0] = 0
    ds = image(frames, WindowCenter=150, WindowWidth=301)
    out = gray_image(ds)
    assert out[1, 1] == linear_window(np.array([300.0]), 150, 301)[0] == 255
    assert gray_image(ds, frame=0)[1, 1] == linear_window(np.array([100.0]), 150, 301)[0]


def test_multi_frame_bundled_file() -> None:
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))  # 10 frames, no window
    frame = ds.pixel_array[5].astype(float)
    expected = np.rint((frame - frame.min()) / (frame.max() - frame.min()) * 255)
    assert np.array_equal(gray_image(ds), expected.astype(np.uint8))


def test_per_frame_functional_groups_supply_rescale_and_window() -> None:
    frames = np.stack([RAMP, RAMP])
    per_frame = []
    for center in (1000, 3000):
        voi, pixel = Dataset(), Dataset()
        voi.WindowCenter, voi.WindowWidth = center, 1000
        pixel.RescaleSlope, pixel.RescaleIntercept = 1, -24
        group = Dataset()
        group.FrameVOILUTSequence = Sequence([voi])
        group.PixelValueTransformationSequence = Sequence([pixel])
        per_frame.append(group)
    ds = image(frames, PerFrameFunctionalGroupsSequence=Sequence(per_frame))
    expected = linear_window(RAMP.astype(float) - 24, 3000, 1000)  # frame 1 is the middle
    assert np.array_equal(gray_image(ds), expected)


def test_model_image_is_rgb_square_and_padded() -> None:
    pixels = np.full((200, 100), 4000, dtype=np.uint16)
    out = to_model_image(image(pixels, WindowCenter=2000, WindowWidth=1000), size=64)
    assert out.mode == "RGB" and out.size == (64, 64)
    arr = np.asarray(out)
    assert arr[32, 32].tolist() == [255, 255, 255]  # the image, centred
    assert arr[32, 2].tolist() == [0, 0, 0] and arr[32, 61].tolist() == [0, 0, 0]  # padding


def test_fit_square_downscales_large_images_with_area_averaging() -> None:
    from PIL import Image

    checker = (np.indices((2500, 2048)).sum(axis=0) % 2 * 255).astype(np.uint8)
    out = np.asarray(fit_square(Image.fromarray(checker), 896))
    body = out[:, (896 - 734) // 2 + 2 : (896 + 734) // 2 - 2]
    assert abs(float(body.mean()) - 127.5) < 2 and body.std() < 3  # no aliasing


def test_ct_windows_map_to_rgb_channels() -> None:
    hu = np.array([[-1024, -135, 0, 40, 80, 215, 1024, 3000]], dtype=np.int16)
    ds = image(hu + 1024, bits_stored=16, RescaleSlope=1, RescaleIntercept=-1024)
    ds.PixelData = (hu + 1024).astype(np.int16).tobytes()
    ds.PixelRepresentation = 1
    rgb = np.asarray(ct_slice_image(ds, size=8))[3]  # the one image row, centred by padding
    for channel, (low, high) in enumerate(CT_WINDOWS):
        expected = np.rint(np.clip((hu[0] - low) / (high - low), 0, 1) * 255)
        assert rgb[:, channel].tolist() == expected.astype(int).tolist()
    assert CT_WINDOWS[1] == (-135.0, 215.0)


def test_bundled_ct_slice() -> None:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = apply_modality_lut(ds.pixel_array, ds).astype(float)
    out = np.asarray(ct_slice_image(ds, size=128))
    expected = np.rint(np.clip((hu - 0) / 80, 0, 1) * 255)
    assert np.array_equal(out[:, :, 2], expected.astype(np.uint8))


def test_color_image_goes_through_as_rgb() -> None:
    ds = pydicom.dcmread(get_testdata_file("SC_rgb.dcm"))
    out = np.asarray(to_model_image(ds, size=100))
    assert np.array_equal(out, ds.pixel_array)


def test_missing_pixel_data_is_a_prelim_error() -> None:
    ds = image(RAMP)
    del ds.PixelData
    with pytest.raises(PixelDataUnusable):
        to_model_image(ds)
