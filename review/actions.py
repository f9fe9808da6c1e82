"""What the pages and the API both do: read the queue, open a draft, find its images."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.audit import Action, Outcome, record
from db.listing import QueueFilter, draft_detail, list_drafts, state_counts
from db.queue import renew
from db.tables import Draft
from prelim.settings import Settings
from review.deps import Me
from review.outcomes import raise_for
from review.schemas import DraftOut, QueueItem, QueuePage


def queue_page(session: Session, filt: QueueFilter, *, offset: int, limit: int) -> QueuePage:
    rows, total = list_drafts(session, filt, limit=limit, offset=offset)
    return QueuePage(
        items=[QueueItem.of(r) for r in rows],
        total=total,
        offset=offset,
        limit=limit,
        counts=state_counts(session),
    )


def open_draft(session: Session, me: Me, draft_id: int, settings: Settings) -> DraftOut:
    """The draft as its page shows it; a view is audited and renews our own lease."""
    detail = draft_detail(session, draft_id)
    if detail is None:
        record(session, me.actor, Action.VIEW, Outcome.NOT_FOUND, draft_id=draft_id)
        session.commit()  # the audit row stays although the request fails
        raise_for(Outcome.NOT_FOUND)
        raise AssertionError("unreachable")
    if renew(session, me.actor, draft_id, ttl_s=settings.claim_ttl_s):
        session.refresh(detail.draft)
    record(session, me.actor, Action.VIEW, Outcome.OK, draft_id=draft_id)
    return DraftOut.of(detail, me.id)


def image_file(session: Session, settings: Settings, draft_id: int, index: int) -> Path | None:
    """The index-th image of a draft, or None; never a file outside the images folder."""
    images = session.scalar(select(Draft.images).where(Draft.id == draft_id))
    if not images or not 0 <= index < len(images):
        return None
    root = settings.resolved_images_dir
    path = (root / str(images[index])).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path
