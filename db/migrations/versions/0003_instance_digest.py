"""instances.sha256 becomes instances.digest, ``<algorithm>:<hex>`` (BLAKE3 from now on)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 10:00:00

Rows indexed before keep their SHA-256, labelled ``sha256:``; the listener
never compares digests of two algorithms (dicom_listener/fingerprint.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances") as batch:
        batch.alter_column(
            "sha256",
            new_column_name="digest",
            existing_type=sa.String(length=64),
            type_=sa.String(length=80),
            existing_nullable=False,
        )
    op.execute("UPDATE instances SET digest = 'sha256:' || digest WHERE digest NOT LIKE '%:%'")


def downgrade() -> None:
    # Only SHA-256 digests fit the old column; the others cannot be kept.
    op.execute("UPDATE instances SET digest = substr(digest, 8) WHERE digest LIKE 'sha256:%'")
    op.execute("UPDATE instances SET digest = '' WHERE digest LIKE '%:%'")
    with op.batch_alter_table("instances") as batch:
        batch.alter_column(
            "digest",
            new_column_name="sha256",
            existing_type=sa.String(length=80),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
