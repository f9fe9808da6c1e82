"""Preprocessing ms per chest X-ray: ours against the straightforward chain, in one run.

``python -m bench.preprocess [--count 20]``. The straightforward chain is
pydicom's ``pixel_array``, ``apply_modality_lut``, ``apply_voi_lut``, a min-max
stretch to 8 bits, RGB and Pillow's ``thumbnail`` to 896. Both start from the
same parsed 2500x2048 16-bit datasets.
"""

from __future__ import annotations

import argparse
import io
import platform
import time
from collections.abc import Callable, Sequence

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from flows.preprocess import to_model_image
from prelim.synthetic import make_cxr_study


def straightforward(ds: Dataset) -> Image.Image:
    arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    low, high = float(arr.min()), float(arr.max())
    gray = ((arr - low) / max(high - low, 1e-9) * 255.0).astype(np.uint8)
    image = Image.fromarray(gray).convert("RGB")
    image.thumbnail((896, 896), Image.Resampling.BICUBIC)
    return image


def ms_per_image(blobs: list[bytes], run: Callable[[Dataset], Image.Image]) -> float:
    datasets = [pydicom.dcmread(io.BytesIO(blob)) for blob in blobs]  # fresh: no cached arrays
    start = time.perf_counter()
    for ds in datasets:
        run(ds)
    return (time.perf_counter() - start) * 1000.0 / len(datasets)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args(argv)
    blobs = []
    for seed in range(4):
        for ds in make_cxr_study(seed, rows=2500, columns=2048, views=("PA",)):
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            blobs.append(buffer.getvalue())
    blobs = (blobs * (args.count // len(blobs) + 1))[: args.count]
    print(
        f"machine: {platform.machine()}, {platform.python_version()}, pydicom {pydicom.__version__}"
    )
    ms_per_image(blobs[:2], straightforward)  # warm-up, both
    ms_per_image(blobs[:2], to_model_image)
    peer = ms_per_image(blobs, straightforward)
    ours = ms_per_image(blobs, to_model_image)
    print(f"CXR 2500x2048 16-bit, {len(blobs)} images:")
    print(f"  straightforward {peer:6.1f} ms  ours {ours:6.1f} ms  ratio {peer / ours:.2f}x")


if __name__ == "__main__":
    main()
