"""Engines and sessions for SQLite (embedded, WAL) and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
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


class DirectTransaction:
    """One transaction straight on a pooled DBAPI connection, for a hot path.

    The listener indexes every received instance with two or three compiled
    statements (``db.studies.insert_instance``); around them, SQLAlchemy's
    ``Connection`` and ``Transaction`` (checkout, events, reset, result
    objects) cost more than the SQL. Here a connection is taken from the
    engine's pool as it is (pre-ping included), the transaction begun as the
    engine would (``BEGIN IMMEDIATE`` on SQLite), and committed or rolled
    back with the DBAPI's own calls. A DBAPI error becomes SQLAlchemy's
    wrapper of it (``sqlalchemy.exc.DBAPIError`` and its kinds) and the
    connection is dropped from the pool.
    """

    __slots__ = ("_done", "_pooled", "dbapi_connection", "dialect")

    def __init__(self, engine: Engine) -> None:
        self.dialect = engine.dialect
        try:
            self._pooled = engine.raw_connection()
        except self.dialect.loaded_dbapi.Error as exc:  # raw_connection does not wrap it
            raise self.wrap(exc) from exc
        self.dbapi_connection: Any = self._pooled.dbapi_connection
        self._done = False

    def rollback(self) -> None:
        """End the transaction without its changes (``commit`` is then a no-op)."""
        if not self._done:
            self._done = True
            self.dbapi_connection.rollback()

    def commit(self) -> None:
        if not self._done:
            self._done = True
            self.dbapi_connection.commit()

    def wrap(self, exc: Exception) -> Exception:
        """``exc`` as SQLAlchemy raises it, for a DBAPI error (else ``exc`` itself)."""
        dbapi = self.dialect.loaded_dbapi
        if isinstance(exc, dbapi.Error):
            return DBAPIError.instance(None, None, exc, dbapi.Error)
        return exc


@contextmanager
def direct_transaction(engine: Engine) -> Iterator[DirectTransaction]:
    """A ``DirectTransaction``, committed at the end unless the block raises or rolled back.

    Raises SQLAlchemy's ``DBAPIError`` kinds for errors of the database.
    """
    txn = DirectTransaction(engine)
    pooled = txn._pooled
    try:
        try:
            if txn.dialect.name == "sqlite":
                txn.dbapi_connection.execute("BEGIN IMMEDIATE")
            yield txn
            txn.commit()
        except BaseException as exc:
            wrapped = txn.wrap(exc) if isinstance(exc, Exception) else exc
            if wrapped is not exc:
                pooled.invalidate(exc)  # type: ignore[arg-type]
                raise wrapped from exc
            try:
                txn.rollback()
            except txn.dialect.loaded_dbapi.Error as rollback_exc:
                pooled.invalidate(rollback_exc)
            raise
    finally:
        pooled.close()
