"""Preprocessing: stored pixel values to the 8-bit RGB image MedGemma's processor takes.

Grayscale images go through one lookup table per image: every possible stored
value (2**BitsAllocated of them, at most 65536) is taken through the modality
LUT or rescale, the VOI LUT or window, MONOCHROME1 inversion and 8-bit rounding
once, and the pixels are then mapped with a single ``numpy.take``. The result is
the same as applying each step to every pixel (the steps are pointwise), without
a float image in memory. Resizing happens after the lookup, on 8-bit values, so
it is exact with respect to the display pipeline; Pillow's ``reducing_gap`` box-
reduces by an integer factor before the final filter, which keeps it fast.

Shape: MedGemma's image processor resizes every image to 896x896 without keeping
the aspect ratio. We scale the long side to ``size`` and pad the short side with
black, centred, so anatomy is not distorted; the processor's own resize is then
a no-op.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from prelim.errors import PrelimError

# Google's CT notebook maps three HU windows to the R, G and B channels. Its
# serving code writes the middle one as (+135, 215), an 80 HU band at the top of
# the soft-tissue range; the notebook writes (-135, 215), i.e. W350/L40, the
# standard soft-tissue window, which the other two (wide and brain) bracket. We
# take -135: it is the one the notebook's published examples use, and +135 would
# leave unenhanced soft tissue black in that channel.
CT_WINDOWS: tuple[tuple[float, float], ...] = ((-1024.0, 1024.0), (-135.0, 215.0), (0.0, 80.0))

_NATIVE = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian})


class PixelDataUnusable(PrelimError):
    """The image's pixel data cannot be turned into a model image."""


def representative_frame(ds: Dataset) -> int:
    """The frame shown for a multi-frame image: the middle one."""
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    return frames // 2


def frame_attr(ds: Dataset, frame: int, group: str, keyword: str) -> object | None:
    """``keyword`` from the dataset, else the frame's functional group, else the shared one."""
    value = ds.get(keyword)
    if value is not None:
        return value
    places = (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0))
    for groups, index in places:
        seq = ds.get(groups)
        if seq is not None and len(seq) > index:
            inner = seq[index].get(group)
            if inner is not None and len(inner) > 0 and keyword in inner[0]:
                return inner[0].get(keyword)
    return None


def _first(value: object) -> float:
    if not isinstance(value, str) and hasattr(value, "__len__"):
        value = value[0]  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def _pattern_values(ds: Dataset, width: int) -> np.ndarray:
    """The stored value each bit pattern of ``width`` bits stands for."""
    patterns = np.arange(1 << width, dtype=np.int64)
    bits_stored = min(max(int(ds.get("BitsStored", width) or width), 1), width)
    values = patterns & ((1 << bits_stored) - 1)
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        # Two's complement in BitsStored bits; also right for decoders that sign-extend.
        values = np.where(values >= 1 << (bits_stored - 1), values - (1 << bits_stored), values)
    return values


def _lut_lookup(item: Dataset, values: np.ndarray) -> tuple[np.ndarray, int]:
    """Apply a Modality or VOI LUT item; returns the output and its bit depth."""
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        data = np.frombuffer(data, "<u2")
    table = np.asarray(data, dtype=np.float64).reshape(-1)[:entries]
    index = np.clip(np.rint(values) - first, 0, len(table) - 1).astype(np.int64)
    return table[index], bits


