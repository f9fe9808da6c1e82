"""Database tables (SQLAlchemy 2.0 declarative).

``studies`` is the only table that links a study's opaque key to its original
identifiers (accession, patient). Everything outside ``db`` and ``review`` knows
a study by its ``study_key`` alone.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    func,
    text,
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
    # ``<algorithm>:<hex>`` of the file in the spool (dicom_listener/fingerprint.py).
    digest: Mapped[str] = mapped_column(String(80))
    received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now()
    )

    study: Mapped[Study] = relationship(back_populates="instances")


# -- review queue --------------------------------------------------------------


class DraftState(enum.StrEnum):
    QUEUED = "queued"  # waiting for a reviewer
    CLAIMED = "claimed"  # leased to one reviewer until claim_expires_at
    SIGNED = "signed"  # approved, as drafted or edited; see reviews
    REJECTED = "rejected"  # the reviewer refused the draft; see reviews.reason
    FAILED = "failed"  # the pipeline failed permanently; see state_reason
    SKIPPED = "skipped"  # nothing the model may see (burned-in text); see state_reason
    SUPERSEDED = "superseded"  # a later generation of the study replaced it


# A study has at most one draft in these states (the partial unique index below).
ACTIVE_DRAFT_STATES = (
    DraftState.QUEUED,
    DraftState.CLAIMED,
    DraftState.FAILED,
    DraftState.SKIPPED,
)
_ACTIVE_SQL = "state IN ('queued', 'claimed', 'failed', 'skipped')"


class ReviewOutcome(enum.StrEnum):
    APPROVED = "approved"  # signed exactly as drafted
    EDITED = "edited"  # signed after changes
    REJECTED = "rejected"


class Reviewer(Base):
    __tablename__ = "reviewers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(128))
    password_hash: Mapped[str] = mapped_column(String(256))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Draft(Base):
    __tablename__ = "drafts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"))
    generation: Mapped[int] = mapped_column(Integer)
    state: Mapped[DraftState] = mapped_column(str_enum(DraftState, "draft_state"))
    state_reason: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, default=0)  # copied from the study
    modality: Mapped[str] = mapped_column(String(64), default="")  # copied, for filtering

    findings: Mapped[str] = mapped_column(Text, default="")
    impression: Mapped[str] = mapped_column(Text, default="")
    raw_text: Mapped[str] = mapped_column(Text, default="")
    flags: Mapped[list[str]] = mapped_column(JSON, default=list)
    provenance: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    model_id: Mapped[str] = mapped_column(String(256), default="")
    prompt_version: Mapped[str] = mapped_column(String(64), default="")
    # Paths relative to the images folder of the de-identified PNGs the model saw.
    images: Mapped[list[str]] = mapped_column(JSON, default=list)

    # The reviewer's working copy, kept while the draft is claimed.
    edited_findings: Mapped[str | None] = mapped_column(Text)
    edited_impression: Mapped[str | None] = mapped_column(Text)

    claimed_by: Mapped[int | None] = mapped_column(ForeignKey("reviewers.id"))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claim_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    study: Mapped[Study] = relationship()
    claimant: Mapped[Reviewer | None] = relationship()

    __table_args__ = (
        Index(
            "uq_drafts_active_study",
            "study_id",
            unique=True,
            sqlite_where=text(_ACTIVE_SQL),
            postgresql_where=text(_ACTIVE_SQL),
        ),
        Index(
            "ix_drafts_claim_expiry",
            "claim_expires_at",
            sqlite_where=text("state = 'claimed'"),
            postgresql_where=text("state = 'claimed'"),
        ),
        Index("ix_drafts_state_priority_created", "state", "priority", "created_at"),
        Index("ix_drafts_model_prompt", "model_id", "prompt_version"),
    )


# The claim walks this in order: priority first, then oldest.
Index(
    "ix_drafts_queued_order",
    Draft.priority.desc(),
    Draft.created_at,
    Draft.id,
    sqlite_where=text("state = 'queued'"),
    postgresql_where=text("state = 'queued'"),
)


class Review(Base):
    """A reviewer's decision on a draft: the signed text or the rejection reason."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    draft_id: Mapped[int] = mapped_column(ForeignKey("drafts.id", ondelete="CASCADE"), unique=True)
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("reviewers.id"))
    outcome: Mapped[ReviewOutcome] = mapped_column(str_enum(ReviewOutcome, "review_outcome"))
    findings: Mapped[str | None] = mapped_column(Text)
    impression: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    # The quality signal: how far the signed text is from the draft.
    edit_distance: Mapped[int] = mapped_column(Integer, default=0)  # in words
    sections_changed: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """Append-only: one row per view, claim, edit, sign, reject, release, sign-in."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("reviewers.id"))
    actor: Mapped[str] = mapped_column(String(64))  # the sign-in name, kept if renamed
    action: Mapped[str] = mapped_column(String(24))
    # No foreign key: the log outlives what it describes.
    draft_id: Mapped[int | None] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(24))
    detail: Mapped[str | None] = mapped_column(Text)
    address: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (Index("ix_audit_events_draft_at", "draft_id", "at"),)
