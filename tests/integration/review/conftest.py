"""A review app on a real database, and a signed-in client helper."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from db.engine import transaction
from prelim.database import Database, open_database
from prelim.settings import Settings
from review.app import create_app
from tests.integration.review.factories import PASSWORD, quick_reviewer

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def sqlite_db(settings: Settings) -> Iterator[Database]:
    db = open_database(settings)
    try:
        yield db
    finally:
        db.dispose()


@pytest.fixture
def app(settings: Settings, sqlite_db: Database) -> FastAPI:
    with transaction(sqlite_db.sessions) as session:
        quick_reviewer(session, "alice", "Dr Alice A")
        quick_reviewer(session, "bob", "Dr Bob B")
    return create_app(settings, sqlite_db)


def page_csrf(client: TestClient, path: str = "/signin") -> str:
    match = _CSRF.search(client.get(path).text)
    assert match is not None
    return match.group(1)


def sign_in(app: FastAPI, name: str) -> TestClient:
    client = TestClient(app)
    token = page_csrf(client)
    r = client.post(
        "/signin", data={"name": name, "password": PASSWORD, "csrf_token": token, "next": "/"}
    )
    assert r.status_code == 200 and r.url.path == "/"
    client.headers["X-CSRF-Token"] = client.get("/api/me").json()["csrf_token"]
    return client
