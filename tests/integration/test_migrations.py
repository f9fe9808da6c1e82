"""The migrations produce exactly the schema the table definitions declare."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from db.tables import Base
from prelim.database import Database


def test_migrations_match_tables(database: Database) -> None:
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_digest_migration_labels_the_sha256_of_older_rows(db_url: str) -> None:
    """0003 keeps every indexed digest, marked with its algorithm, and goes back."""
    from alembic import command
    from sqlalchemy import create_engine, text

    from db.migrate import alembic_config, current, upgrade
    from db.tables import Instance

    engine = create_engine(db_url)
    try:
        upgrade(engine, "0002")
        old = "ab" * 32
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO studies (study_key, study_instance_uid, modalities, state,"
                    " generation, triggered_generation, instance_count, priority) VALUES"
                    " ('k', '1.2.3', 'CT', 'receiving', 1, 0, 1, 0)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO instances (study_id, sop_instance_uid, sop_class_uid,"
                    " transfer_syntax_uid, path, size_bytes, sha256)"
                    " SELECT id, '1.2.3.4', '1.2.840.10008.5.1.4.1.1.2', '1.2.840.10008.1.2.1',"
                    " 'x/y.dcm', 10, :old FROM studies"
                ),
                {"old": old},
            )
        upgrade(engine)
        assert current(engine) == "0003"
        with engine.connect() as conn:
            digest = conn.execute(text("SELECT digest FROM instances")).scalar_one()
        assert digest == f"sha256:{old}"
        assert Instance.__table__.c.digest.type.length >= len("blake3:") + 64
        config = alembic_config(engine.url.render_as_string(hide_password=False))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0002")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT sha256 FROM instances")).scalar_one() == old
    finally:
        engine.dispose()
