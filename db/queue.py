"""The review queue's writes: drafts in from the pipeline, claims and releases.

This is the only place with the claim query. On PostgreSQL a claim is one
``UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED) RETURNING``, so
concurrent reviewers never wait on each other's rows, and it carries its audit
row in the same statement (a data-modifying CTE: one round trip); on SQLite the
same UPDATE runs inside a ``BEGIN IMMEDIATE`` transaction (see db.engine), which
makes the database the single writer, and the audit row follows it.

A claim is a lease: it ends at ``claim_expires_at`` unless the reviewer's
activity renews it, after which anyone may claim the draft.

Statements go through ``session.connection()``: as plain Core they skip the
ORM's bulk-update bookkeeping, which costs more than the query itself.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Integer,
    String,
    Text,
    TextClause,
    and_,
    bindparam,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from db.audit import Action, Actor, Outcome, record, row
from db.pipeline import StudyNotFound
from db.tables import ACTIVE_DRAFT_STATES, Draft, DraftState, Study

__all__ = [
    "StudyNotFound",
    "claim",
    "claim_next",
    "enqueue_draft",
    "record_failure",
    "release",
    "renew",
    "why_refused",
]


def _now() -> datetime:
    return datetime.now(UTC)


def _lock_study(session: Session, study_key: str) -> Study:
    # Locking the study row serialises concurrent enqueues of one study, so the
    # supersede below always sees the other transaction's draft.
    study = session.scalar(select(Study).where(Study.study_key == study_key).with_for_update())
    if study is None:
        raise StudyNotFound(f"no study has key {study_key}")
    return study


def _supersede_active(session: Session, study: Study, generation: int, now: datetime) -> None:
    session.connection().execute(
        update(Draft)
        .where(Draft.study_id == study.id, Draft.state.in_(ACTIVE_DRAFT_STATES))
        .values(
            state=DraftState.SUPERSEDED,
            state_reason=f"replaced by a draft of generation {generation}",
            claim_expires_at=None,
            updated_at=now,
        )
    )


def _insert_draft(session: Session, study: Study, generation: int, **values: Any) -> int:
    now = _now()
    _supersede_active(session, study, generation, now)
    draft_id = (
        session.connection()
        .execute(
            insert(Draft)
            .values(
                study_id=study.id,
                generation=generation,
                priority=study.priority,
                modality=study.modalities or "",
                created_at=now,
                updated_at=now,
                **values,
            )
            .returning(Draft.id)
        )
        .scalar_one()
    )
    return int(draft_id)


def enqueue_draft(
    session: Session,
    *,
    study_key: str,
    generation: int,
    findings: str,
    impression: str,
    raw_text: str,
    flags: list[str],
    provenance: dict[str, Any],
    model_id: str,
    prompt_version: str,
    images: list[str],
) -> int:
    """Queue a draft for review; any active draft of the study becomes superseded."""
    study = _lock_study(session, study_key)
    return _insert_draft(
        session,
        study,
        generation,
        state=DraftState.QUEUED,
        findings=findings,
        impression=impression,
        raw_text=raw_text,
        flags=list(flags),
        provenance=dict(provenance),
        model_id=model_id[:256],
        prompt_version=prompt_version[:64],
        images=list(images),
    )


def record_failure(
    session: Session, *, study_key: str, generation: int, reason: str, skipped: bool = False
) -> int:
    """Put the pipeline's permanent failure (or skip) in the queue, with its reason."""
    study = _lock_study(session, study_key)
    return _insert_draft(
        session,
        study,
        generation,
        state=DraftState.SKIPPED if skipped else DraftState.FAILED,
        state_reason=reason,
        flags=[],
        provenance={},
        images=[],
    )


def _claim_values(actor: Actor, now: datetime, ttl_s: float) -> dict[str, Any]:
    return {
        "state": DraftState.CLAIMED,
        "claimed_by": actor.reviewer_id,
        "claimed_at": now,
        "claim_expires_at": now + timedelta(seconds=ttl_s),
        "updated_at": now,
    }


