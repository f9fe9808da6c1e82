"""Read and check a received instance's header without loading its pixels.

The file is the temp file pynetdicom wrote while receiving (Part 10: preamble,
file meta, then the dataset bytes exactly as sent). Large values are deferred,
so a 1 GB instance is checked in a few kilobytes of memory.

Two readers give the same verdict. :mod:`dicom_listener.scan` walks the bytes
of a clean, ordinary file itself (about a tenth of pydicom's time, which
matters at one call per received instance); for every other file, and every
rejection, pydicom reads it and the checks below decide. pydicom's reading is
the reference: the scanner only answers where it would agree.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from db.studies import StudyFields
from dicom_listener import statuses
from dicom_listener.scan import Scan, scan
from prelim.errors import PrelimError

log = logging.getLogger(__name__)

_DEFER_BYTES = 64 * 1024
_PIXEL_DATA = 0x7FE00010

# C-STORE request Priority (0000,0700): MEDIUM 0, HIGH 1, LOW 2.
_REQUEST_PRIORITY = {0x0002: 0, 0x0000: 1, 0x0001: 2}
# Requested Procedure Priority / Study Priority ID values.
_PROCEDURE_PRIORITY = {"STAT": 3, "HIGH": 2, "ROUTINE": 1, "MEDIUM": 1, "LOW": 0}


class InstanceRejected(PrelimError):
    """The instance cannot be stored."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class InstanceHeader:
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str | None
    modality: str | None
    transfer_syntax_uid: str
    study: StudyFields


def _text(value: Callable[[str], object], keyword: str, limit: int) -> str | None:
    """``value(keyword)`` as stripped text of at most ``limit`` characters, or None."""
    found = value(keyword)
    if found is None or found == "":
        return None
    return str(found).strip()[:limit] or None


def procedure_priority(ds: Dataset) -> int:
    """The dataset's own urgency (STAT highest), or -1 when it says nothing."""
    values = [ds.get("RequestedProcedurePriority"), ds.get("StudyPriorityID")]
    for item in ds.get("RequestAttributesSequence") or []:
        values.append(item.get("RequestedProcedurePriority"))
    return _priority(values)


def _priority(values: Iterable[object]) -> int:
    found = [_PROCEDURE_PRIORITY.get(str(v).strip().upper(), -1) for v in values if v]
    return max(found, default=-1)


def request_priority(priority: int | None) -> int:
    return _REQUEST_PRIORITY.get(priority if priority is not None else 0, 1)


def _expected_pixel_bytes(ds: Dataset) -> int:
    rows, columns = int(ds.Rows), int(ds.Columns)
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.BitsAllocated)
    frames = int(ds.get("NumberOfFrames") or 1)
    return (rows * columns * samples * frames * bits + 7) // 8


def _check_pixels(ds: Dataset, size: int) -> None:
    raw = ds._dict.get(Tag(_PIXEL_DATA))
    if raw is None:
        return
    if isinstance(raw, RawDataElement):
        length, tell = raw.length, raw.value_tell
        if length != 0xFFFFFFFF and tell + length > size:
            raise InstanceRejected(statuses.PIXEL_DATA_SHORT, "pixel data runs past the end")
    else:
        length = len(raw.value or b"")
    if length == 0xFFFFFFFF:  # encapsulated: the frames carry their own lengths
        return
    transfer_syntax = UID(ds.file_meta.TransferSyntaxUID)
    if transfer_syntax.is_compressed:
        return
    if "Rows" not in ds or "Columns" not in ds or "BitsAllocated" not in ds:
        raise InstanceRejected(statuses.PIXEL_DATA_SHORT, "pixel data without image attributes")
    expected = _expected_pixel_bytes(ds)
    if length < expected:
        raise InstanceRejected(
            statuses.PIXEL_DATA_SHORT, f"pixel data has {length} of {expected} bytes"
        )


def _check_bounds(ds: Dataset, size: int) -> None:
    # A deferred value is only located, not read: make sure it lies in the file.
    for raw in ds._dict.values():  # type: ignore[attr-defined]
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length != 0xFFFFFFFF:
            if raw.value_tell + raw.length > size:
                raise InstanceRejected(statuses.UNDECODABLE, "a value runs past the end")


def _check_end(ds: Dataset, size: int) -> None:
    # pydicom stops quietly at a partial element header; a dataset cut there
    # would look complete. Its last element must end where the file ends.
    elements = list(ds._dict.values())  # type: ignore[attr-defined]
    if not elements:
        return
    last = elements[-1]
    if isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF:
        if last.value_tell + last.length != size:
            raise InstanceRejected(statuses.UNDECODABLE, "the data ends inside an element")


def _check_image(ds: Dataset) -> None:
    has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if "Rows" in ds and "Columns" in ds and not has_pixels:
        raise InstanceRejected(statuses.PIXEL_DATA_SHORT, "image attributes without pixel data")


