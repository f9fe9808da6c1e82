"""Rows for review tests: studies with identifiers, drafts in bulk, reviewers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from argon2 import PasswordHasher
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from db.audit import Actor
from db.queue import enqueue_draft
from db.tables import Draft, DraftState, Reviewer, Study, StudyState

PASSWORD = "correct horse battery"


def add_study(session: Session, *, priority: int = 0, modality: str = "CR", **extra: Any) -> str:
    key = uuid.uuid4().hex
    values: dict[str, Any] = {
        "study_key": key,
        "study_instance_uid": f"2.25.{uuid.uuid4().int}",
        "accession_number": "ACC" + key[:6],
        "patient_id": "PID" + key[:6],
        "patient_name": "Doe^Jane",
        "patient_birth_date": "19700101",
        "study_date": "20260102",
        "study_description": "CHEST PA",
        "modalities": modality,
        "priority": priority,
        "state": StudyState.DRAFTED,
    }
    values.update(extra)
    session.add(Study(**values))
    session.flush()
    return key


def add_draft(session: Session, *, priority: int = 0, modality: str = "CR", **extra: Any) -> int:
    key = add_study(session, priority=priority, modality=modality)
    values: dict[str, Any] = {
        "study_key": key,
        "generation": 1,
        "findings": "The lungs are clear. No pleural effusion.",
        "impression": "No acute cardiopulmonary abnormality.",
        "raw_text": "FINDINGS: The lungs are clear. IMPRESSION: No acute abnormality.",
        "flags": [],
        "provenance": {"model_id": "tiny", "prompt_version": "p1"},
        "model_id": "tiny",
        "prompt_version": "p1",
        "images": [],
    }
    values.update(extra)
    return enqueue_draft(session, **values)


def bulk_drafts(session: Session, count: int, *, priorities: int = 1) -> None:
    """``count`` queued drafts, each on its own study, inserted in two statements."""
    tag = uuid.uuid4().hex[:8]
    session.execute(
        insert(Study),
        [
            {
                "study_key": f"{tag}{i:08d}",
                "study_instance_uid": f"2.25.{tag}.{i}",
                "accession_number": f"A{i}",
                "patient_name": f"Patient^{i}",
                "study_description": "CHEST",
                "modalities": "CT" if i % 3 == 0 else "CR",
                "priority": i % priorities,
                "state": StudyState.DRAFTED,
            }
            for i in range(count)
        ],
    )
    ids = dict(
        session.execute(select(Study.study_key, Study.id).where(Study.study_key.startswith(tag)))
        .tuples()
        .all()
    )
    start = datetime.now(UTC) - timedelta(hours=1)
    session.execute(
        insert(Draft),
        [
            {
                "study_id": ids[f"{tag}{i:08d}"],
                "generation": 1,
                "state": DraftState.QUEUED,
                "priority": i % priorities,
                "modality": "CT" if i % 3 == 0 else "CR",
                "findings": f"Finding {i}.",
                "impression": "Normal.",
                "raw_text": "",
                "flags": ["low-confidence"] if i % 7 == 0 else [],
                "provenance": {},
                "model_id": "tiny",
                "prompt_version": "p1",
                "images": [],
                "created_at": start + timedelta(milliseconds=i),
                "updated_at": start,
            }
            for i in range(count)
        ],
    )


@lru_cache(maxsize=1)
def password_hash() -> str:
    # Hashed once per test run: argon2 is slow on purpose.
    return PasswordHasher().hash(PASSWORD)


def quick_reviewer(session: Session, name: str, display_name: str | None = None) -> Reviewer:
    """A reviewer whose password is PASSWORD, without paying for a new hash."""
    reviewer = Reviewer(
        name=name, display_name=display_name or name, password_hash=password_hash(), active=True
    )
    session.add(reviewer)
    session.flush()
    return reviewer


def add_actor(session: Session, name: str | None = None) -> Actor:
    reviewer = quick_reviewer(session, name or f"r{uuid.uuid4().hex[:8]}")
    return Actor(reviewer.id, reviewer.name, "127.0.0.1")