# The claim, written out: two index walks, each taking the first row nobody
# else holds (the best queued draft, the best draft whose lease expired), and
# the better of the two is claimed. State literals, not parameters, so that a
# generic plan still matches the partial indexes.
_CLAIM_CTES = """
queued AS (
    SELECT id, priority, created_at FROM drafts
    WHERE state = 'queued'
    ORDER BY priority DESC, created_at, id LIMIT 1 {lock}
), expired AS (
    SELECT id, priority, created_at FROM drafts
    WHERE state = 'claimed' AND claim_expires_at < :now
    ORDER BY priority DESC, created_at, id LIMIT 1 {lock}
)"""

_CLAIM_UPDATE = """
UPDATE drafts
SET state = 'claimed', claimed_by = :reviewer_id, claimed_at = :now,
    claim_expires_at = :expires, updated_at = :now,
    edited_findings = NULL, edited_impression = NULL
WHERE id = (
    SELECT id FROM (SELECT * FROM queued UNION ALL SELECT * FROM expired) AS claimable
    ORDER BY priority DESC, created_at, id LIMIT 1
)
RETURNING id"""

# SQLite: the claim alone; its audit row follows as a second statement in the
# same BEGIN IMMEDIATE transaction (SQLite has no data-modifying CTEs).
_CLAIM_NEXT = "WITH" + _CLAIM_CTES + _CLAIM_UPDATE

# PostgreSQL: the claim and its audit row in one statement, one round trip.
# The UPDATE is a data-modifying CTE; the INSERT always writes exactly one row
# (the LEFT JOIN against a one-row VALUES), with the claimed draft's id and
# outcome "ok", or no draft and outcome "empty" when nothing was claimable.
# Both writes are in the caller's transaction, so they commit or vanish together.
_CLAIM_NEXT_AUDITED = (
    "WITH"
    + _CLAIM_CTES
    + ", claimed AS ("
    + _CLAIM_UPDATE
    + """
)
INSERT INTO audit_events (at, reviewer_id, actor, action, draft_id, outcome, detail, address)
SELECT :now, :reviewer_id, :actor, :action, claimed.id,
       CASE WHEN claimed.id IS NULL THEN :empty ELSE :ok END, :detail, :address
FROM (VALUES (1)) AS one LEFT JOIN claimed ON true
RETURNING draft_id
"""
)


@lru_cache(maxsize=4)
def _claim_next_statement(dialect: str) -> TextClause:
    if dialect == "postgresql":
        return text(_CLAIM_NEXT_AUDITED.format(lock="FOR UPDATE SKIP LOCKED")).bindparams(
            bindparam("now", type_=DateTime(timezone=True)),
            bindparam("expires", type_=DateTime(timezone=True)),
            bindparam("reviewer_id", type_=Integer()),
            bindparam("actor", type_=String()),
            bindparam("action", type_=String()),
            bindparam("ok", type_=String()),
            bindparam("empty", type_=String()),
            bindparam("detail", type_=Text()),
            bindparam("address", type_=String()),
        )
    # SQLite has no row locks: its BEGIN IMMEDIATE transaction is the lock.
    return text(_CLAIM_NEXT.format(lock="")).bindparams(
        bindparam("now", type_=DateTime(timezone=True)),
        bindparam("expires", type_=DateTime(timezone=True)),
        bindparam("reviewer_id", type_=Integer()),
    )


