"""The server-rendered pages: the queue, claim-next and the draft page with its forms."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response

from db.audit import Outcome
from db.listing import QueueFilter
from db.queue import claim, claim_next, release
from db.reviews import approve, reject, save_edit
from db.tables import ACTIVE_DRAFT_STATES, DraftState
from review.actions import image_file, open_draft, queue_page
from review.deps import CSRF_FIELD, PageReviewer, SessionDep, SettingsDep, check_csrf
from review.schemas import CONTROL_CHARACTERS
from review.templating import render

router = APIRouter(include_in_schema=False)

PAGE_SIZE = 50
DraftId = Annotated[int, Path(ge=1, le=2**31 - 1)]
Csrf = Annotated[str, Form(alias=CSRF_FIELD)]
Text = Annotated[str, Form(max_length=40_000)]

_MESSAGES = {
    Outcome.NOT_FOUND: "That draft does not exist.",
    Outcome.NOT_YOURS: "Another reviewer holds this draft.",
    Outcome.WRONG_STATE: "The draft changed meanwhile (signed, released or superseded).",
    Outcome.INVALID: "Please complete the form (a rejection needs a reason).",
}


def _flash(request: Request, outcome: Outcome) -> None:
    if outcome in _MESSAGES:
        request.session["flash"] = _MESSAGES[outcome]


def _clean(text: str) -> str:
    # A browser form may carry control characters PostgreSQL refuses (NUL).
    return CONTROL_CHARACTERS.sub("", text)


def _to_draft(draft_id: int) -> RedirectResponse:
    return RedirectResponse(f"/drafts/{draft_id}", status_code=303)


@router.get("/", response_class=HTMLResponse)
def queue(
    request: Request,
    me: PageReviewer,
    session: SessionDep,
    state: Annotated[str, Query(max_length=16)] = "active",
    modality: Annotated[str, Query(max_length=16, pattern=r"^[A-Za-z0-9]*$")] = "",
    priority: Annotated[int | None, Query(ge=-10, le=10)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    if state == "active":
        states: tuple[DraftState, ...] = ACTIVE_DRAFT_STATES
    elif state == "all":
        states = ()
    elif state in DraftState._value2member_map_:
        states = (DraftState(state),)
    else:
        raise HTTPException(422, "unknown state")
    filt = QueueFilter(states, modality or None, priority)
    data = queue_page(session, filt, offset=(page - 1) * PAGE_SIZE, limit=PAGE_SIZE)
    context = {
        "me": me,
        "data": data,
        "state": state,
        "modality": modality,
        "priority": priority,
        "page": page,
        "pages": max(1, -(-data.total // PAGE_SIZE)),
        "active_count": sum(data.counts[s] for s in ACTIVE_DRAFT_STATES),
        "states": list(DraftState),
        "flash": request.session.pop("flash", None),
    }
    return render(request, "queue.html", context)


@router.post("/claim-next")
def claim_next_page(
    request: Request, me: PageReviewer, session: SessionDep, settings: SettingsDep, csrf: Csrf = ""
) -> Response:
    check_csrf(request, csrf)
    draft_id = claim_next(session, me.actor, ttl_s=settings.claim_ttl_s)
    if draft_id is None:
        request.session["flash"] = "Nothing is waiting: the queue is empty."
        return RedirectResponse("/", status_code=303)
    return _to_draft(draft_id)


@router.get("/drafts/{draft_id}", response_class=HTMLResponse)
def draft_page(
    request: Request,
    draft_id: DraftId,
    me: PageReviewer,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    draft = open_draft(session, me, draft_id, settings)
    context = {"me": me, "d": draft, "flash": request.session.pop("flash", None)}
    response = render(request, "draft.html", context)
    return response


@router.get("/drafts/{draft_id}/images/{index}")
def draft_image(
    draft_id: DraftId,
    index: Annotated[int, Path(ge=0, le=10_000)],
    me: PageReviewer,
    session: SessionDep,
    settings: SettingsDep,
) -> Response:
    path = image_file(session, settings, draft_id, index)
    if path is None:
        raise HTTPException(404, "no such image")
    return FileResponse(path, headers={"Cache-Control": "private, no-store"})


@router.post("/drafts/{draft_id}/claim")
def claim_page(
    request: Request,
    draft_id: DraftId,
    me: PageReviewer,
    session: SessionDep,
    settings: SettingsDep,
    csrf: Csrf = "",
) -> Response:
    check_csrf(request, csrf)
    _flash(request, claim(session, me.actor, draft_id, ttl_s=settings.claim_ttl_s))
    return _to_draft(draft_id)


@router.post("/drafts/{draft_id}/save")
def save_page(
    request: Request,
    draft_id: DraftId,
    me: PageReviewer,
    session: SessionDep,
    settings: SettingsDep,
    csrf: Csrf = "",
    findings: Text = "",
    impression: Text = "",
) -> Response:
    check_csrf(request, csrf)
    outcome = save_edit(
        session,
        me.actor,
        draft_id,
        _clean(findings),
        _clean(impression),
        ttl_s=settings.claim_ttl_s,
    )
    if outcome is Outcome.OK:
        request.session["flash"] = "Saved."
    _flash(request, outcome)
    return _to_draft(draft_id)


@router.post("/drafts/{draft_id}/approve")
def approve_page(
    request: Request,
    draft_id: DraftId,
    me: PageReviewer,
    session: SessionDep,
    csrf: Csrf = "",
    findings: Text = "",
    impression: Text = "",
) -> Response:
    check_csrf(request, csrf)
    outcome = approve(session, me.actor, draft_id, _clean(findings), _clean(impression))
    if outcome is Outcome.OK:
        request.session["flash"] = f"Draft {draft_id} signed."
        return RedirectResponse("/", status_code=303)
    _flash(request, outcome)
    return _to_draft(draft_id)


@router.post("/drafts/{draft_id}/reject")
def reject_page(
    request: Request,
    draft_id: DraftId,
    me: PageReviewer,
    session: SessionDep,
    csrf: Csrf = "",
    reason: Text = "",
) -> Response:
    check_csrf(request, csrf)
    outcome = reject(session, me.actor, draft_id, _clean(reason))
    if outcome is Outcome.OK:
        request.session["flash"] = f"Draft {draft_id} rejected."
        return RedirectResponse("/", status_code=303)
    _flash(request, outcome)
    return _to_draft(draft_id)


@router.post("/drafts/{draft_id}/release")
def release_page(
    request: Request, draft_id: DraftId, me: PageReviewer, session: SessionDep, csrf: Csrf = ""
) -> Response:
    check_csrf(request, csrf)
    outcome = release(session, me.actor, draft_id)
    if outcome is Outcome.OK:
        request.session["flash"] = f"Draft {draft_id} returned to the queue."
        return RedirectResponse("/", status_code=303)
    _flash(request, outcome)
    return _to_draft(draft_id)
