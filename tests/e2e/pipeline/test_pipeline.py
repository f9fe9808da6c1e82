"""C-STORE in, draft in the queue out, with the Prefect API showing every run."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from db.engine import transaction
from db.tables import Draft, Study, StudyState
from prelim.synthetic import make_cxr_study, write_study
from tests.e2e.pipeline.conftest import flow_runs

DONE = {StudyState.DRAFTED, StudyState.SKIPPED, StudyState.FAILED}


def storescu(port: int, files: list[Path]) -> str:
    out = subprocess.run(
        [
            "/usr/bin/storescu",
            "-v",
            "-aet",
            "MODALITY",
            "-aec",
            "PRELIM",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    log = out.stdout + out.stderr
    assert log.count("Received Store Response (Success)") == len(files), log
    return log


def wait_done(info: dict[str, Any], uids: list[str], timeout_s: float = 180) -> dict[str, Study]:
    deadline = time.monotonic() + timeout_s
    while True:
        with transaction(info["database"].sessions) as session:
            rows = {
                s.study_instance_uid: s
                for s in session.scalars(select(Study).where(Study.study_instance_uid.in_(uids)))
            }
        if len(rows) == len(uids) and all(r.state in DONE for r in rows.values()):
            return rows
        assert time.monotonic() < deadline, {u: r.state for u, r in rows.items()}
        time.sleep(0.2)


@pytest.mark.dcmtk
@pytest.mark.slow
def test_studies_sent_with_storescu_become_drafts(stack: dict[str, Any], tmp_path: Path) -> None:
    cxr = write_study(make_cxr_study(seed=11), tmp_path / "cxr")
    ct = [Path(get_testdata_file("CT_small.dcm"))]
    port = stack["listener"].port
    storescu(port, cxr)
    storescu(port, ct)
    import pydicom

    uids = [
        str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in (cxr[0], ct[0])
    ]
    rows = wait_done(stack, uids)
    assert {r.state for r in rows.values()} == {StudyState.DRAFTED}, {
        u: (r.state, r.state_reason) for u, r in rows.items()
    }
    with transaction(stack["database"].sessions) as session:
        drafts = session.scalars(
            select(Draft).where(Draft.study_id.in_([r.id for r in rows.values()]))
        ).all()
    assert len(drafts) == 2
    for draft in drafts:
        assert draft.state.value == "queued"
        assert draft.raw_text  # the tiny model writes meaningless but real text
        assert draft.images and draft.model_id
        assert draft.provenance.get("prompt_version")

    names = [f"study-{r.study_key}" for r in rows.values()]
    runs = flow_runs(names)
    assert sorted(r.name for r in runs) == sorted(names)
    assert all(r.state is not None and r.state.is_completed() for r in runs)
    # Parameters carry the opaque key only.
    assert all(set(r.parameters) == {"study_key"} for r in runs)


def _spooled_study(info: dict[str, Any], settings: Any, body: bytes) -> str:
    """A study row whose one instance file holds ``body`` (bypassing the listener)."""
    import uuid

    from db.tables import Instance

    key = uuid.uuid4().hex
    rel = f"{key}/1.dcm"
    path = settings.resolved_spool_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    with transaction(info["database"].sessions) as session:
        study = Study(
            study_key=key,
            study_instance_uid=f"2.25.{uuid.uuid4().int}",
            modalities="DX",
            state=StudyState.READY,
            generation=1,
            triggered_generation=1,
            instance_count=1,
        )
        session.add(study)
        session.flush()
        session.add(
            Instance(
                study_id=study.id,
                sop_instance_uid=f"2.25.{uuid.uuid4().int}",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1",
                transfer_syntax_uid="1.2.840.10008.1.2.1",
                path=rel,
                size_bytes=len(body),
                digest="xxh128:" + "0" * 32,
                modality="DX",
            )
        )
    return key


@pytest.mark.slow
def test_failed_study_shows_its_reason_in_queue_and_prefect(
    stack: dict[str, Any], stack_settings: Any
) -> None:

    from flows.ingest import StudyFailed, ingest_study

    key = _spooled_study(stack, stack_settings, b"this is not DICOM")
    with pytest.raises(StudyFailed):
        ingest_study(key)
    with transaction(stack["database"].sessions) as session:
        study = session.scalar(select(Study).where(Study.study_key == key))
        assert study is not None and study.state == StudyState.FAILED
        draft = session.scalar(select(Draft).where(Draft.study_id == study.id))
    assert draft is not None and draft.state.value == "failed"
    assert "could be read from the spool" in (draft.state_reason or "")
    (run,) = flow_runs([f"study-{key}"])
    assert run.state is not None and run.state.is_failed()
    assert "could be read from the spool" in (run.state.message or "")


@pytest.mark.slow
def test_unfinished_study_is_rerun_at_start_with_one_active_draft(
    stack_settings: Any, prefect_server: Any, tmp_path: Path
) -> None:
    """A worker that died mid-study: the study is READY/PROCESSING and triggered."""
    from prelim.runner import embedded_stack

    body = write_study(make_cxr_study(seed=12, views=("PA",)), tmp_path / "one")[0].read_bytes()
    # First life: the study is triggered and a draft was even queued before the crash.
    with embedded_stack(stack_settings, review=False) as info:
        key = _spooled_study(info, stack_settings, body)
        from flows.ingest import ingest_study

        ingest_study(key)
        with transaction(info["database"].sessions) as session:
            study = session.scalar(select(Study).where(Study.study_key == key))
            assert study is not None
            study.state = StudyState.PROCESSING  # as if the process died before finishing
    # Second life: start-up recovery runs it again.
    with embedded_stack(stack_settings, review=False) as info:
        deadline = time.monotonic() + 120
        while True:
            with transaction(info["database"].sessions) as session:
                study = session.scalar(select(Study).where(Study.study_key == key))
                assert study is not None
                drafts = session.scalars(select(Draft).where(Draft.study_id == study.id)).all()
            if study.state == StudyState.DRAFTED and len(drafts) == 2:
                break
            assert time.monotonic() < deadline, (study.state, len(drafts))
            time.sleep(0.2)
    states = sorted(d.state.value for d in drafts)
    assert states == ["queued", "superseded"]