def claim_next(session: Session, actor: Actor, *, ttl_s: float) -> int | None:
    """Claim the most urgent, then oldest, claimable draft; None when there is none.

    Writes one audit row either way: outcome "ok" with the draft, or "empty".
    """
    now = _now()
    connection = session.connection()
    params = {"expires": now + timedelta(seconds=ttl_s)}
    if connection.dialect.name == "postgresql":
        audit = row(actor, Action.CLAIM, Outcome.OK, detail="next", at=now)
        draft_id = connection.execute(
            _claim_next_statement("postgresql"),
            {
                **params,
                "now": now,
                "reviewer_id": actor.reviewer_id,
                "actor": audit["actor"],
                "action": audit["action"],
                "ok": str(Outcome.OK),
                "empty": str(Outcome.EMPTY),
                "detail": audit["detail"],
                "address": audit["address"],
            },
        ).scalar_one()
        return None if draft_id is None else int(draft_id)
    draft_id = connection.execute(
        _claim_next_statement(connection.dialect.name),
        {**params, "now": now, "reviewer_id": actor.reviewer_id},
    ).scalar_one_or_none()
    outcome = Outcome.OK if draft_id is not None else Outcome.EMPTY
    record(session, actor, Action.CLAIM, outcome, draft_id=draft_id, detail="next", at=now)
    return None if draft_id is None else int(draft_id)


def claim(session: Session, actor: Actor, draft_id: int, *, ttl_s: float) -> Outcome:
    """Claim one draft: queued, or claimed with an expired lease, or already ours."""
    now = _now()
    claimable = or_(
        Draft.state == DraftState.QUEUED,
        and_(
            Draft.state == DraftState.CLAIMED,
            or_(Draft.claim_expires_at < now, Draft.claimed_by == actor.reviewer_id),
        ),
    )
    got = (
        session.connection()
        .execute(
            update(Draft)
            .where(Draft.id == draft_id, claimable)
            .values(**_claim_values(actor, now, ttl_s))
            .returning(Draft.id)
        )
        .scalar_one_or_none()
    )
    outcome = Outcome.OK if got is not None else why_refused(session, actor, draft_id, now)
    record(session, actor, Action.CLAIM, outcome, draft_id=draft_id, at=now)
    return outcome


def held_by(actor: Actor, draft_id: int) -> ColumnElement[bool]:
    """The condition that ``actor`` holds the claim on draft ``draft_id``."""
    return and_(
        Draft.id == draft_id,
        Draft.state == DraftState.CLAIMED,
        Draft.claimed_by == actor.reviewer_id,
    )


def renew(session: Session, actor: Actor, draft_id: int, *, ttl_s: float) -> bool:
    """Extend our lease on a draft we hold; False when we do not hold it."""
    now = _now()
    result = (
        session.connection()
        .execute(
            update(Draft)
            .where(held_by(actor, draft_id))
            .values(claim_expires_at=now + timedelta(seconds=ttl_s), updated_at=now)
            .returning(Draft.id)
        )
        .scalar_one_or_none()
    )
    return result is not None


def release(session: Session, actor: Actor, draft_id: int) -> Outcome:
    """Give a claimed draft back to the queue; the working copy is dropped."""
    now = _now()
    got = (
        session.connection()
        .execute(
            update(Draft)
            .where(held_by(actor, draft_id))
            .values(
                state=DraftState.QUEUED,
                claimed_by=None,
                claimed_at=None,
                claim_expires_at=None,
                edited_findings=None,
                edited_impression=None,
                updated_at=now,
            )
            .returning(Draft.id)
        )
        .scalar_one_or_none()
    )
    outcome = Outcome.OK if got is not None else why_refused(session, actor, draft_id, now)
    record(session, actor, Action.RELEASE, outcome, draft_id=draft_id, at=now)
    return outcome


def why_refused(session: Session, actor: Actor, draft_id: int, now: datetime) -> Outcome:
    """Why an action on ``draft_id`` that needs our claim did not apply."""
    row = session.execute(
        select(Draft.state, Draft.claimed_by, Draft.claim_expires_at).where(Draft.id == draft_id)
    ).first()
    if row is None:
        return Outcome.NOT_FOUND
    if row.state == DraftState.CLAIMED and row.claimed_by != actor.reviewer_id:
        return Outcome.NOT_YOURS
    return Outcome.WRONG_STATE
