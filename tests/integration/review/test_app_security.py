"""Security of the review app: signed-out access, claims, CSRF, injection, images."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import inspect, select, update

from db.engine import transaction
from db.tables import Draft, Review
from prelim.database import Database
from prelim.errors import ConfigurationError
from prelim.settings import Settings
from review.app import create_app
from tests.integration.review.conftest import page_csrf, sign_in
from tests.integration.review.factories import add_draft

OPEN = {"/signin", "/health"}


def _routes() -> list[tuple[str, str]]:
    from review import api, auth, pages

    found = []
    for route in [*api.router.routes, *auth.router.routes, *pages.router.routes]:
        if isinstance(route, APIRoute) and route.path not in OPEN:
            path = re.sub(r"\{[^}]+\}", "1", route.path)
            found += [(m, path) for m in sorted(route.methods)]
    return found


def test_every_route_but_signin_and_health_needs_a_session(app: FastAPI) -> None:
    client = TestClient(app, follow_redirects=False)
    routes = _routes()
    assert len(routes) >= 18
    for method, path in routes:
        r = client.request(method, path)
        if path.startswith("/api/"):
            assert r.status_code == 401, (method, path)
        elif method == "GET":
            assert r.status_code == 303 and r.headers["location"].startswith("/signin"), path
        else:
            assert r.status_code in (303, 403, 422), (method, path)
            assert "Doe" not in r.text
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/signin").status_code == 200


def test_wrong_password_is_refused(app: FastAPI) -> None:
    client = TestClient(app)
    token = page_csrf(client)
    r = client.post("/signin", data={"name": "alice", "password": "nope-nope", "csrf_token": token})
    assert r.status_code == 401
    assert client.get("/api/me").status_code == 401


def test_another_reviewers_claim_is_off_limits(app: FastAPI, sqlite_db: Database) -> None:
    with transaction(sqlite_db.sessions) as session:
        draft_id = add_draft(session)
    alice, bob = sign_in(app, "alice"), sign_in(app, "bob")
    assert alice.post("/api/claim-next").json() == {"draft_id": draft_id}
    body = {"findings": "bob was here", "impression": "x"}
    assert bob.post(f"/api/drafts/{draft_id}/claim").status_code == 409
    assert bob.post(f"/api/drafts/{draft_id}/edit", json=body).status_code == 409
    assert bob.post(f"/api/drafts/{draft_id}/approve", json=body).status_code == 409
    assert bob.post(f"/api/drafts/{draft_id}/reject", json={"reason": "x"}).status_code == 409
    assert bob.post(f"/api/drafts/{draft_id}/release").status_code == 409
    page = bob.get(f"/drafts/{draft_id}").text
    assert "claimed by Dr Alice A" in page and 'name="findings"' not in page
    r = bob.post(
        f"/drafts/{draft_id}/approve", data={"csrf_token": bob.headers["X-CSRF-Token"], **body}
    )
    assert "Another reviewer holds this draft." in r.text
    with sqlite_db.sessions() as session:
        draft = session.get(Draft, draft_id)
        assert draft is not None and draft.edited_findings is None
        assert draft.state == "claimed" and session.scalar(select(Review.id)) is None


def test_forged_csrf_is_refused(app: FastAPI, sqlite_db: Database) -> None:
    with transaction(sqlite_db.sessions) as session:
        draft_id = add_draft(session)
    alice, bob = sign_in(app, "alice"), sign_in(app, "bob")
    bobs_token = bob.headers["X-CSRF-Token"]
    for token in ("", "forged", bobs_token):
        r = alice.post("/claim-next", data={"csrf_token": token}, follow_redirects=False)
        assert r.status_code == 403
        r = alice.post("/api/claim-next", headers={"X-CSRF-Token": token})
        assert r.status_code == 403
    r = alice.post("/api/claim-next", headers={"X-CSRF-Token": ""})
    assert r.status_code == 403
    with sqlite_db.sessions() as session:
        assert session.get(Draft, draft_id).state == "queued"  # type: ignore[union-attr]


def test_injection_in_the_editor_is_stored_and_shown_escaped(
    app: FastAPI, sqlite_db: Database
) -> None:
    with transaction(sqlite_db.sessions) as session:
        draft_id = add_draft(session)
    alice = sign_in(app, "alice")
    evil = "<script>alert('x')</script>'); DROP TABLE drafts; --"
    assert alice.post(f"/api/drafts/{draft_id}/claim").status_code == 200
    token = alice.headers["X-CSRF-Token"]
    r = alice.post(
        f"/drafts/{draft_id}/approve",
        data={"csrf_token": token, "findings": evil, "impression": "<b>bold</b>"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    page = alice.get(f"/drafts/{draft_id}").text
    assert "<script>alert" not in page and "<b>bold</b>" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page
    with sqlite_db.sessions() as session:
        review = session.scalar(select(Review))
        assert review is not None and review.findings == evil
        assert review.outcome == "edited" and review.sections_changed == ["findings", "impression"]
    assert inspect(sqlite_db.engine).has_table("drafts")


def test_images_are_served_to_signed_in_reviewers_only(
    app: FastAPI, sqlite_db: Database, settings: Settings
) -> None:
    images = settings.resolved_images_dir
    (images / "k1").mkdir(parents=True)
    (images / "k1" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    secret = images.parent / "secret.txt"
    secret.write_text("not for you")
    with transaction(sqlite_db.sessions) as session:
        draft_id = add_draft(session, images=["k1/0.png", "../secret.txt", "/etc/hostname"])
    assert (
        TestClient(app, follow_redirects=False).get(f"/drafts/{draft_id}/images/0").status_code
        == 303
    )
    alice = sign_in(app, "alice")
    r = alice.get(f"/drafts/{draft_id}/images/0")
    assert r.status_code == 200 and r.content.startswith(b"\x89PNG")
    for index in (1, 2, 3):
        assert alice.get(f"/drafts/{draft_id}/images/{index}").status_code == 404
    assert alice.get(f"/drafts/{draft_id}/images/..%2F..%2Fsecret.txt").status_code in (404, 422)


def test_pages_carry_security_headers(app: FastAPI) -> None:
    r = TestClient(app).get("/signin")
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-frame-options"] == "DENY"


def test_refuses_a_public_address_without_a_secret(settings: Settings, sqlite_db: Database) -> None:
    with pytest.raises(ConfigurationError, match="PRELIM_SECRET_KEY"):
        create_app(settings.model_copy(update={"review_host": "0.0.0.0"}), sqlite_db)
    with pytest.raises(ConfigurationError, match="at least"):
        create_app(
            settings.model_copy(
                update={"review_host": "0.0.0.0", "secret_key": SecretStr("short")}
            ),
            sqlite_db,
        )
    public = settings.model_copy(
        update={"review_host": "0.0.0.0", "secret_key": SecretStr("s" * 40)}
    )
    assert create_app(public, sqlite_db).title == "prelim review"
    assert create_app(settings.model_copy(update={"review_host": "::1"}), sqlite_db)


def test_health_answers_503_when_the_database_is_down(settings: Settings) -> None:
    from db.engine import make_engine, make_sessionmaker

    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", pool_pre_ping=False)
    down = Database(engine, make_sessionmaker(engine))
    r = TestClient(create_app(settings, down)).get("/health")
    assert r.status_code == 503 and r.json()["status"] != "ok"
    engine.dispose()


def test_superseded_draft_cannot_be_signed(app: FastAPI, sqlite_db: Database) -> None:
    with transaction(sqlite_db.sessions) as session:
        draft_id = add_draft(session)
    alice = sign_in(app, "alice")
    assert alice.post(f"/api/drafts/{draft_id}/claim").status_code == 200
    with transaction(sqlite_db.sessions) as session:
        session.execute(update(Draft).values(state="superseded"))
    r = alice.post(f"/api/drafts/{draft_id}/approve", json={"findings": "a", "impression": "b"})
    assert r.status_code == 409


def test_signed_out_session_cannot_reuse_cookie(app: FastAPI, tmp_path: Path) -> None:
    alice = sign_in(app, "alice")
    cookie = alice.cookies.get("prelim_session")
    r = alice.post("/signout", data={"csrf_token": alice.headers["X-CSRF-Token"]})
    assert r.url.path == "/signin"
    assert alice.get("/api/me").status_code == 401
    assert cookie  # the old cookie still verifies, but it named no one after sign-out
