"""Request dependencies: the database, the signed-in reviewer, CSRF checks."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy.orm import Session

from db.audit import Actor
from db.engine import transaction
from db.reviewers import get_reviewer
from prelim.database import Database
from prelim.settings import Settings

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"


class SignInRequired(Exception):
    """Raised by page dependencies; the app answers with a redirect to sign-in."""


@dataclass(frozen=True)
class Me:
    """The signed-in reviewer, as a page or API call sees them."""

    id: int
    name: str
    display_name: str
    csrf: str
    address: str | None

    @property
    def actor(self) -> Actor:
        return Actor(self.id, self.name, self.address)


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(database: Annotated[Database, Depends(get_database)]) -> Iterator[Session]:
    """One transaction per request, committed when the route returns."""
    with transaction(database.sessions) as session:
        yield session


DatabaseDep = Annotated[Database, Depends(get_database)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SessionDep = Annotated[Session, Depends(get_session)]


def csrf_token(request: Request) -> str:
    """This browser session's CSRF token, made on first use."""
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def check_csrf(request: Request, supplied: str | None) -> None:
    expected = request.session.get("csrf")
    if (
        not isinstance(expected, str)
        or not supplied
        or not secrets.compare_digest(expected.encode(), supplied.encode())
    ):
        raise HTTPException(403, "missing or wrong CSRF token")


def _me(request: Request, database: Database) -> Me | None:
    reviewer_id = request.session.get("reviewer_id")
    if not isinstance(reviewer_id, int):
        return None
    with database.sessions() as session:
        reviewer = get_reviewer(session, reviewer_id)
    if reviewer is None:
        request.session.clear()
        return None
    address = request.client.host if request.client else None
    return Me(reviewer.id, reviewer.name, reviewer.display_name, csrf_token(request), address)


def page_reviewer(request: Request, database: DatabaseDep) -> Me:
    me = _me(request, database)
    if me is None:
        raise SignInRequired()
    return me


def api_reviewer(request: Request, database: DatabaseDep) -> Me:
    me = _me(request, database)
    if me is None:
        raise HTTPException(401, "sign in first", headers={"WWW-Authenticate": "Session"})
    return me


def api_writer(
    request: Request,
    me: Annotated[Me, Depends(api_reviewer)],
    token: Annotated[str | None, Header(alias=CSRF_HEADER)] = None,
) -> Me:
    """A signed-in reviewer whose request carries the session's CSRF token header."""
    check_csrf(request, token)
    return me


PageReviewer = Annotated[Me, Depends(page_reviewer)]
ApiReviewer = Annotated[Me, Depends(api_reviewer)]
ApiWriter = Annotated[Me, Depends(api_writer)]
