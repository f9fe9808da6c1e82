"""A reviewer's work on a claimed draft: edit, sign (as drafted or edited), reject.

The draft text and the signed text are both kept; the word-level edit distance
and the sections changed are stored per review as the quality signal of the
model and prompt version that wrote the draft.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from db.audit import Action, Actor, Outcome, record
from db.queue import held_by, why_refused
from db.tables import Draft, DraftState, Review, ReviewOutcome

MAX_TEXT = 20_000  # characters per section; a report is far shorter
_WORDS = re.compile(r"\S+")


def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance counted in words (insert, delete or replace one word)."""
    left, right = _WORDS.findall(a), _WORDS.findall(b)
    if len(left) < len(right):
        left, right = right, left
    previous = list(range(len(right) + 1))
    for i, word in enumerate(left, 1):
        current = [i]
        for j, other in enumerate(right, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (word != other))
            )
        previous = current
    return previous[-1]


def _normalise(text: str) -> str:
    # Browsers send CRLF from textareas; trailing space is not an edit.
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").strip().split("\n"))


def _held(session: Session, actor: Actor, draft_id: int) -> Draft | None:
    """The draft if we hold its claim, locked for this transaction."""
    return session.scalar(select(Draft).where(held_by(actor, draft_id)).with_for_update())


def save_edit(
    session: Session, actor: Actor, draft_id: int, findings: str, impression: str, *, ttl_s: float
) -> Outcome:
    """Keep the reviewer's working copy and renew the lease."""
    now = datetime.now(UTC)
    if len(findings) > MAX_TEXT or len(impression) > MAX_TEXT:
        outcome = Outcome.INVALID
    else:
        got = (
            session.connection()
            .execute(
                update(Draft)
                .where(held_by(actor, draft_id))
                .values(
                    edited_findings=_normalise(findings),
                    edited_impression=_normalise(impression),
                    claim_expires_at=now + timedelta(seconds=ttl_s),
                    updated_at=now,
                )
                .returning(Draft.id)
            )
            .scalar_one_or_none()
        )
        outcome = Outcome.OK if got is not None else why_refused(session, actor, draft_id, now)
    record(session, actor, Action.EDIT, outcome, draft_id=draft_id, at=now)
    return outcome


def changed_sections(draft: Draft, findings: str, impression: str) -> list[str]:
    pairs: Sequence[tuple[str, str, str]] = (
        ("findings", draft.findings, findings),
        ("impression", draft.impression, impression),
    )
    return [name for name, old, new in pairs if _normalise(old) != _normalise(new)]


def approve(
    session: Session, actor: Actor, draft_id: int, findings: str, impression: str
) -> Outcome:
    """Sign the draft with this text: approved if unchanged, edited otherwise."""
    now = datetime.now(UTC)
    detail = None
    draft = None
    too_long = len(findings) > MAX_TEXT or len(impression) > MAX_TEXT
    if too_long or not (findings + impression).strip():
        outcome = Outcome.INVALID
    else:
        draft = _held(session, actor, draft_id)
        outcome = Outcome.OK if draft is not None else why_refused(session, actor, draft_id, now)
    if draft is not None:
        findings, impression = _normalise(findings), _normalise(impression)
        sections = changed_sections(draft, findings, impression)
        distance = word_edit_distance(draft.findings, findings) + word_edit_distance(
            draft.impression, impression
        )
        review_outcome = ReviewOutcome.EDITED if sections else ReviewOutcome.APPROVED
        session.connection().execute(
            insert(Review).values(
                draft_id=draft.id,
                reviewer_id=actor.reviewer_id,
                outcome=review_outcome,
                findings=findings,
                impression=impression,
                edit_distance=distance,
                sections_changed=sections,
                created_at=now,
            )
        )
        draft.state = DraftState.SIGNED
        draft.claim_expires_at = None
        draft.updated_at = now
        detail = f"{review_outcome}; {distance} words changed"
    record(session, actor, Action.SIGN, outcome, draft_id=draft_id, detail=detail, at=now)
    return outcome


def reject(session: Session, actor: Actor, draft_id: int, reason: str) -> Outcome:
    """Refuse the draft, with the reviewer's reason."""
    now = datetime.now(UTC)
    reason = reason.strip()
    draft = None
    if not reason or len(reason) > MAX_TEXT:
        outcome = Outcome.INVALID
    else:
        draft = _held(session, actor, draft_id)
        outcome = Outcome.OK if draft is not None else why_refused(session, actor, draft_id, now)
    if draft is not None:
        session.connection().execute(
            insert(Review).values(
                draft_id=draft.id,
                reviewer_id=actor.reviewer_id,
                outcome=ReviewOutcome.REJECTED,
                reason=reason,
                edit_distance=0,
                sections_changed=[],
                created_at=now,
            )
        )
        draft.state = DraftState.REJECTED
        draft.state_reason = reason
        draft.claim_expires_at = None
        draft.updated_at = now
    record(session, actor, Action.REJECT, outcome, draft_id=draft_id, at=now)
    return outcome
