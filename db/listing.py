"""What the review pages read: the queue page, one draft, counts, quality signal.

Each is one query (joins, not a query per row) over indexed columns, paginated.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, case, func, select
from sqlalchemy.orm import Session, aliased

from db.tables import Draft, DraftState, Review, Reviewer, ReviewOutcome, Study


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class QueueFilter:
    states: tuple[DraftState, ...] = ()
    modality: str | None = None
    min_priority: int | None = None
    claimed_by: int | None = None


@dataclass(frozen=True)
class QueueRow:
    id: int
    state: DraftState
    state_reason: str | None
    priority: int
    modality: str
    created_at: datetime
    study_description: str | None
    accession_number: str | None
    flags: list[str]
    model_id: str
    prompt_version: str
    claimed_by: str | None
    claim_expires_at: datetime | None


_claimant = aliased(Reviewer)


def _filtered(query: Any, filt: QueueFilter) -> Any:
    if filt.states:
        query = query.where(Draft.state.in_(filt.states))
    if filt.modality:
        query = query.where(Draft.modality.contains(filt.modality, autoescape=True))
    if filt.min_priority is not None:
        query = query.where(Draft.priority >= filt.min_priority)
    if filt.claimed_by is not None:
        query = query.where(Draft.claimed_by == filt.claimed_by)
    return query


def list_drafts(
    session: Session, filt: QueueFilter, *, limit: int = 50, offset: int = 0
) -> tuple[list[QueueRow], int]:
    """One page of the queue, most urgent then oldest first, and the filtered total."""
    query = (
        select(
            Draft.id,
            Draft.state,
            Draft.state_reason,
            Draft.priority,
            Draft.modality,
            Draft.created_at,
            Study.study_description,
            Study.accession_number,
            Draft.flags,
            Draft.model_id,
            Draft.prompt_version,
            _claimant.display_name,
            Draft.claim_expires_at,
        )
        .join(Study, Study.id == Draft.study_id)
        .outerjoin(_claimant, _claimant.id == Draft.claimed_by)
        .order_by(Draft.priority.desc(), Draft.created_at, Draft.id)
        .limit(limit)
        .offset(offset)
    )
    rows = session.execute(_filtered(query, filt)).all()
    total = session.scalar(_filtered(select(func.count(Draft.id)), filt)) or 0
    return [_queue_row(r) for r in rows], int(total)


def _queue_row(r: Row[Any]) -> QueueRow:
    return QueueRow(
        id=r[0],
        state=DraftState(r[1]),
        state_reason=r[2],
        priority=r[3],
        modality=r[4],
        created_at=as_utc(r[5]) or datetime.now(UTC),
        study_description=r[6],
        accession_number=r[7],
        flags=list(r[8] or []),
        model_id=r[9],
        prompt_version=r[10],
        claimed_by=r[11],
        claim_expires_at=as_utc(r[12]),
    )


def state_counts(session: Session) -> dict[DraftState, int]:
    """Drafts per state, every state present."""
    counts = dict.fromkeys(DraftState, 0)
    for state, n in session.execute(select(Draft.state, func.count()).group_by(Draft.state)):
        counts[DraftState(state)] = int(n)
    return counts


@dataclass(frozen=True)
class DraftDetail:
    draft: Draft
    study: Study
    claimant: str | None
    review: Review | None
    reviewer: str | None


def draft_detail(session: Session, draft_id: int) -> DraftDetail | None:
    """A draft with its study, claimant and review, in one query."""
    signer = aliased(Reviewer)
    row = session.execute(
        select(Draft, Study, _claimant.display_name, Review, signer.display_name)
        .join(Study, Study.id == Draft.study_id)
        .outerjoin(_claimant, _claimant.id == Draft.claimed_by)
        .outerjoin(Review, Review.draft_id == Draft.id)
        .outerjoin(signer, signer.id == Review.reviewer_id)
        .where(Draft.id == draft_id)
    ).first()
    if row is None:
        return None
    return DraftDetail(row[0], row[1], row[2], row[3], row[4])


@dataclass(frozen=True)
class QualityRow:
    model_id: str
    prompt_version: str
    signed: int
    as_is: int
    edited: int
    rejected: int
    mean_edit_distance: float | None  # over signed drafts


def quality_by_model(session: Session) -> list[QualityRow]:
    """Per model and prompt version: how often reviewers sign as drafted, edit, reject."""
    signed = Review.outcome.in_([ReviewOutcome.APPROVED, ReviewOutcome.EDITED])
    rows = session.execute(
        select(
            Draft.model_id,
            Draft.prompt_version,
            func.count(case((signed, 1))),
            func.count(case((Review.outcome == ReviewOutcome.APPROVED, 1))),
            func.count(case((Review.outcome == ReviewOutcome.EDITED, 1))),
            func.count(case((Review.outcome == ReviewOutcome.REJECTED, 1))),
            func.avg(case((signed, Review.edit_distance))),
        )
        .join(Review, Review.draft_id == Draft.id)
        .group_by(Draft.model_id, Draft.prompt_version)
        .order_by(Draft.model_id, Draft.prompt_version)
    ).all()
    return [
        QualityRow(r[0], r[1], r[2], r[3], r[4], r[5], None if r[6] is None else float(r[6]))
        for r in rows
    ]
