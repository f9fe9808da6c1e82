"""Signing, rejecting and the audit log on both backends; accounts; `prelim queue`."""

from __future__ import annotations

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.exc import DBAPIError

from db.audit import Action, Actor, Outcome, events
from db.engine import transaction
from db.listing import quality_by_model
from db.queue import claim, claim_next, release
from db.reviewers import DuplicateReviewer, WeakPassword, add_reviewer, authenticate
from db.reviews import approve, reject, save_edit
from db.tables import AuditEvent, Draft, DraftState, Review
from prelim.database import Database
from prelim.queue_summary import queue_report
from tests.integration.review.factories import add_actor, add_draft

TTL = 60.0


def _audit(database: Database) -> list[tuple[str, str, str, int | None, str | None]]:
    with database.sessions() as session:
        rows = session.scalars(select(AuditEvent).order_by(AuditEvent.id))
        return [(r.actor, r.action, r.outcome, r.draft_id, r.address) for r in rows]


def test_every_action_writes_exactly_one_audit_row(database: Database) -> None:
    with transaction(database.sessions) as session:
        first, second = add_draft(session), add_draft(session)
        alice, bob = add_actor(session, "alice"), add_actor(session, "bob")
    steps = [
        lambda s: claim_next(s, alice, ttl_s=TTL),
        lambda s: claim(s, bob, first, ttl_s=TTL),
        lambda s: save_edit(s, alice, first, "Lungs clear.", "Normal.", ttl_s=TTL),
        lambda s: approve(s, alice, first, "Lungs clear.", "Normal."),
        lambda s: claim(s, bob, second, ttl_s=TTL),
        lambda s: release(s, bob, second),
        lambda s: claim(s, bob, second, ttl_s=TTL),
        lambda s: reject(s, bob, second, ""),
        lambda s: reject(s, bob, second, "wrong side"),
        lambda s: release(s, bob, second),
        lambda s: claim_next(s, bob, ttl_s=TTL),
    ]
    for step in steps:
        with transaction(database.sessions) as session:
            step(session)
    a, b = "alice", "bob"
    ip = "127.0.0.1"
    assert _audit(database) == [
        (a, "claim", "ok", first, ip),
        (b, "claim", "not-yours", first, ip),
        (a, "edit", "ok", first, ip),
        (a, "sign", "ok", first, ip),
        (b, "claim", "ok", second, ip),
        (b, "release", "ok", second, ip),
        (b, "claim", "ok", second, ip),
        (b, "reject", "invalid", second, ip),
        (b, "reject", "ok", second, ip),
        (b, "release", "wrong-state", second, ip),
        (b, "claim", "empty", None, ip),
    ]
    with database.sessions() as session:
        assert [e.action for e in events(session, draft_id=first)] == [
            "sign",
            "edit",
            "claim",
            "claim",
        ]
        signed = session.scalar(select(Review).where(Review.draft_id == first))
        assert signed is not None and signed.outcome == "edited"
        assert signed.sections_changed == ["findings", "impression"]
        assert signed.edit_distance > 0
        states = dict(session.execute(select(Draft.id, Draft.state)).tuples().all())
        assert states == {first: DraftState.SIGNED, second: DraftState.REJECTED}


def test_audit_rows_cannot_be_changed_or_deleted(database: Database) -> None:
    with transaction(database.sessions) as session:
        actor = add_actor(session)
        claim_next(session, actor, ttl_s=TTL)
    for statement in (update(AuditEvent).values(outcome="forged"), delete(AuditEvent)):
        with pytest.raises(DBAPIError), transaction(database.sessions) as session:
            session.execute(statement)
    assert _audit(database)[0][1:3] == ("claim", "empty")


def test_quality_signal_per_model_and_prompt(database: Database) -> None:
    with transaction(database.sessions) as session:
        ids = [add_draft(session, model_id="m1", prompt_version=f"v{i % 2}") for i in range(4)]
        actor = add_actor(session)
    texts = {
        ids[0]: (
            "The lungs are clear. No pleural effusion.",
            "No acute cardiopulmonary abnormality.",
        ),
        ids[1]: ("The lungs are clear. Small left effusion.", "Small left pleural effusion."),
        ids[2]: (
            "The lungs are clear. No pleural effusion.",
            "No acute cardiopulmonary abnormality.",
        ),
    }
    with transaction(database.sessions) as session:
        for draft_id in ids:
            assert claim(session, actor, draft_id, ttl_s=TTL) is Outcome.OK
        for draft_id, (findings, impression) in texts.items():
            assert approve(session, actor, draft_id, findings, impression) is Outcome.OK
        assert reject(session, actor, ids[3], "hallucinated finding") is Outcome.OK
    with database.sessions() as session:
        rows = {(q.model_id, q.prompt_version): q for q in quality_by_model(session)}
        report = queue_report(session)
    v0, v1 = rows[("m1", "v0")], rows[("m1", "v1")]
    assert (v0.signed, v0.as_is, v0.edited, v0.rejected, v0.mean_edit_distance) == (2, 2, 0, 0, 0.0)
    assert (v1.signed, v1.as_is, v1.edited, v1.rejected) == (1, 0, 1, 1)
    assert v1.mean_edit_distance == 6.0  # 2 words in findings, 4 in impression
    assert "Quality per model and prompt version" in report
    assert "signed" in report and "Doe" not in report


def test_reviewer_accounts(database: Database) -> None:
    with transaction(database.sessions) as session:
        reviewer = add_reviewer(session, "carol", "a long passphrase", display_name="Dr C")
        assert reviewer.password_hash.startswith("$argon2")
        assert "a long passphrase" not in reviewer.password_hash
    with transaction(database.sessions) as session:
        with pytest.raises(DuplicateReviewer, match="already exists"):
            add_reviewer(session, "carol", "another long one")
        for weak in ("", "   ", "short", "carolcarol".upper(), "aaaaaaaaaaa"):
            with pytest.raises(WeakPassword):
                add_reviewer(session, "dave", weak if weak != "CAROLCAROL" else "dave")
        assert authenticate(session, "carol", "a long passphrase") is not None
        assert authenticate(session, "carol", "wrong passphrase") is None
        assert authenticate(session, "nobody", "a long passphrase") is None


def test_viewing_renews_the_lease_only_for_the_claimant(database: Database) -> None:
    from db.queue import renew

    with transaction(database.sessions) as session:
        draft_id = add_draft(session)
        alice, bob = add_actor(session), add_actor(session)
        claim(session, alice, draft_id, ttl_s=1.0)
    with transaction(database.sessions) as session:
        assert renew(session, bob, draft_id, ttl_s=TTL) is False
        assert renew(session, alice, draft_id, ttl_s=TTL) is True
        expires = session.scalar(select(Draft.claim_expires_at))
        assert expires is not None
    with transaction(database.sessions) as session:
        assert claim_next(session, bob, ttl_s=TTL) is None


def test_actor_address_is_recorded(database: Database) -> None:
    with transaction(database.sessions) as session:
        base = add_actor(session)
        claim_next(session, Actor(base.reviewer_id, base.name, "10.1.2.3"), ttl_s=TTL)
    assert _audit(database)[-1][4] == "10.1.2.3"
    assert Action.SIGN == "sign"
