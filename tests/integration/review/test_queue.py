"""The review queue on real SQLite and PostgreSQL: claims, leases, supersede, constraint."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from db.audit import Actor, Outcome
from db.engine import transaction
from db.queue import claim, claim_next, enqueue_draft, record_failure, release
from db.tables import Draft, DraftState, Study
from prelim.database import Database
from tests.integration.review.factories import add_actor, add_draft, add_study, bulk_drafts

TTL = 60.0


def _claim_all(
    database: Database, actor: Actor, got: list[int], errors: list[BaseException]
) -> None:
    try:
        while True:
            with transaction(database.sessions) as session:
                draft_id = claim_next(session, actor, ttl_s=TTL)
            if draft_id is None:
                return
            got.append(draft_id)
    except BaseException as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


def test_sixteen_reviewers_claim_each_draft_once(database: Database) -> None:
    with transaction(database.sessions) as session:
        bulk_drafts(session, 1000, priorities=3)
        actors = [add_actor(session, f"reviewer{i}") for i in range(16)]
    results: list[list[int]] = [[] for _ in actors]
    errors: list[BaseException] = []
    threads = [
        threading.Thread(target=_claim_all, args=(database, a, r, errors))
        for a, r in zip(actors, results, strict=True)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    claimed = [d for r in results for d in r]
    assert len(claimed) == 1000
    assert len(set(claimed)) == 1000  # no draft twice
    with database.sessions() as session:
        states = Counter(session.scalars(select(Draft.state)))
        owners = session.execute(select(Draft.id, Draft.claimed_by)).all()
    assert states == {DraftState.CLAIMED: 1000}  # none left behind
    by_id = {a.reviewer_id: set(r) for a, r in zip(actors, results, strict=True)}
    assert all(draft in by_id[owner] for draft, owner in owners)


def test_priority_first_then_oldest(database: Database) -> None:
    with transaction(database.sessions) as session:
        old_routine = add_draft(session, priority=0)
        stat = add_draft(session, priority=2)
        new_routine = add_draft(session, priority=0)
        urgent = add_draft(session, priority=1)
        actor = add_actor(session)
    order = []
    for _ in range(5):
        with transaction(database.sessions) as session:
            order.append(claim_next(session, actor, ttl_s=TTL))
    assert order == [stat, urgent, old_routine, new_routine, None]


def test_expired_lease_is_claimable_again(database: Database) -> None:
    with transaction(database.sessions) as session:
        draft_id = add_draft(session)
        walker, other = add_actor(session), add_actor(session)
    with transaction(database.sessions) as session:
        assert claim_next(session, walker, ttl_s=TTL) == draft_id
    with transaction(database.sessions) as session:
        assert claim_next(session, other, ttl_s=TTL) is None  # lease still live
        assert claim(session, other, draft_id, ttl_s=TTL) is Outcome.NOT_YOURS
    with transaction(database.sessions) as session:
        past = datetime.now(UTC) - timedelta(seconds=1)
        session.execute(update(Draft).values(claim_expires_at=past))
    with transaction(database.sessions) as session:
        assert claim_next(session, other, ttl_s=TTL) == draft_id
    with transaction(database.sessions) as session:
        assert release(session, walker, draft_id) is Outcome.NOT_YOURS
        assert session.get(Draft, draft_id).claimed_by == other.reviewer_id  # type: ignore[union-attr]


def test_release_returns_draft_to_queue(database: Database) -> None:
    with transaction(database.sessions) as session:
        draft_id = add_draft(session)
        actor = add_actor(session)
        assert claim(session, actor, draft_id, ttl_s=TTL) is Outcome.OK
    with transaction(database.sessions) as session:
        assert release(session, actor, draft_id) is Outcome.OK
        assert release(session, actor, draft_id) is Outcome.WRONG_STATE
        assert release(session, actor, 999_999) is Outcome.NOT_FOUND
    with database.sessions() as session:
        draft = session.get(Draft, draft_id)
        assert draft is not None and draft.state is DraftState.QUEUED and draft.claimed_by is None


def test_late_images_supersede_the_draft(database: Database) -> None:
    with transaction(database.sessions) as session:
        key = add_study(session, priority=1, modality="DX")
        first = add_draft(session, study_key=key)
        actor = add_actor(session)
        assert claim(session, actor, first, ttl_s=TTL) is Outcome.OK
    with transaction(database.sessions) as session:
        second = add_draft(session, study_key=key, generation=2)
    with database.sessions() as session:
        rows = {d.id: d for d in session.scalars(select(Draft))}
    assert rows[first].state is DraftState.SUPERSEDED
    assert rows[second].state is DraftState.QUEUED
    assert (rows[second].priority, rows[second].modality) == (1, "DX")
    with transaction(database.sessions) as session:
        failed = record_failure(session, study_key=key, generation=3, reason="model crashed")
        skipped = record_failure(
            session, study_key=key, generation=4, reason="burned-in text", skipped=True
        )
    with database.sessions() as session:
        states = dict(session.execute(select(Draft.id, Draft.state)).tuples().all())
        reason = session.get(Draft, skipped).state_reason  # type: ignore[union-attr]
    assert states == {
        first: DraftState.SUPERSEDED,
        second: DraftState.SUPERSEDED,
        failed: DraftState.SUPERSEDED,
        skipped: DraftState.SKIPPED,
    }
    assert reason == "burned-in text"


def test_one_active_draft_per_study_is_a_constraint(database: Database) -> None:
    with transaction(database.sessions) as session:
        key = add_study(session)
        add_draft(session, study_key=key)
        study_id = session.scalar(select(Study.id).where(Study.study_key == key))
    with pytest.raises(IntegrityError), transaction(database.sessions) as session:
        now = datetime.now(UTC)
        session.execute(
            insert(Draft).values(
                study_id=study_id,
                generation=2,
                state=DraftState.QUEUED,
                flags=[],
                provenance={},
                images=[],
                created_at=now,
                updated_at=now,
            )
        )


def test_concurrent_enqueues_leave_one_active_draft(database: Database) -> None:
    with transaction(database.sessions) as session:
        key = add_study(session)
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def put(generation: int) -> None:
        try:
            start.wait(10)
            with transaction(database.sessions) as session:
                add_draft(session, study_key=key, generation=generation)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(g,)) for g in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    with database.sessions() as session:
        states = Counter(session.scalars(select(Draft.state)))
        total = session.scalar(select(func.count(Draft.id)))
    assert total == 8
    assert states == {DraftState.QUEUED: 1, DraftState.SUPERSEDED: 7}


def test_enqueue_unknown_study_raises(database: Database) -> None:
    from db.pipeline import StudyNotFound

    with pytest.raises(StudyNotFound), transaction(database.sessions) as session:
        enqueue_draft(
            session,
            study_key="nope",
            generation=1,
            findings="",
            impression="",
            raw_text="",
            flags=[],
            provenance={},
            model_id="m",
            prompt_version="p",
            images=[],
        )
