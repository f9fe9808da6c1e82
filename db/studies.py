"""The listener's queue operations on studies and instances.

A study is keyed outside ``db`` by its opaque ``study_key``. Its readiness is a
small state machine driven by time: RECEIVING until no instance has arrived for
the stable age, then READY, then triggered once per ``generation``. A new
instance re-opens a study in any state (generation + 1), so the pipeline
supersedes its older draft instead of duplicating it.

The listener indexes each received instance with :func:`insert_instance`, a
few Core statements on one connection (no ORM unit of work): one UPDATE of the
study row in the common case, one INSERT of the instance whose unique
constraint is the duplicate check. Nothing is cached between calls, so a study
marked READY by the assembly thread (or another process) in between is seen by
the next UPDATE's WHERE clause and re-opened with a new generation.
"""

from __future__ import annotations

import enum
import functools
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, case, func, insert, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from db.engine import DirectTransaction
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
    digest: str


class Indexed(enum.StrEnum):
    NEW = "new"  # first copy of this instance
    DUPLICATE = "duplicate"  # already indexed; nothing changed


@dataclass(frozen=True)
class IndexResult:
    outcome: Indexed
    study_key: str
    digest: str  # of the copy that is kept
    reopened: bool = False
    path: str = ""  # of the copy that is kept, relative to the spool


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def _merge_modalities(current: str, modality: str | None) -> str:
    if not modality:
        return current
    seen = [m for m in current.split("\\") if m]
    if modality not in seen:
        seen.append(modality)
    return "\\".join(sorted(seen))[:64]


_studies = cast(Table, Study.__table__)
_instances = cast(Table, Instance.__table__)
_STUDY_RETURNS = (_studies.c.id, _studies.c.study_key, _studies.c.modalities)


def _received(*, reopen: bool) -> Any:
    """UPDATE for one more instance of a study in RECEIVING (or, ``reopen``, past it)."""
    # Typed, so the time is stored in the column's own format (SQLite keeps text).
    now = bindparam("b_now", type_=_studies.c.last_received_at.type)
    values: dict[str, Any] = {
        "instance_count": _studies.c.instance_count + 1,
        "last_received_at": now,
        "updated_at": now,
        "priority": case(
            (_studies.c.priority < bindparam("b_priority"), bindparam("b_priority")),
            else_=_studies.c.priority,
        ),
    }
    state = _studies.c.state == StudyState.RECEIVING
    if reopen:
        # Whatever the pipeline was doing, this generation's draft is now stale.
        values.update(
            state=StudyState.RECEIVING,
            state_reason=None,
            generation=_studies.c.generation + 1,
            ready_at=None,
        )
        state = _studies.c.state != StudyState.RECEIVING
    return (
        update(_studies)
        .where(_studies.c.study_instance_uid == bindparam("b_uid"), state)
        .values(values)
        .returning(*_STUDY_RETURNS)
    )


# Built once: SQLAlchemy then reuses their compiled form on every call.
_ADD_TO_RECEIVING = _received(reopen=False)
_ADD_AND_REOPEN = _received(reopen=True)
_SET_MODALITIES = (
    update(_studies)
    .where(_studies.c.id == bindparam("b_id"))
    .values(modalities=bindparam("b_modalities"))
)
_DUPLICATE = (
    select(_instances.c.digest, _studies.c.study_key, _instances.c.path)
    .join(_studies, _studies.c.id == _instances.c.study_id)
    .where(_instances.c.sop_instance_uid == bindparam("b_uid"))
)


