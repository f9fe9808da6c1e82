"""docker/postgres-init.sh on the real PostgreSQL server: two owned databases whose
roles can run prelim's migrations."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, make_url, text

from prelim.cli import main
from tests.unit.ship.docker_files import INIT_SQL, clean_env

pytestmark = pytest.mark.postgres


def test_init_script_creates_owned_databases(
    postgres_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed")
    admin_url = make_url(postgres_server)
    names = [f"ship_{uuid.uuid4().hex[:10]}_{n}" for n in ("q", "p")]
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    try:
        done = subprocess.run(
            ["sh", str(INIT_SQL)],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(
                APP_DATABASES=" ".join(names),
                POSTGRES_USER=admin_url.username or "postgres",
                POSTGRES_PASSWORD="pw'with\"quotes",
                PGHOST=admin_url.host or "127.0.0.1",
                PGPORT=str(admin_url.port or 5432),
            ),
            check=False,
        )
        assert done.returncode == 0, done.stderr
        with admin.connect() as conn:
            owners: dict[str, str] = {
                row[0]: row[1]
                for row in conn.execute(
                    text(
                        "SELECT datname, pg_get_userbyid(datdba) FROM pg_database "
                        "WHERE datname = ANY(:names)"
                    ),
                    {"names": names},
                )
            }
            superuser = conn.execute(
                text("SELECT bool_or(rolsuper) FROM pg_roles WHERE rolname = ANY(:names)"),
                {"names": names},
            ).scalar_one()
        assert owners == {n: n for n in names}
        assert superuser is False
        # The queue role, not a superuser, brings its database to the newest schema.
        url = admin_url.set(username=names[0], password="unused", database=names[0])
        monkeypatch.setenv("PRELIM_CONFIG", str(tmp_path / "absent.toml"))
        url_text = url.render_as_string(hide_password=False)
        assert main(["db", "upgrade", "--database-url", url_text]) == 0
        queue = create_engine(url_text)
        try:
            assert "studies" in inspect(queue).get_table_names()
        finally:
            queue.dispose()
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                conn.execute(text(f'DROP ROLE IF EXISTS "{name}"'))
        admin.dispose()