def modality_values(ds: Dataset, frame: int, values: np.ndarray) -> np.ndarray:
    """Stored values through the Modality LUT, or Rescale Slope and Intercept."""
    seq = ds.get("ModalityLUTSequence")
    if seq is not None and len(seq) > 0:
        return _lut_lookup(seq[0], values)[0]
    slope = frame_attr(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
    intercept = frame_attr(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
    if slope is None and intercept is None:
        return values
    return values * (1.0 if slope is None else float(slope)) + (  # type: ignore[arg-type]
        0.0 if intercept is None else float(intercept)  # type: ignore[arg-type]
    )


def display_values(
    ds: Dataset, frame: int, values: np.ndarray, value_range: tuple[float, float]
) -> np.ndarray:
    """Modality values -> [0, 1] display values: VOI LUT, else window, else the value range.

    The VOI LUT Sequence wins over a window when both are present, as in pydicom.
    MONOCHROME1 is inverted here so that bright means dense for every image.
    """
    seq = ds.get("VOILUTSequence")
    center = frame_attr(ds, frame, "FrameVOILUTSequence", "WindowCenter")
    width = frame_attr(ds, frame, "FrameVOILUTSequence", "WindowWidth")
    if seq is not None and len(seq) > 0:
        out, bits = _lut_lookup(seq[0], values)
        top = float((1 << bits) - 1) if bits > 0 else float(out.max() or 1.0)
        unit = out / top
    elif center is not None and width is not None:
        function = str(frame_attr(ds, frame, "FrameVOILUTSequence", "VOILUTFunction") or "LINEAR")
        unit = window(values, _first(center), _first(width), function.strip().upper())
    else:
        low, high = value_range
        unit = (values - low) / (high - low) if high > low else np.zeros_like(values)
    unit = np.clip(unit, 0.0, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        unit = 1.0 - unit
    return unit


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """PS3.3 C.11.2.1.2 windowing to [0, 1] (LINEAR, LINEAR_EXACT or SIGMOID)."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / max(width, 1e-6)))
    if function == "LINEAR_EXACT":
        width = max(width, 1e-6)
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    width = max(width, 1.0)
    if width == 1.0:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)


def hu_lut(ds: Dataset, frame: int, width: int) -> np.ndarray:
    """Stored bit pattern -> Hounsfield units, for every pattern of ``width`` bits."""
    return modality_values(ds, frame, _pattern_values(ds, width).astype(np.float64))


def stored_values(ds: Dataset, frame: int = 0) -> np.ndarray:
    """One frame's stored values as decoded from the pixel data, without copying when native."""
    if "PixelData" not in ds:
        raise PixelDataUnusable("the image has no pixel data")
    rows, cols = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    bits = int(ds.BitsAllocated)
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax in _NATIVE and samples == 1 and bits in (8, 16):
        # Native little-endian: a view on the bytes, the fastest path there is.
        dtype = np.uint8 if bits == 8 else np.dtype("<u2")
        count = rows * cols
        data = ds.PixelData
        if len(data) >= (frame + 1) * count * (bits // 8):
            offset = frame * count * (bits // 8)
            return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(rows, cols)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        return pixel_array(ds, index=frame if frames > 1 else None)
    except Exception as exc:  # every decoder plugin raises its own types
        raise PixelDataUnusable(f"pixel data could not be decoded ({type(exc).__name__})") from exc


def gray_image(ds: Dataset, frame: int | None = None) -> np.ndarray:
    """The frame as 8-bit display values: modality, VOI, MONOCHROME1 inversion applied."""
    index = representative_frame(ds) if frame is None else frame
    stored = stored_values(ds, index)
    if stored.ndim != 2:
        raise PixelDataUnusable(f"unexpected pixel array shape {stored.shape}")
    if stored.dtype.kind in "ui" and stored.dtype.itemsize <= 2:
        lut = display_lut(ds, index, stored)
        return np.take(lut, stored.view(_unsigned(stored)))
    # 32-bit or float pixel data: the same steps on the values themselves.
    values = modality_values(ds, index, stored.astype(np.float64))
    return _to_uint8(display_values(ds, index, values, _value_range(values)))


def display_lut(ds: Dataset, frame: int, stored: np.ndarray) -> np.ndarray:
    """Stored bit pattern -> 8-bit display value, for every pattern of the image's width."""
    width = 16 if stored.dtype.itemsize == 2 else 8
    modality = modality_values(ds, frame, _pattern_values(ds, width).astype(np.float64))
    value_range = (0.0, 0.0)
    if not _has_voi(ds, frame):
        # No VOI: stretch over the values the image actually uses.
        used = np.bincount(stored.ravel().view(_unsigned(stored)), minlength=1 << width)
        value_range = _value_range(modality[used > 0])
    return _to_uint8(display_values(ds, frame, modality, value_range))


def _unsigned(stored: np.ndarray) -> type[np.unsignedinteger]:
    return np.uint16 if stored.dtype.itemsize == 2 else np.uint8


def _has_voi(ds: Dataset, frame: int) -> bool:
    center = frame_attr(ds, frame, "FrameVOILUTSequence", "WindowCenter")
    return "VOILUTSequence" in ds or center is not None


def _value_range(values: np.ndarray) -> tuple[float, float]:
    if values.size == 0:
        return 0.0, 0.0
    return float(values.min()), float(values.max())


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounded to nearest."""
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def fit_square(image: Image.Image, size: int) -> Image.Image:
    """Scale the long side to ``size`` and pad the short side with black, centred."""
    width, height = image.size
    scale = size / max(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    if new != image.size:
        factor = int(1 / scale)
        if factor >= 2:
            # Box-average by the integer part first: most of the work, at memory speed;
            # the bicubic filter then only covers the remaining factor (< 2).
            image = image.reduce(factor)
        if image.size != new:
            image = image.resize(new, Image.Resampling.BICUBIC)
    if new == (size, size):
        return image
    canvas = Image.new(image.mode, (size, size), 0)
    canvas.paste(image, ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


def _rgb(gray: Image.Image) -> Image.Image:
    return Image.merge("RGB", (gray, gray, gray))


def to_model_image(ds: Dataset, *, size: int = 896) -> Image.Image:
    """An X-ray or other image as the model sees it: 8-bit RGB, ``size`` x ``size``."""
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 3:
        rgb = _color_frame(ds)
        return fit_square(Image.fromarray(rgb, "RGB"), size)
    gray = gray_image(ds)
    return _rgb(fit_square(Image.fromarray(gray, "L"), size))


def _color_frame(ds: Dataset) -> np.ndarray:
    frame = representative_frame(ds)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        rgb = pixel_array(ds, index=frame if frames > 1 else None)  # YBR converted to RGB
    except Exception as exc:
        raise PixelDataUnusable(f"pixel data could not be decoded ({type(exc).__name__})") from exc
    if rgb.dtype != np.uint8:
        top = float((1 << int(ds.get("BitsStored", 8))) - 1)
        rgb = _to_uint8(rgb.astype(np.float32) / top)
    return np.ascontiguousarray(rgb)


def ct_slice_image(ds: Dataset, *, size: int = 896) -> Image.Image:
    """A CT slice as RGB: R, G and B are the -1024..1024, -135..215 and 0..80 HU windows."""
    frame = representative_frame(ds)
    stored = stored_values(ds, frame)
    if stored.ndim != 2 or stored.dtype.kind not in "ui" or stored.dtype.itemsize > 2:
        raise PixelDataUnusable("CT pixel data is not 8- or 16-bit grayscale")
    hu = hu_lut(ds, frame, 16 if stored.dtype.itemsize == 2 else 8)
    channels = [np.clip((hu - lo) / (hi - lo), 0.0, 1.0) for lo, hi in CT_WINDOWS]
    lut = _to_uint8(np.stack(channels, axis=1))  # (patterns, 3)
    rgb = np.take(lut, stored.view(_unsigned(stored)), axis=0)
    return fit_square(Image.fromarray(rgb, "RGB"), size)