@functools.cache
def _inserts(dialect: str) -> tuple[Any, Any]:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING, of a study and of an instance."""
    if dialect == "sqlite":
        # The dialect's INSERT ... ON CONFLICT has no cache key, so SQLAlchemy
        # would compile it again for every instance; INSERT OR IGNORE does the
        # same here (the UIDs' unique keys are the only constraints a row can
        # hit: every NOT NULL column is given, study_key is a fresh UUID) and
        # is compiled once.
        return (
            insert(_studies).prefix_with("OR IGNORE").returning(*_STUDY_RETURNS),
            insert(_instances).prefix_with("OR IGNORE").returning(_instances.c.id),
        )
    if dialect != "postgresql":
        raise NotImplementedError(f"no conflict-ignoring INSERT for {dialect}")
    study = (
        postgresql.insert(_studies)
        .on_conflict_do_nothing(index_elements=["study_instance_uid"])
        .returning(*_STUDY_RETURNS)
    )
    instance = (
        postgresql.insert(_instances)
        .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
        .returning(_instances.c.id)
    )
    return study, instance


class _Compiled:
    """A Core statement compiled once for a dialect, run straight on the DBAPI cursor.

    The listener indexes each CT slice with two statements; SQLAlchemy's work
    around each execution (cache key, execution context, result wrapper,
    events) cost several times the SQL. Here the SQL text, the order of its
    parameters and their type conversions are worked out once; an execution
    is ``construct_params``, the conversions and one DBAPI call. Only for
    statements with fixed parameter names (no IN lists, no literal binds).
    """

    __slots__ = ("_compiled", "_order", "_processors", "sql")

    def __init__(self, statement: Any, dialect: Any, column_keys: list[str] | None) -> None:
        compiled = statement.compile(dialect=dialect, column_keys=column_keys)
        self._compiled = compiled
        self.sql = compiled.string
        self._order = compiled.positiontup  # positional paramstyle (SQLite), else None
        self._processors = {
            name: processor
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }

    def first(self, conn: Connection | DirectTransaction, params: dict[str, Any]) -> Any:
        """The first row, or None (the statement's other rows are dropped)."""
        values = self._compiled.construct_params(params)
        for name, processor in self._processors.items():
            if name in values:
                values[name] = processor(values[name])
        args = values if self._order is None else [values[name] for name in self._order]
        if isinstance(conn, DirectTransaction):
            cursor = conn.dbapi_connection.cursor()
        else:
            cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(self.sql, args)
            return cursor.fetchone() if cursor.description else None
        finally:
            cursor.close()


# Per dialect (one per engine): {id(statement): (statement, compiled)}.
_compiled: weakref.WeakKeyDictionary[Any, dict[int, tuple[Any, _Compiled]]] = (
    weakref.WeakKeyDictionary()
)


def _first(conn: Connection | DirectTransaction, statement: Any, params: dict[str, Any]) -> Any:
    """``conn.execute(statement, params).first()``, on the fast path of ``_Compiled``."""
    known = _compiled.setdefault(conn.dialect, {})
    entry = known.get(id(statement))
    if entry is None or entry[0] is not statement:
        keys = sorted(params) if getattr(statement, "is_insert", False) else None
        entry = known[id(statement)] = (statement, _Compiled(statement, conn.dialect, keys))
    return entry[1].first(conn, params)


def insert_instance(
    conn: Connection | DirectTransaction,
    study: StudyFields,
    instance: InstanceFields,
    now: datetime,
) -> IndexResult:
    """Index a new instance inside the caller's transaction; the fast path of the listener.

    The study row is created, or counted and (when past RECEIVING) re-opened,
    first; then the instance row is inserted. A DUPLICATE result means the SOP
    Instance UID is already indexed and this transaction has already touched
    the study row: the caller must roll the transaction back. On PostgreSQL the
    study row stays locked, and the instance's UID reserved, until the commit.
    """
    insert_study, insert_instance_row = _inserts(conn.dialect.name)
    params = {"b_uid": study.study_instance_uid, "b_now": now, "b_priority": study.priority}
    reopened = False
    for _attempt in range(3):
        row = _first(conn, _ADD_TO_RECEIVING, params)
        if row is None:
            row = _first(conn, _ADD_AND_REOPEN, params)
            reopened = row is not None
        if row is None:
            row = _first(
                conn,
                insert_study,
                dict(
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
                    instance_count=1,
                    first_received_at=now,
                    last_received_at=now,
                    updated_at=now,
                ),
            )
        if row is not None:
            break
        # Another process created the study between our UPDATEs and INSERT: count on it.
    else:  # pragma: no cover - needs three lost races in a row
        raise RuntimeError(f"cannot index into study {study.study_instance_uid}")
    study_id, study_key, modalities = row
    merged = _merge_modalities(modalities or "", instance.modality)
    if merged != modalities:
        _first(conn, _SET_MODALITIES, {"b_id": study_id, "b_modalities": merged})
    inserted = _first(
        conn,
        insert_instance_row,
        dict(
            study_id=study_id,
            sop_instance_uid=instance.sop_instance_uid,
            sop_class_uid=instance.sop_class_uid,
            series_instance_uid=instance.series_instance_uid,
            modality=instance.modality,
            transfer_syntax_uid=instance.transfer_syntax_uid,
            path=instance.path,
            size_bytes=instance.size_bytes,
            digest=instance.digest,
            received_at=now,
        ),
    )
    if inserted is None:
        kept = _first(conn, _DUPLICATE, {"b_uid": instance.sop_instance_uid})
        if kept is None:  # pragma: no cover - the INSERT just hit this UID's unique key
            raise RuntimeError(f"instance {instance.sop_instance_uid} neither new nor indexed")
        kept_digest, kept_key, kept_path = kept
        return IndexResult(Indexed.DUPLICATE, str(kept_key), str(kept_digest), path=str(kept_path))
    return IndexResult(Indexed.NEW, str(study_key), instance.digest, reopened, instance.path)


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
        return IndexResult(Indexed.DUPLICATE, str(key), existing.digest, path=existing.path)
    savepoint = session.begin_nested()
    result = insert_instance(session.connection(), study, instance, now)
    if result.outcome is Indexed.DUPLICATE:  # indexed by another process meanwhile
        savepoint.rollback()
    else:
        savepoint.commit()
    return result


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
