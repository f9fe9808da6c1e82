"""What the pipeline reads and writes about a study, by opaque key only."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.tables import Instance, Study, StudyState
from prelim.errors import PrelimError


class StudyNotFound(PrelimError):
    """No study has this key."""


@dataclass(frozen=True)
class InstanceRef:
    ref: str  # opaque: the instance's row id
    path: Path  # absolute path of the spooled Part 10 file
    sop_class_uid: str
    modality: str | None


@dataclass(frozen=True)
class StudyInputs:
    study_key: str
    generation: int
    state: StudyState
    instances: list[InstanceRef]


def load_study_inputs(session: Session, study_key: str, spool_dir: Path) -> StudyInputs:
    """The instances of a study as the pipeline sees them: keys and spool paths."""
    study = session.scalar(select(Study).where(Study.study_key == study_key))
    if study is None:
        raise StudyNotFound(f"no study has key {study_key}")
    rows = session.scalars(
        select(Instance).where(Instance.study_id == study.id).order_by(Instance.id)
    ).all()
    refs = [
        InstanceRef(f"i{row.id}", spool_dir / row.path, row.sop_class_uid, row.modality)
        for row in rows
    ]
    return StudyInputs(study_key, study.generation, study.state, refs)


def start_processing(session: Session, study_key: str, generation: int) -> bool:
    """Mark the study as being drafted, if ``generation`` is still its current one."""
    return _set_state(session, study_key, generation, StudyState.PROCESSING, None)


def finish_study(
    session: Session,
    study_key: str,
    generation: int,
    state: StudyState,
    reason: str | None = None,
    *,
    then: Callable[[Session], object] | None = None,
) -> bool:
    """Record the pipeline's outcome for ``generation``; ``then`` runs in the same transaction.

    Returns False, and writes nothing, when a late instance has re-opened the study
    since: the newer generation's run owns the outcome, so an old run cannot
    overwrite it or put a stale draft in the queue.
    """
    if not _set_state(session, study_key, generation, state, reason):
        return False
    if then is not None:
        then(session)
    return True


def _set_state(
    session: Session, study_key: str, generation: int, state: StudyState, reason: str | None
) -> bool:
    # Lock the row (a no-op on SQLite, whose transactions already hold the write lock).
    study = session.scalar(select(Study).where(Study.study_key == study_key).with_for_update())
    if study is None:
        raise StudyNotFound(f"no study has key {study_key}")
    if study.generation != generation:
        return False
    study.state = state
    study.state_reason = reason
    study.updated_at = datetime.now(UTC)
    return True


def unfinished_studies(session: Session) -> list[str]:
    """Studies whose trigger fired but whose pipeline never finished (a worker died)."""
    rows = session.scalars(
        select(Study.study_key)
        .where(
            Study.state.in_([StudyState.READY, StudyState.PROCESSING]),
            Study.triggered_generation >= Study.generation,
        )
        .order_by(Study.priority.desc(), Study.last_received_at)
    )
    return list(rows)
