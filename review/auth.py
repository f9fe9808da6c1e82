"""Sign-in, sign-out and the health check: the routes open to everyone."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from db.audit import Action, Actor, Outcome, record
from db.engine import transaction
from db.reviewers import authenticate
from review.deps import CSRF_FIELD, DatabaseDep, check_csrf, csrf_token
from review.schemas import Health
from review.templating import render

router = APIRouter()


def _safe_next(target: str | None) -> str:
    # Only same-site paths, so the sign-in page cannot bounce users elsewhere.
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/health", tags=["health"], responses={503: {"model": Health}})
def health(database: DatabaseDep) -> JSONResponse:
    try:
        with database.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return JSONResponse({"status": "database unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/signin", response_class=HTMLResponse, include_in_schema=False)
def signin_page(request: Request, next: str | None = None) -> Response:
    return render(request, "signin.html", {"csrf": csrf_token(request), "next": _safe_next(next)})


@router.post("/signin", include_in_schema=False)
def signin(
    request: Request,
    database: DatabaseDep,
    name: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    csrf_token_: Annotated[str, Form(alias=CSRF_FIELD)] = "",
    next: Annotated[str, Form(max_length=512)] = "/",
) -> Response:
    check_csrf(request, csrf_token_)
    address = request.client.host if request.client else None
    with transaction(database.sessions) as session:
        reviewer = authenticate(session, name, password)
        if reviewer is None:
            record(session, Actor(None, name, address), Action.SIGN_IN, Outcome.DENIED)
        else:
            record(session, Actor(reviewer.id, reviewer.name, address), Action.SIGN_IN, Outcome.OK)
    if reviewer is None:
        context = {"csrf": csrf_token(request), "next": _safe_next(next), "error": True}
        return render(request, "signin.html", context, status_code=401)
    # A fresh session on sign-in: nothing from before survives (fixation).
    request.session.clear()
    request.session["reviewer_id"] = reviewer.id
    csrf_token(request)
    return RedirectResponse(_safe_next(next), status_code=303)


@router.post("/signout", include_in_schema=False)
def signout(
    request: Request,
    database: DatabaseDep,
    csrf_token_: Annotated[str, Form(alias=CSRF_FIELD)] = "",
) -> Response:
    check_csrf(request, csrf_token_)
    reviewer_id = request.session.get("reviewer_id")
    if isinstance(reviewer_id, int):
        address = request.client.host if request.client else None
        with transaction(database.sessions) as session:
            record(
                session, Actor(reviewer_id, str(reviewer_id), address), Action.SIGN_OUT, Outcome.OK
            )
    request.session.clear()
    return RedirectResponse("/signin", status_code=303)
