"""Engines and sessions for SQLite (embedded, WAL) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(synchronous: str) -> Any:
    def set_pragmas(dbapi_connection: Any, _record: Any) -> None:
        # WAL lets the review app read while the listener writes; busy_timeout turns
        # writer contention into a short wait instead of "database is locked".
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return set_pragmas


def _sqlite_begin(conn: Any) -> None:
    # Take the write lock at BEGIN so read-then-write transactions cannot deadlock.
    # Straight on the DBAPI connection: this runs for every transaction.
    conn.connection.dbapi_connection.execute("BEGIN IMMEDIATE")


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and immediate transactions.

    SQLite commits are durable (``synchronous=FULL``: the WAL is fsynced at each
    commit) unless ``sqlite_synchronous="NORMAL"``, where a commit survives a
    crash of the process but not of the machine. Only for writes that can be
    redone from elsewhere (the listener's index, rebuilt from the spool).
    """
    if sqlite_synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"sqlite_synchronous must be FULL or NORMAL, not {sqlite_synchronous}")
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )
        # pysqlite's own transaction handling would defer BEGIN; take it over.
        event.listen(engine, "connect", _sqlite_pragmas(sqlite_synchronous))

        @event.listens_for(engine, "connect")
        def _no_autobegin(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if parsed.get_backend_name() == "postgresql" and parsed.drivername == "postgresql":
        url = str(parsed.set(drivername="postgresql+psycopg"))
    kwargs.setdefault("pool_pre_ping", True)
    kwargs.setdefault("pool_size", 20)
    kwargs.setdefault("max_overflow", 20)
    return create_engine(url, **kwargs)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    with factory() as session, session.begin():
        yield session
