"""Schemathesis against the review app's OpenAPI schema: no 500s, signed in or not."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from db.engine import transaction
from prelim.database import open_database
from prelim.settings import load_settings
from review.app import create_app
from tests.integration.review.factories import PASSWORD, add_draft, bulk_drafts, quick_reviewer

pytestmark = pytest.mark.slow

# Schemathesis collects at import time, so the app is built here, once, on SQLite.
_DIR = Path(tempfile.mkdtemp(prefix="prelim-openapi-"))
os.environ.setdefault("PRELIM_CONFIG", str(_DIR / "absent.toml"))
_SETTINGS = load_settings(data_dir=_DIR / "var")
_DATABASE = open_database(_SETTINGS)
with transaction(_DATABASE.sessions) as _session:
    quick_reviewer(_session, "alice")
    bulk_drafts(_session, 30, priorities=3)
    add_draft(_session, images=["missing.png"])
APP = create_app(_SETTINGS, _DATABASE)


def _signed_in() -> tuple[dict[str, str], dict[str, str]]:
    client = TestClient(APP)
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/signin").text)
    assert token is not None
    client.post(
        "/signin", data={"name": "alice", "password": PASSWORD, "csrf_token": token.group(1)}
    )
    me = client.get("/api/me").json()
    return {"X-CSRF-Token": me["csrf_token"]}, {"prelim_session": client.cookies["prelim_session"]}


HEADERS, COOKIES = _signed_in()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
def test_api_never_answers_500(case: schemathesis.Case) -> None:
    response = case.call(headers=HEADERS, cookies=COOKIES)
    case.validate_response(response, checks=[not_a_server_error])
    anonymous = case.call()
    case.validate_response(anonymous, checks=[not_a_server_error])
    if case.path not in ("/health",):
        assert anonymous.status_code in (400, 401, 403, 405, 422), (
            case.path,
            anonymous.status_code,
        )
