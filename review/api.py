"""The JSON API: the pages' actions for scripts and tests, described by OpenAPI."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from db.listing import QueueFilter
from db.queue import claim, claim_next, release
from db.reviews import approve, reject, save_edit
from db.tables import DraftState
from review.actions import open_draft, queue_page
from review.deps import ApiReviewer, ApiWriter, SessionDep, SettingsDep
from review.outcomes import raise_for
from review.schemas import (
    ActionOut,
    ClaimOut,
    DraftOut,
    MeOut,
    QueuePage,
    RejectIn,
    ReportIn,
)

router = APIRouter(prefix="/api", tags=["api"])

DraftId = Annotated[int, Path(ge=1, le=2**31 - 1)]
Modality = Annotated[str | None, Query(max_length=16, pattern=r"^[A-Za-z0-9]*$")]


@router.get("/me")
def me(me: ApiReviewer) -> MeOut:
    return MeOut(id=me.id, name=me.name, display_name=me.display_name, csrf_token=me.csrf)


@router.get("/queue")
def queue(
    me: ApiReviewer,
    session: SessionDep,
    state: Annotated[list[DraftState], Query()] = [],  # noqa: B006 - FastAPI copies it
    modality: Modality = None,
    min_priority: Annotated[int | None, Query(ge=-10, le=10)] = None,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> QueuePage:
    filt = QueueFilter(tuple(state), modality or None, min_priority)
    return queue_page(session, filt, offset=offset, limit=limit)


@router.post("/claim-next")
def claim_next_draft(me: ApiWriter, session: SessionDep, settings: SettingsDep) -> ClaimOut:
    return ClaimOut(draft_id=claim_next(session, me.actor, ttl_s=settings.claim_ttl_s))


@router.get("/drafts/{draft_id}", responses={404: {"description": "No such draft"}})
def get_draft(
    draft_id: DraftId, me: ApiReviewer, session: SessionDep, settings: SettingsDep
) -> DraftOut:
    return open_draft(session, me, draft_id, settings)


_REFUSED: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such draft"},
    409: {"description": "Another reviewer holds it, or its state does not allow this"},
}


@router.post("/drafts/{draft_id}/claim", responses=_REFUSED)
def claim_draft(
    draft_id: DraftId, me: ApiWriter, session: SessionDep, settings: SettingsDep
) -> ActionOut:
    outcome = claim(session, me.actor, draft_id, ttl_s=settings.claim_ttl_s)
    session.commit()
    raise_for(outcome)
    return ActionOut(draft_id=draft_id, outcome=outcome)


@router.post("/drafts/{draft_id}/edit", responses=_REFUSED)
def edit_draft(
    draft_id: DraftId, body: ReportIn, me: ApiWriter, session: SessionDep, settings: SettingsDep
) -> ActionOut:
    outcome = save_edit(
        session, me.actor, draft_id, body.findings, body.impression, ttl_s=settings.claim_ttl_s
    )
    session.commit()
    raise_for(outcome)
    return ActionOut(draft_id=draft_id, outcome=outcome)


@router.post("/drafts/{draft_id}/approve", responses=_REFUSED)
def approve_draft(
    draft_id: DraftId, body: ReportIn, me: ApiWriter, session: SessionDep
) -> ActionOut:
    outcome = approve(session, me.actor, draft_id, body.findings, body.impression)
    session.commit()
    raise_for(outcome)
    return ActionOut(draft_id=draft_id, outcome=outcome)


@router.post("/drafts/{draft_id}/reject", responses=_REFUSED)
def reject_draft(
    draft_id: DraftId, body: RejectIn, me: ApiWriter, session: SessionDep
) -> ActionOut:
    outcome = reject(session, me.actor, draft_id, body.reason)
    session.commit()
    raise_for(outcome)
    return ActionOut(draft_id=draft_id, outcome=outcome)


@router.post("/drafts/{draft_id}/release", responses=_REFUSED)
def release_draft(draft_id: DraftId, me: ApiWriter, session: SessionDep) -> ActionOut:
    outcome = release(session, me.actor, draft_id)
    session.commit()
    raise_for(outcome)
    return ActionOut(draft_id=draft_id, outcome=outcome)
