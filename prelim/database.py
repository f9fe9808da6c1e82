"""Open the configured database, migrated to the current schema."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_sessionmaker
from db.migrate import upgrade
from prelim.errors import DatabaseUnavailable
from prelim.settings import Settings


@dataclass(frozen=True)
class Database:
    engine: Engine
    sessions: sessionmaker[Session]

    def dispose(self) -> None:
        self.engine.dispose()


def open_database(settings: Settings, *, migrate: bool = True) -> Database:
    """Connect to ``settings``' database and, unless told not to, migrate it to head."""
    engine = make_engine(settings.resolved_database_url)
    try:
        if migrate:
            upgrade(engine)
        else:
            with engine.connect():
                pass
    except OperationalError as exc:
        engine.dispose()
        url = engine.url.render_as_string(hide_password=True)
        raise DatabaseUnavailable(
            f"cannot reach the database at {url}: {exc.orig}. "
            "Check PRELIM_DATABASE_URL and that the server is running."
        ) from exc
    return Database(engine, make_sessionmaker(engine))
