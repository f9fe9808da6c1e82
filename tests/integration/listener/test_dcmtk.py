"""DCMTK's echoscu and storescu, a client nobody here wrote. Status read from the log."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from prelim.synthetic import make_ct_series, make_cxr_study, write_study
from tests.integration.listener.conftest import Running

pytestmark = pytest.mark.dcmtk

STORESCU = "/usr/bin/storescu"
ECHOSCU = "/usr/bin/echoscu"


def _statuses(log: str) -> list[str]:
    # storescu -v logs "Received Store Response (Success)" or "(Refused: ...)" etc.
    return re.findall(r"Received (?:Store|Echo) Response \(([^)]*)\)", log)


def _run(args: list[str]) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def test_echoscu(listener: Running) -> None:
    log = _run([ECHOSCU, "-v", "-aec", "PRELIM", "127.0.0.1", str(listener.port)])
    assert _statuses(log) == ["Success"], log


def test_storescu_sends_a_study(listener: Running, tmp_path: Path) -> None:
    datasets = make_cxr_study(21, rows=300, columns=256) + make_ct_series(
        21, slices=4, rows=64, columns=64
    )
    files = write_study(datasets, tmp_path / "study")
    # storescu proposes a compressed syntax only when told which.
    compressed = {
        "JPEG2000.dcm": "-xw",
        "MR_small_jp2klossless.dcm": "-xv",
        "MR_small_RLE.dcm": "-xr",
        "SC_rgb_jpeg_dcmtk.dcm": "-xy",
        "JPEG-LL.dcm": "-xs",
    }
    log = _run(
        [
            STORESCU,
            "-v",
            "-R",  # propose each file's own transfer syntax: compressed ones go as they are
            "-aec",
            "PRELIM",
            "-aet",
            "MODALITY",
            "--max-pdu",
            "131072",
            "127.0.0.1",
            str(listener.port),
            *map(str, files),
        ]
    )
    assert _statuses(log) == ["Success"] * len(files), log
    seen: set[str] = set()  # some bundled files share a SOP Instance UID: first copy kept
    for name, flag in compressed.items():
        path = get_testdata_file(name, download=False)
        log = _run([STORESCU, "-v", flag, "127.0.0.1", str(listener.port), str(path)])
        assert _statuses(log) == ["Success"], log
        stored = list(listener.spool_dir().glob("*/*.dcm"))
        sent = dcmread(path, stop_before_pixels=True)
        match = [p for p in stored if p.name == f"{sent.SOPInstanceUID}.dcm"]
        if sent.SOPInstanceUID in seen:
            continue
        seen.add(sent.SOPInstanceUID)
        assert (
            match
            and dcmread(match[0]).file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        )
    for path in files:
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        stored = list(listener.spool_dir().glob(f"*/{uid}.dcm"))
        assert len(stored) == 1
        assert (dcmread(stored[0]).pixel_array == dcmread(path).pixel_array).all()


def test_storescu_sees_refusal_when_disk_is_full(start, tmp_path: Path) -> None:
    listener = start(min_free_disk_mb=10**9)
    files = write_study(make_ct_series(22, slices=1, rows=32, columns=32), tmp_path)
    log = _run([STORESCU, "-v", "127.0.0.1", str(listener.port), *map(str, files)])
    # Exit code is 0 here too: only the logged status tells.
    statuses = _statuses(log)
    assert len(statuses) == 1 and statuses[0] != "Success" and "OutOfResources" in log, log


def test_storescu_is_told_what_is_wrong(listener: Running, tmp_path: Path) -> None:
    ds = make_ct_series(23, slices=1, rows=32, columns=32)[0]
    del ds.StudyInstanceUID
    path = write_study([ds], tmp_path)[0]
    log = _run([STORESCU, "-d", "127.0.0.1", str(listener.port), str(path)])
    assert "0xc212" in log, log
    # The Error Comment, which storescu prints under "Status Detail".
    assert "(0000,0902) LO [SOP Class, SOP Instance or Study UID missing]" in log, log
