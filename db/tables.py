"""Database tables (SQLAlchemy 2.0 declarative).

``studies`` is the only table that links a study's opaque key to its original
identifiers (accession, patient). Everything outside ``db`` and ``review`` knows
a study by its ``study_key`` alone.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def str_enum(enum_cls: type[enum.Enum], name: str) -> Enum:
    """A VARCHAR-backed enum whose database strings equal the Python values."""
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        length=24,
        values_callable=lambda cls: [m.value for m in cls],
        validate_strings=True,
    )


class StudyState(enum.StrEnum):
    RECEIVING = "receiving"  # instances still arriving (or arrived < stable_age ago)
    READY = "ready"  # stable; the pipeline trigger is due or sent
    PROCESSING = "processing"  # a flow run is working on it
    DRAFTED = "drafted"  # a draft is in the review queue
    SKIPPED = "skipped"  # nothing the model may see (burned-in text, no images)
    FAILED = "failed"  # the pipeline failed permanently; see state_reason


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_key: Mapped[str] = mapped_column(String(32), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)

    # Clinical identifiers: shown only to signed-in reviewers.
    accession_number: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    referring_physician: Mapped[str | None] = mapped_column(String(324))

    modalities: Mapped[str] = mapped_column(String(64), default="")
    priority: Mapped[int] = mapped_column(Integer, default=0)  # higher is more urgent
    calling_ae_title: Mapped[str | None] = mapped_column(String(16))

    state: Mapped[StudyState] = mapped_column(
        str_enum(StudyState, "study_state"), default=StudyState.RECEIVING
    )
    state_reason: Mapped[str | None] = mapped_column(Text)
    # Bumped each time a late instance re-opens a ready study; a trigger and a
    # draft belong to one generation, so a re-opened study gets a new draft.
    generation: Mapped[int] = mapped_column(Integer, default=1)
    triggered_generation: Mapped[int] = mapped_column(Integer, default=0)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)

    first_received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    last_received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )
    ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    triggered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )

    instances: Mapped[list[Instance]] = relationship(back_populates="study")

    __table_args__ = (Index("ix_studies_state_last_received", "state", "last_received_at"),)


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    series_instance_uid: Mapped[str | None] = mapped_column(String(64))
    modality: Mapped[str | None] = mapped_column(String(16))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    # Relative to the spool folder, so the spool can move.
    path: Mapped[str] = mapped_column(String(512))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    study: Mapped[Study] = relationship(back_populates="instances")