def read_header(
    path: Path,
    request_class: str,
    request_instance: str,
    head: bytes | memoryview | None = None,
    size: int | None = None,
    ready: Callable[[], None] | None = None,
) -> InstanceHeader:
    """Parse and check the received file; raise :class:`InstanceRejected` with the status.

    ``head``, when the caller still holds it, is a prefix of the file's bytes
    (the first 64 KB, say) and ``size`` the file's size: an ordinary instance
    is then checked without reading the file again. ``ready``, if given, is
    called before the file is read (it waits for writes still under way).
    """
    if size is None:
        size = path.stat().st_size
    header = _scanned(path, request_class, request_instance, head, size, ready)
    if header is not None:
        return header
    if ready is not None:
        ready()
    return _read_with_pydicom(path, request_class, request_instance, size)


def _scanned(
    path: Path,
    request_class: str,
    request_instance: str,
    head: bytes | memoryview | None,
    size: int,
    ready: Callable[[], None] | None = None,
) -> InstanceHeader | None:
    """The scanner's header of a clean file that matches the request, else None (ask pydicom)."""
    try:
        found = scan(path, head, size, ready)
    except Exception:  # a scanner bug must cost time, never a verdict
        log.exception("header scan of %s failed: pydicom reads it", path.name)
        return None
    if found is None:
        return None
    fields = _scan_fields(found)
    sop_class, sop_instance = fields.pop("sop_class_uid"), fields.pop("sop_instance_uid")
    if not sop_class or not sop_instance or not fields["study"].study_instance_uid:
        return None
    if sop_class != request_class or sop_instance != request_instance:
        return None
    return InstanceHeader(sop_class_uid=sop_class, sop_instance_uid=sop_instance, **fields)


def _read_with_pydicom(
    path: Path, request_class: str, request_instance: str, size: int
) -> InstanceHeader:
    """The reference reader: pydicom parses the file, then the checks run on its dataset.

    Only the first ``size`` bytes are the data set's: a record file
    (``record.py``) goes on with padding and its trailer until it is settled.
    """
    try:
        source: Path | io.BytesIO = path
        if path.stat().st_size > size:
            with path.open("rb") as file:
                source = io.BytesIO(file.read(size))
        ds = dcmread(source, defer_size=_DEFER_BYTES)
        deflated = ds.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
        if not deflated:
            _check_end(ds, size)
        fields = _fields(ds)
    except InstanceRejected:
        raise
    except Exception as exc:
        raise InstanceRejected(
            statuses.UNDECODABLE, f"cannot decode: {type(exc).__name__}"
        ) from exc
    sop_class, sop_instance = fields.pop("sop_class_uid"), fields.pop("sop_instance_uid")
    if not sop_class or not sop_instance or not fields["study"].study_instance_uid:
        raise InstanceRejected(
            statuses.MISSING_UIDS, "SOP Class, SOP Instance or Study UID missing"
        )
    if sop_class != request_class or sop_instance != request_instance:
        raise InstanceRejected(
            statuses.DATASET_MISMATCH,
            "the dataset's SOP Class/Instance UID differs from the request",
        )
    if deflated:
        # Offsets refer to the inflated stream, not the file: only lengths can be checked.
        size = 1 << 62
    try:
        _check_bounds(ds, size)
        _check_image(ds)
        _check_pixels(ds, size)
    except InstanceRejected:
        raise
    except Exception as exc:
        raise InstanceRejected(
            statuses.UNDECODABLE, f"cannot decode: {type(exc).__name__}"
        ) from exc
    return InstanceHeader(sop_class_uid=sop_class, sop_instance_uid=sop_instance, **fields)


def _fields(ds: Dataset) -> dict[str, Any]:
    if len(ds) == 0:
        raise InstanceRejected(statuses.UNDECODABLE, "no data elements")
    return _header_fields(ds.get, procedure_priority(ds), str(ds.file_meta.TransferSyntaxUID))


def _scan_fields(found: Scan) -> dict[str, Any]:
    """:func:`_fields` for the scanner's values (already ``str``, as pydicom's are)."""
    return _header_fields(found.values.get, _priority(found.priorities), found.transfer_syntax_uid)


def _header_fields(
    value: Callable[[str], object], priority: int, transfer_syntax_uid: str
) -> dict[str, Any]:
    """The fields of an :class:`InstanceHeader`, from ``value(keyword)``, clipped to size."""

    def text(keyword: str, limit: int) -> str | None:
        return _text(value, keyword, limit)

    study = StudyFields(
        study_instance_uid=text("StudyInstanceUID", 64) or "",
        accession_number=text("AccessionNumber", 64),
        patient_id=text("PatientID", 64),
        patient_name=text("PatientName", 324),
        patient_birth_date=text("PatientBirthDate", 8),
        patient_sex=text("PatientSex", 16),
        study_date=text("StudyDate", 8),
        study_time=text("StudyTime", 16),
        study_description=text("StudyDescription", 64),
        referring_physician=text("ReferringPhysicianName", 324),
        priority=priority,
    )
    return {
        "sop_class_uid": text("SOPClassUID", 64) or "",
        "sop_instance_uid": text("SOPInstanceUID", 64) or "",
        "series_instance_uid": text("SeriesInstanceUID", 64),
        "modality": text("Modality", 16),
        "transfer_syntax_uid": transfer_syntax_uid,
        "study": study,
    }
