"""The listener's index statements (db.studies.insert_instance) on SQLite and PostgreSQL.

They run on the DBAPI cursor, compiled once per dialect: what they store must
read back through the ORM exactly as SQLAlchemy's own execution would store it.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import exc, select, text, update

from db.engine import direct_transaction
from db.studies import Indexed, InstanceFields, StudyFields, insert_instance
from db.tables import Instance, Study, StudyState
from prelim.database import Database

STUDY = StudyFields(
    study_instance_uid="1.2.826.0.1.3680043.2.1125.1",
    accession_number="ACC1",
    patient_id="PID-1",
    patient_name="Doe^Jane",
    study_description="CT CHEST",
    priority=1,
    calling_ae_title="PACS",
)


def _instance(n: int, modality: str = "CT") -> InstanceFields:
    return InstanceFields(
        sop_instance_uid=f"1.2.826.0.1.3680043.2.1125.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        series_instance_uid="1.2.826.0.1.3680043.2.1125.1.900",
        modality=modality,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        path=f"abc/{n}.dcm",
        size_bytes=1000 + n,
        digest=f"xxh128:{n:032x}",
    )


def _index(
    database: Database,
    study: StudyFields,
    instance: InstanceFields,
    now: datetime,
    via: str = "direct",
):
    # "direct": as the listener indexes (a DBAPI transaction); "connection":
    # as start-up recovery does (inside SQLAlchemy's own transaction).
    if via == "direct":
        with direct_transaction(database.engine) as direct:
            result = insert_instance(direct, study, instance, now)
            if result.outcome is Indexed.DUPLICATE:
                direct.rollback()
            return result
    with database.engine.connect() as conn, conn.begin() as txn:
        result = insert_instance(conn, study, instance, now)
        if result.outcome is Indexed.DUPLICATE:
            txn.rollback()
        return result


@pytest.mark.parametrize("via", ["direct", "connection"])
def test_instances_are_counted_into_one_study_and_read_back(database: Database, via: str) -> None:
    first = datetime(2026, 12, 1, 9, 30, 15, 123456, tzinfo=UTC)
    later = first + timedelta(seconds=2, microseconds=5)
    one = _index(database, STUDY, _instance(1), first, via)
    two = _index(
        database,
        STUDY.__class__(**{**STUDY.__dict__, "priority": 2}),
        _instance(2, "SR"),
        later,
        via,
    )
    assert one.outcome is two.outcome is Indexed.NEW and one.study_key == two.study_key
    with database.sessions() as session:
        study = session.scalars(select(Study)).one()
        rows = session.scalars(select(Instance).order_by(Instance.id)).all()
    assert study.instance_count == 2 and study.state is StudyState.RECEIVING
    assert study.patient_id == "PID-1" and study.patient_name == "Doe^Jane"
    assert study.priority == 2  # the higher request priority wins
    assert study.modalities == "CT\\SR"
    assert study.first_received_at.replace(tzinfo=UTC) == first
    assert study.last_received_at.replace(tzinfo=UTC) == later
    assert [r.sop_instance_uid for r in rows] == [
        _instance(1).sop_instance_uid,
        _instance(2).sop_instance_uid,
    ]
    assert rows[1].digest == _instance(2).digest and rows[1].size_bytes == 1002
    assert rows[0].received_at.replace(tzinfo=UTC) == first
    if database.engine.dialect.name == "sqlite":
        # Stored as SQLAlchemy itself stores them, so SQL comparisons order them right.
        with database.engine.connect() as conn:
            raw = conn.execute(text("SELECT last_received_at, state FROM studies")).one()
        assert tuple(raw) == ("2026-12-01 09:30:17.123461", "receiving")


def test_a_later_instance_reopens_a_ready_study(database: Database) -> None:
    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    _index(database, STUDY, _instance(1), now)
    with database.sessions() as session, session.begin():
        session.execute(update(Study).values(state=StudyState.DRAFTED, state_reason="done"))
    again = _index(database, STUDY, _instance(2), now + timedelta(minutes=5))
    assert again.reopened
    with database.sessions() as session:
        study = session.scalars(select(Study)).one()
    assert study.state is StudyState.RECEIVING and study.generation == 2
    assert study.state_reason is None and study.instance_count == 2


@pytest.mark.parametrize("via", ["direct", "connection"])
def test_a_duplicate_changes_nothing_and_names_the_kept_copy(database: Database, via: str) -> None:
    now = datetime(2026, 12, 1, 11, 0, tzinfo=UTC)
    _index(database, STUDY, _instance(1), now)
    resent = InstanceFields(
        **{**_instance(1).__dict__, "digest": "xxh128:" + "f" * 32, "path": "x/1.dcm"}
    )
    result = _index(database, STUDY, resent, now + timedelta(seconds=1), via)
    assert result.outcome is Indexed.DUPLICATE
    assert result.digest == _instance(1).digest and result.path == "abc/1.dcm"
    with database.sessions() as session:
        assert session.scalars(select(Study)).one().instance_count == 1


def _count(database: Database) -> int:
    with database.sessions() as session:
        return len(session.scalars(select(Instance)).all())


def test_direct_transaction_commits_rolls_back_and_undoes_a_failed_block(
    database: Database,
) -> None:
    now = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    _index(database, STUDY, _instance(1), now)
    assert _count(database) == 1
    with direct_transaction(database.engine) as txn:
        insert_instance(txn, STUDY, _instance(2), now)
        txn.rollback()
    assert _count(database) == 1
    with pytest.raises(OSError), direct_transaction(database.engine) as txn:
        insert_instance(txn, STUDY, _instance(3), now)
        raise OSError("the spool failed after the statements")
    assert _count(database) == 1
    with database.sessions() as session:
        assert session.scalar(select(Study.instance_count)) == 1
    # The connections went back to the pool, none left checked out.
    assert database.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_direct_transaction_raises_sqlalchemy_errors_and_drops_the_connection(
    database: Database,
) -> None:
    with pytest.raises(exc.DBAPIError) as raised:
        with direct_transaction(database.engine) as txn:
            txn.dbapi_connection.cursor().execute("SELECT no_such_column FROM studies")
    assert isinstance(raised.value.orig, database.engine.dialect.loaded_dbapi.Error)
    assert database.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    # The next transaction gets a working connection.
    _index(database, STUDY, _instance(1), datetime(2026, 12, 1, 10, 0, tzinfo=UTC))
    assert _count(database) == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_direct_transaction_holds_the_sqlite_write_lock(database: Database) -> None:
    path = database.engine.url.database
    assert path
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        with direct_transaction(database.engine):
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # free again once committed
        other.execute("ROLLBACK")
    finally:
        other.close()
