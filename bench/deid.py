"""De-identification throughput: ours (whole Table E.1-1) against dicognito, in one run.

``python -m bench.deid [--cxr 50] [--ct 300]``. Both tools get the same
in-memory Part 10 files; each is parsed fresh for each tool (dicognito changes
its input in place). Two figures per set: the de-identification call alone on
parsed datasets, and parse + de-identify from bytes. Output carries counts and
rates only.
"""

from __future__ import annotations

import argparse
import functools
import io
import platform
import time
from collections.abc import Callable, Sequence

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

from flows.deid import UidMapper, deidentify, new_uid_key
from prelim.synthetic import make_ct_series, make_cxr_study


def clinical_header(ds: Dataset, n: int) -> Dataset:
    """What a modality and a RIS add to a real header: requests, codes, private tags."""
    ds.InstitutionAddress = f"{n} HOSPITAL ROAD"
    ds.StationName = f"STATION{n % 7}"
    ds.InstitutionalDepartmentName = "RADIOLOGY"
    ds.PerformingPhysicianName = "HOUSE^GREGORY"
    ds.OperatorsName = "TECH^ANNA"
    ds.NameOfPhysiciansReadingStudy = "READER^RITA"
    ds.ManufacturerModelName = "MODEL X"
    ds.DeviceSerialNumber = f"SN{n:06d}"
    ds.SoftwareVersions = "1.2.3"
    ds.ProtocolName = "CHEST"
    ds.SeriesDescription = "SERIES"
    ds.SeriesDate, ds.SeriesTime = ds.StudyDate, ds.StudyTime
    ds.AcquisitionDate, ds.AcquisitionTime = ds.StudyDate, ds.StudyTime
    ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.StudyDate, ds.StudyTime
    ds.OtherPatientIDs = f"OTHER{n}"
    ds.PatientAddress = "1 MAIN STREET"
    ds.PatientTelephoneNumbers = "555-0100"
    ds.PatientWeight, ds.PatientSize = 70, 1.75
    ds.EthnicGroup = "X"
    ds.AdditionalPatientHistory = "COUGH"
    ds.RequestingPhysician = "REQ^ROBERT"
    ds.RequestedProcedureDescription = "CHEST"
    ds.PerformedProcedureStepID = f"PPS{n}"
    ds.PerformedProcedureStepStartDate = ds.StudyDate
    ds.PerformedProcedureStepDescription = "CHEST"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "36643-5", "LN", "XR Chest 2V"
    ds.ProcedureCodeSequence = DicomSequence([code])
    request = Dataset()
    request.RequestedProcedureID = f"RP{n}"
    request.ScheduledProcedureStepID = f"SPS{n}"
    request.AccessionNumber = ds.AccessionNumber
    request.StudyInstanceUID = ds.StudyInstanceUID
    ds.RequestAttributesSequence = DicomSequence([request])
    ref = Dataset()
    ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.3"
    ref.ReferencedSOPInstanceUID = generate_uid(entropy_srcs=[ds.SOPInstanceUID, "pps"])
    ds.ReferencedPerformedProcedureStepSequence = DicomSequence([ref])
    ds.ReferencedStudySequence = DicomSequence([ref])
    ds.add_new(0x00090010, "LO", "VENDOR A")
    for element in range(0x1001, 0x1011):
        ds.add_new(0x00090000 | element, "LO", f"VENDOR VALUE {element}")
    ds.add_new(0x00190010, "LO", "VENDOR B")
    ds.add_new(0x00191001, "OB", bytes(256))
    return ds


def part10(datasets: Sequence[Dataset]) -> list[bytes]:
    blobs = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        blobs.append(buffer.getvalue())
    return blobs


def cxr_set(count: int) -> list[bytes]:
    base = make_cxr_study(0, rows=2500, columns=2048, views=("PA", "LL"))
    out = []
    for n in range(count):
        ds = base[n % 2].copy()
        ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{n}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(clinical_header(ds, n))
    return part10(out)


def ct_set(count: int) -> list[bytes]:
    return part10([clinical_header(ds, n) for n, ds in enumerate(make_ct_series(1, slices=count))])


def rate(blobs: list[bytes], run: Callable[[Dataset], object]) -> tuple[float, float]:
    """(instances/s of the call alone, instances/s of parse + call)."""
    start = time.perf_counter()
    parsed = [pydicom.dcmread(io.BytesIO(blob)) for blob in blobs]
    parse_s = time.perf_counter() - start
    start = time.perf_counter()
    for ds in parsed:
        run(ds)
    call_s = time.perf_counter() - start
    return len(blobs) / call_s, len(blobs) / (parse_s + call_s)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cxr", type=int, default=50)
    parser.add_argument("--ct", type=int, default=300)
    args = parser.parse_args(argv)
    from dicognito.anonymizer import Anonymizer

    print(
        f"machine: {platform.machine()}, {platform.python_version()}, pydicom {pydicom.__version__}"
    )
    for name, blobs in (("CXR 2500x2048", cxr_set(args.cxr)), ("CT 512x512", ct_set(args.ct))):
        uids = UidMapper(new_uid_key())
        anonymizer = Anonymizer()
        ours_call = functools.partial(deidentify, uids=uids)
        rate(blobs[:5], ours_call)  # warm-up, both
        rate(blobs[:5], anonymizer.anonymize)
        ours = rate(blobs, ours_call)
        peer = rate(blobs, anonymizer.anonymize)
        print(f"{name}, {len(blobs)} instances:")
        for label, k in (("de-identify call", 0), ("parse + call", 1)):
            print(
                f"  {label:17s} dicognito {peer[k]:8.1f}/s  ours {ours[k]:8.1f}/s"
                f"  ratio {ours[k] / peer[k]:.2f}x"
            )


if __name__ == "__main__":
    main()
