"""Header checks, priority mapping, the spool's durable rename, synthetic determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_listener import statuses
from dicom_listener.header import (
    InstanceRejected,
    procedure_priority,
    read_header,
    request_priority,
)
from dicom_listener.spool import Spool, study_folder
from prelim.synthetic import make_ct_series, make_cxr_study, write_study


def test_priorities() -> None:
    assert [request_priority(p) for p in (0x0002, 0x0000, 0x0001, None)] == [0, 1, 2, 1]
    ds = Dataset()
    assert procedure_priority(ds) == -1
    ds.RequestedProcedurePriority = "STAT"
    assert procedure_priority(ds) == 3


def test_read_header_accepts_a_good_file_and_names_the_failure(tmp_path: Path) -> None:
    ds = make_ct_series(1, slices=1, rows=16, columns=16)[0]
    path = write_study([ds], tmp_path)[0]
    header = read_header(path, ds.SOPClassUID, ds.SOPInstanceUID)
    assert header.study.patient_id == ds.PatientID and header.modality == "CT"
    with pytest.raises(InstanceRejected) as mismatch:
        read_header(path, ds.SOPClassUID, "1.2.3")
    assert mismatch.value.status == statuses.DATASET_MISMATCH
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InstanceRejected) as short:
        read_header(path, ds.SOPClassUID, ds.SOPInstanceUID)
    assert short.value.status in statuses.CANNOT_UNDERSTAND


def test_spool_place_and_orphans(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    temp = spool.incoming / "rx-1.part"
    temp.write_bytes(b"data")
    relative = spool.relative_path("1.2.3", "1.2.3.4")
    assert relative == f"{study_folder('1.2.3')}/1.2.3.4.dcm"
    placed = spool.place(temp, relative)
    assert placed is not None and placed.read_bytes() == b"data" and not temp.exists()
    spool.sync_folder(relative)
    assert list(spool.files()) == [relative]
    # place() never replaces: the first copy of an instance stays.
    again = spool.incoming / "rx-3.part"
    again.write_bytes(b"other")
    assert spool.place(again, relative) is None
    assert (spool.root / relative).read_bytes() == b"data" and again.exists()
    again.unlink()
    (spool.incoming / "rx-2.part").write_bytes(b"partial")
    assert spool.remove_orphans() == 1 and not any(spool.incoming.iterdir())
    assert "/" not in spool.relative_path("1.2", "../../etc/passwd").split("/", 1)[1]


def test_synthetic_is_deterministic_and_sized() -> None:
    a, b = make_cxr_study(5, rows=64, columns=48), make_cxr_study(5, rows=64, columns=48)
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert a[0].PixelData == b[0].PixelData and a[0].pixel_array.shape == (64, 48)
    assert [d.ViewPosition for d in a] == ["PA", "LL"]
    ct = make_ct_series(5, slices=3, rows=32, columns=32)
    assert [float(d.SliceLocation) for d in ct] == [-300.0, -297.5, -295.0]
    assert ct[0].pixel_array.shape == (32, 32) and ct[0].RescaleIntercept == -1024
