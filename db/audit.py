"""The append-only audit log: who did what to which draft, when, from where.

There is deliberately no update or delete here, and the migration adds triggers
that refuse both in the database.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from db.tables import AuditEvent


class Action(enum.StrEnum):
    VIEW = "view"
    CLAIM = "claim"
    EDIT = "edit"
    SIGN = "sign"
    REJECT = "reject"
    RELEASE = "release"
    SIGN_IN = "sign-in"
    SIGN_OUT = "sign-out"


class Outcome(enum.StrEnum):
    OK = "ok"
    EMPTY = "empty"  # claim-next found nothing to claim
    NOT_FOUND = "not-found"
    NOT_YOURS = "not-yours"  # another reviewer holds the claim
    WRONG_STATE = "wrong-state"  # e.g. signing a draft that is not claimed
    INVALID = "invalid"  # e.g. a rejection without a reason
    DENIED = "denied"  # bad credentials


@dataclass(frozen=True)
class Actor:
    """Who acts and from where; ``reviewer_id`` is None for a failed sign-in."""

    reviewer_id: int | None
    name: str
    address: str | None = None


# Built once: every claim writes a row, and rebuilding the statement costs more
# than running it.
_INSERT = insert(AuditEvent)


def record(
    session: Session,
    actor: Actor,
    action: Action,
    outcome: Outcome,
    *,
    draft_id: int | None = None,
    detail: str | None = None,
    at: datetime | None = None,
) -> None:
    """Append one row. ``detail`` must carry no patient identifiers."""
    session.connection().execute(
        _INSERT, row(actor, action, outcome, draft_id=draft_id, detail=detail, at=at)
    )


def row(
    actor: Actor,
    action: Action,
    outcome: Outcome,
    *,
    draft_id: int | None = None,
    detail: str | None = None,
    at: datetime | None = None,
) -> dict[str, object]:
    """The column values of one audit row, as ``record`` writes them.

    Shared with statements that write their audit row themselves (the claim on
    PostgreSQL), so that every row is shaped the same way.
    """
    return {
        "at": at or datetime.now(UTC),
        "reviewer_id": actor.reviewer_id,
        "actor": actor.name[:64],
        "action": str(action),
        "draft_id": draft_id,
        "outcome": str(outcome),
        "detail": detail,
        "address": (actor.address or None) and actor.address[:64],
    }


def events(session: Session, *, draft_id: int | None = None, limit: int = 200) -> list[AuditEvent]:
    """The newest rows first, for one draft or all."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if draft_id is not None:
        query = query.where(AuditEvent.draft_id == draft_id)
    return list(session.scalars(query))
