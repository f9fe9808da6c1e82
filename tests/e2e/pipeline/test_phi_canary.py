"""PHI canary: unique strings planted in every identifying attribute never leave the clinical store.

The study carries a canary in every text attribute of PS3.15 Table E.1-1, in a
private block and in nested sequences. After the whole pipeline has run, every
place outside the spool and our clinical tables is searched: Prefect's database
(flow runs, task runs, logs, artifacts, events), its result storage, all log
output, the model's prompt, the de-identified output and the temp folders.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import select

from db.engine import transaction
from db.tables import Study, StudyState
from flows.deid import HANDLED_TAGS, UidMapper, deidentify
from prelim.synthetic import make_cxr_study

TEXT_VRS = {"PN", "LO", "SH", "LT", "ST", "UT", "UC", "AE", "CS"}


def _canary_value(n: int, vr: str) -> str:
    if vr == "DA":
        return f"1911{n // 28 % 12 + 1:02d}{n % 28 + 1:02d}"
    if vr == "AS":
        return "087Y"
    return f"CANARY{n:04d}Q"


def plant_canaries(ds: Dataset) -> dict[str, str]:
    """Put a unique value in every text/date attribute of Table E.1-1; return value -> name."""
    planted: dict[str, str] = {}
    n = 0
    for tag in sorted(HANDLED_TAGS):
        group = tag >> 16
        if group in (0x0000, 0x0002, 0x0004) or group & 0xFF00 in (0x5000, 0x6000):
            continue
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            continue
        if vr == "SQ":
            item = Dataset()
            item.PatientName = f"CANARYSQ{n:04d}Q"
            item.InstitutionName = f"CANARYSQI{n:04d}Q"
            planted[item.PatientName] = f"{tag:08X}/PatientName"
            planted[item.InstitutionName] = f"{tag:08X}/InstitutionName"
            ds.add_new(tag, "SQ", Sequence([item]))
        elif vr in TEXT_VRS or vr in ("DA", "AS"):
            value = _canary_value(n, vr)
            if vr == "AS" and value in planted:
                continue
            ds.add_new(tag, vr, value)
            planted[value] = f"{tag:08X}"
        n += 1
    # The attributes selection depends on stay sensible for a frontal chest X-ray.
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.BurnedInAnnotation = "NO"
    block = ds.private_block(0x0099, "CANARY CORP", create=True)
    block.add_new(0x01, "LO", "CANARYPRIVATE01Q")
    planted["CANARYPRIVATE01Q"] = "private"
    return planted


def _bytes_under(folder: Path, skip: set[Path]) -> list[tuple[Path, bytes]]:
    out = []
    for path in folder.rglob("*"):
        if path.is_file() and not any(path.is_relative_to(s) for s in skip):
            data = path.read_bytes()
            if data.strip(b"\0"):  # zeros only (record files made ahead): nothing to find
                out.append((path, data))
    return out


def _pattern(value: object) -> re.Pattern[bytes]:
    """How a canary is looked for. A date (eight digits) only as a value of its own:
    inside a hex UUID, a hash or a float ("0.19110220...") of Prefect's database those
    digits turn up by chance (a 4 MB WAL holds millions of such positions)."""
    text = str(value)  # a PersonName, say
    raw = re.escape(text.encode())
    if text.isdigit():
        return re.compile(rb"(?<![0-9A-Za-z.])" + raw + rb"(?![0-9])")
    return re.compile(raw)


def _hits(blobs: list[tuple[str, bytes]], canaries: dict[str, str]) -> list[str]:
    patterns = {value: _pattern(value) for value in canaries}
    found = []
    for where, blob in blobs:
        for value, name in canaries.items():
            if patterns[value].search(blob):
                found.append(f"{name} ({value}) in {where}")
    return found


def test_a_date_canary_is_found_as_a_value_not_inside_other_digits() -> None:
    canaries = {"19110220": "00100030", "CANARY0001Q": "00100010"}
    leaks = [
        ("json", b'{"birth": "19110220"}'),
        ("dicom", b"DA\x08\x0019110220\x10\x00"),
        ("log", b"date 19110220 seen"),
        ("text", b"CANARY0001Q"),
    ]
    chance = [
        ("uuid", b"6f0e3c2a-ab19110220cd-4e1f"),
        ("float", b'"total_run_time": 0.191102204312'),
        ("digits", b"run 3191102201"),
    ]
    assert [hit.split(" in ")[1] for hit in _hits(leaks, canaries)] == [
        "json",
        "dicom",
        "log",
        "text",
    ]
    assert _hits(chance, canaries) == []


@pytest.mark.slow
def test_no_identifier_leaves_the_clinical_store(
    stack: dict[str, Any],
    stack_settings: Any,
    prefect_server: Any,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pynetdicom import AE

    import flows.ingest as ingest
    from models.prompts import build_prompt

    caplog.set_level(logging.DEBUG)
    temp_root = tmp_path / "tmp"
    temp_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))

    prompts: list[str] = []
    real_get_batcher = ingest.get_batcher

    class Recording:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def draft(self, request: Any) -> Any:
            prompt = build_prompt(request)
            prompts.append(json.dumps(prompt.messages, default=str))
            return self.inner.draft(request)

    monkeypatch.setattr(ingest, "get_batcher", lambda s: Recording(real_get_batcher(s)))

    (ds,) = make_cxr_study(seed=21, views=("PA",))
    canaries = plant_canaries(ds)
    assert len(canaries) > 100, "the table's identifying attributes were planted"
    original = ds.copy()

    ae = AE(ae_title="CANARY_SCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", stack["listener"].port, ae_title="PRELIM")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0x0000

    deadline = time.monotonic() + 180
    while True:
        with transaction(stack["database"].sessions) as session:
            study = session.scalar(
                select(Study).where(Study.study_instance_uid == str(ds.StudyInstanceUID))
            )
        if study is not None and study.state in (
            StudyState.DRAFTED,
            StudyState.FAILED,
            StudyState.SKIPPED,
        ):
            break
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert study.state == StudyState.DRAFTED, study.state_reason
    assert prompts, "the model was asked"
    from prelim.runner import drain_prefect_clients

    drain_prefect_clients()  # Prefect's logs and events reach its database now

    # Positive control: the clinical store does hold them, so the search can find them.
    spool = stack_settings.resolved_spool_dir
    spooled = [(str(p), b) for p, b in _bytes_under(spool, set())]
    assert len(_hits(spooled, canaries)) > 100
    assert study.accession_number and study.accession_number.startswith("CANARY")

    data_dir = stack_settings.data_dir.resolve()
    clinical = {
        spool,
        data_dir / "prelim.db",
        data_dir / "prelim.db-wal",
        data_dir / "prelim.db-shm",
    }
    blobs: list[tuple[str, bytes]] = []
    blobs += [(str(p), b) for p, b in _bytes_under(data_dir, clinical)]  # images, logs
    blobs += [(str(p), b) for p, b in _bytes_under(prefect_server.home, set())]  # Prefect db
    blobs += [(str(p), b) for p, b in _bytes_under(temp_root, set())]
    blobs.append(("prefect server log", prefect_server.log_path.read_bytes()))
    blobs.append(("our logs", "\n".join(r.getMessage() for r in caplog.records).encode()))
    captured = capfd.readouterr()
    blobs.append(("stdout/stderr", (captured.out + captured.err).encode()))
    blobs += [(f"prompt {i}", p.encode()) for i, p in enumerate(prompts)]
    clean = deidentify(original, UidMapper(b"k" * 32))
    blobs.append(("de-identified dataset", repr(clean).encode()))
    assert any(w == "de-identified dataset" for w, _ in blobs)

    leaks = _hits(blobs, canaries)
    assert leaks == []
