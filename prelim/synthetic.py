"""Deterministic synthetic DICOM studies: chest X-rays and CT series.

Every value (names, identifiers, UIDs, pixels) follows from ``seed``, so a test
or a benchmark regenerates the same bytes. The identifiers look real on purpose:
they exercise the PHI boundary. Sizes are parameters, so the benchmark's
2500x2048 radiographs and the demo's small studies come from the same code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

_ROOT = "2.25."
_GIVEN = ["ALEX", "SAM", "JORDAN", "TAYLOR", "MORGAN", "CASEY", "RILEY", "JAMIE"]
_FAMILY = ["SMITH", "GARCIA", "NGUYEN", "MULLER", "ROSSI", "KOWALSKI", "SATO", "OKAFOR"]


def make_uid(*parts: object) -> str:
    """A stable UID under the 2.25 (UUID-derived) root, from any seed parts."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return _ROOT + str(int.from_bytes(digest[:16], "big"))


def _patient(seed: int, ds: Dataset, study_date: str) -> None:
    rng = np.random.default_rng([seed, 1])
    age = int(rng.integers(18, 90))
    year = int(study_date[:4]) - age
    ds.PatientName = f"{_FAMILY[seed % len(_FAMILY)]}^{_GIVEN[(seed // 8) % len(_GIVEN)]}"
    ds.PatientID = f"MRN{seed:07d}"
    ds.PatientBirthDate = f"{year:04d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    ds.PatientSex = "F" if seed % 2 else "M"
    ds.PatientAge = f"{age:03d}Y"


def _study(seed: int, ds: Dataset, modality: str, description: str) -> None:
    ds.StudyInstanceUID = make_uid("study", modality, seed)
    ds.StudyDate = f"2025{(seed % 12) + 1:02d}{(seed % 28) + 1:02d}"
    ds.StudyTime = f"{8 + seed % 10:02d}{seed % 60:02d}00"
    ds.StudyID = str(seed % 100000)
    ds.AccessionNumber = f"ACC{seed:09d}"
    ds.ReferringPhysicianName = "WELBY^MARCUS"
    ds.StudyDescription = description
    ds.Modality = modality
    ds.Manufacturer = "PRELIM SYNTHETIC"
    ds.InstitutionName = "GENERAL HOSPITAL"


def _finish(ds: Dataset, sop_class: str, sop_uid: str) -> Dataset:
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


def chest_image(rows: int, columns: int, seed: int, lateral: bool = False) -> np.ndarray:
    """A plausible 12-bit chest radiograph: lungs dark, mediastinum, spine and ribs bright."""
    rng = np.random.default_rng([seed, 2, int(lateral)])
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, columns, dtype=np.float32)[None, :]
    body = np.clip(1.2 - (x / 0.95) ** 2 - (y / 1.1) ** 4, 0, 1)
    img = 1400.0 + 1500.0 * body
    if lateral:
        lung = np.exp(-((((x - 0.05) / 0.45) ** 2 + ((y + 0.05) / 0.6) ** 2) ** 2))
        img -= 1300.0 * lung
        img += 900.0 * np.exp(-(((x - 0.55) / 0.08) ** 2))  # spine, posterior
    else:
        for side in (-1.0, 1.0):
            lung = np.exp(-((((x - side * 0.42) / 0.3) ** 2 + ((y + 0.05) / 0.62) ** 2) ** 2))
            img -= 1400.0 * lung
        img += 700.0 * np.exp(-((x / 0.09) ** 2))  # spine and mediastinum
        img += 500.0 * np.exp(-(((x + 0.12) / 0.2) ** 2 + ((y - 0.25) / 0.25) ** 2))  # heart
    ribs = 0.5 + 0.5 * np.sin(y * 28.0 + np.abs(x) * 6.0)
    img += 180.0 * ribs * body
    img += rng.normal(0.0, 25.0, size=(rows, columns)).astype(np.float32)
    return np.clip(img, 0, 4095).astype(np.uint16)


def make_cxr_study(
    seed: int = 0,
    *,
    rows: int = 512,
    columns: int = 512,
    views: Sequence[str] = ("PA", "LL"),
) -> list[Dataset]:
    """A chest X-ray study: one 16-bit (12 stored) DX image per view (PA, LL, AP...)."""
    datasets = []
    series_uid = make_uid("series", "cxr", seed)
    for number, view in enumerate(views, start=1):
        ds = Dataset()
        _patient(seed, ds, "2025")
        _study(seed, ds, "DX", "XR CHEST 2 VIEWS" if len(views) > 1 else "XR CHEST 1 VIEW")
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 1
        ds.InstanceNumber = number
        ds.ViewPosition = view
        ds.BodyPartExamined = "CHEST"
        ds.PatientOrientation = ["A", "F"] if view == "LL" else ["L", "F"]
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.BurnedInAnnotation = "NO"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelSpacing = [0.15, 0.15]
        ds.WindowCenter = 2048
        ds.WindowWidth = 4096
        ds.PixelData = chest_image(rows, columns, seed * 16 + number, view == "LL").tobytes()
        datasets.append(
            _finish(ds, DigitalXRayImageStorageForPresentation, make_uid("cxr", seed, number))
        )
    return datasets


def make_ct_series(
    seed: int = 0, *, slices: int = 40, rows: int = 512, columns: int = 512
) -> list[Dataset]:
    """An axial chest CT series of ``slices`` slices, signed 16-bit with rescale to HU."""
    series_uid = make_uid("series", "ct", seed)
    frame_uid = make_uid("frame", "ct", seed)
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, columns, dtype=np.float32)[None, :]
    body = ((x / 0.85) ** 2 + (y / 0.65) ** 2) < 1.0
    datasets = []
    for index in range(slices):
        z = -300.0 + 2.5 * index
        rng = np.random.default_rng([seed, 3, index])
        hu = np.full((rows, columns), -1000.0, dtype=np.float32)
        hu[body] = 40.0
        for side in (-1.0, 1.0):
            lung = ((x - side * 0.38) / 0.3) ** 2 + (y / (0.45 + 0.05 * np.sin(index / 9))) ** 2
            hu[lung < 1.0] = -850.0
        hu[((x / 0.07) ** 2 + ((y - 0.45) / 0.07) ** 2) < 1.0] = 700.0  # vertebra
        hu += rng.normal(0.0, 12.0, size=hu.shape).astype(np.float32)
        ds = Dataset()
        _patient(seed, ds, "2025")
        _study(seed, ds, "CT", "CT CHEST WITHOUT CONTRAST")
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.SeriesNumber = 2
        ds.InstanceNumber = index + 1
        ds.BodyPartExamined = "CHEST"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.BurnedInAnnotation = "NO"
        ds.ImagePositionPatient = [-250.0, -250.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z
        ds.SliceThickness = 2.5
        ds.PixelSpacing = [500.0 / rows, 500.0 / columns]
        ds.KVP = 120
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = rows
        ds.Columns = columns
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = -600
        ds.WindowWidth = 1500
        ds.PixelData = np.round(hu + 1024.0).astype(np.int16).tobytes()
        datasets.append(_finish(ds, CTImageStorage, make_uid("ct", seed, index)))
    return datasets


def write_study(datasets: Sequence[Dataset], folder: Path) -> list[Path]:
    """Write each dataset as a Part 10 file named by its SOP Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
