"""The listener's queue operations on studies and instances.

A study is keyed outside ``db`` by its opaque ``study_key``. Its readiness is a
small state machine driven by time: RECEIVING until no instance has arrived for
the stable age, then READY, then triggered once per ``generation``. A new
instance re-opens a study in any state (generation + 1), so the pipeline
supersedes its older draft instead of duplicating it.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.tables import Instance, Study, StudyState


@dataclass(frozen=True)
class StudyFields:
    """The study-level attributes of a received instance (clinical, stored here only)."""

    study_instance_uid: str
    accession_number: str | None = None
    patient_id: str | None = None
    patient_name: str | None = None
    patient_birth_date: str | None = None
    patient_sex: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    study_description: str | None = None
    referring_physician: str | None = None
    priority: int = 0
    calling_ae_title: str | None = None


@dataclass(frozen=True)
class InstanceFields:
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str | None
    modality: str | None
    transfer_syntax_uid: str
    path: str  # relative to the spool folder
    size_bytes: int
    sha256: str


class Indexed(enum.StrEnum):
    NEW = "new"  # first copy of this instance
    DUPLICATE = "duplicate"  # already indexed; nothing changed


@dataclass(frozen=True)
class IndexResult:
    outcome: Indexed
    study_key: str
    sha256: str  # of the copy that is kept
    reopened: bool = False


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def _merge_modalities(current: str, modality: str | None) -> str:
    if not modality:
        return current
    seen = [m for m in current.split("\\") if m]
    if modality not in seen:
        seen.append(modality)
    return "\\".join(sorted(seen))[:64]


def index_instance(
    session: Session, study: StudyFields, instance: InstanceFields, now: datetime
) -> IndexResult:
    """Record a spooled instance, creating or re-opening its study.

    An instance whose SOP Instance UID is already indexed is a duplicate: the
    first copy stays and nothing changes (see ``dicom_listener.receiver``).
    """
    existing = find_instance(session, instance.sop_instance_uid)
    if existing is not None:
        key = session.scalar(select(Study.study_key).where(Study.id == existing.study_id))
        return IndexResult(Indexed.DUPLICATE, str(key), existing.sha256)
    row = session.scalar(
        select(Study).where(Study.study_instance_uid == study.study_instance_uid).with_for_update()
    )
    reopened = False
    if row is None:
        row = Study(
            study_key=uuid.uuid4().hex,
            study_instance_uid=study.study_instance_uid,
            accession_number=study.accession_number,
            patient_id=study.patient_id,
            patient_name=study.patient_name,
            patient_birth_date=study.patient_birth_date,
            patient_sex=study.patient_sex,
            study_date=study.study_date,
            study_time=study.study_time,
            study_description=study.study_description,
            referring_physician=study.referring_physician,
            modalities="",
            priority=study.priority,
            calling_ae_title=study.calling_ae_title,
            state=StudyState.RECEIVING,
            generation=1,
            triggered_generation=0,
            instance_count=0,
            first_received_at=now,
            last_received_at=now,
            updated_at=now,
        )
        session.add(row)
    elif row.state != StudyState.RECEIVING:
        # Whatever the pipeline was doing, this generation's draft is now stale.
        row.state = StudyState.RECEIVING
        row.state_reason = None
        row.generation += 1
        row.ready_at = None
        reopened = True
    row.modalities = _merge_modalities(row.modalities or "", instance.modality)
    row.priority = max(row.priority, study.priority)
    row.instance_count += 1
    row.last_received_at = now
    row.updated_at = now
    session.flush()
    session.add(
        Instance(
            study_id=row.id,
            sop_instance_uid=instance.sop_instance_uid,
            sop_class_uid=instance.sop_class_uid,
            series_instance_uid=instance.series_instance_uid,
            modality=instance.modality,
            transfer_syntax_uid=instance.transfer_syntax_uid,
            path=instance.path,
            size_bytes=instance.size_bytes,
            sha256=instance.sha256,
            received_at=now,
        )
    )
    session.flush()
    return IndexResult(Indexed.NEW, row.study_key, instance.sha256, reopened)


def mark_stable_ready(session: Session, received_before: datetime, now: datetime) -> list[str]:
    """Move RECEIVING studies quiet since ``received_before`` to READY; their keys."""
    keys = list(
        session.scalars(
            select(Study.study_key).where(
                Study.state == StudyState.RECEIVING, Study.last_received_at <= received_before
            )
        )
    )
    if keys:
        session.execute(
            update(Study)
            .where(
                Study.study_key.in_(keys),
                Study.state == StudyState.RECEIVING,
                Study.last_received_at <= received_before,
            )
            .values(state=StudyState.READY, ready_at=now, updated_at=now)
        )
    return keys


@dataclass(frozen=True)
class DueTrigger:
    study_key: str
    generation: int


def due_triggers(session: Session) -> list[DueTrigger]:
    """READY studies whose current generation has not been triggered, most urgent first."""
    rows = session.execute(
        select(Study.study_key, Study.generation)
        .where(Study.state == StudyState.READY, Study.triggered_generation < Study.generation)
        .order_by(Study.priority.desc(), Study.last_received_at)
    )
    return [DueTrigger(key, generation) for key, generation in rows]


def mark_triggered(session: Session, study_key: str, generation: int, now: datetime) -> None:
    """Record that ``generation`` of the study was handed to the pipeline."""
    session.execute(
        update(Study)
        .where(Study.study_key == study_key, Study.triggered_generation < generation)
        .values(triggered_generation=generation, triggered_at=now, updated_at=now)
    )


def indexed_paths(session: Session) -> set[str]:
    """Every spool path (relative) the index knows."""
    return set(session.scalars(select(Instance.path)))


def study_counts(session: Session) -> dict[StudyState, int]:
    """How many studies are in each state (every state present, zero included)."""
    counts = dict.fromkeys(StudyState, 0)
    for state, count in session.execute(select(Study.state, func.count()).group_by(Study.state)):
        counts[StudyState(state)] = int(count)
    return counts
