"""Reviewer accounts: argon2 password hashes, never the passwords."""

from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from db.tables import Reviewer
from prelim.errors import PrelimError

MIN_PASSWORD_LENGTH = 8


class ReviewerError(PrelimError):
    """The reviewer account cannot be created."""


class DuplicateReviewer(ReviewerError):
    """A reviewer with this name already exists."""


class WeakPassword(ReviewerError):
    """The password is too weak."""


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Verified against when the name is unknown, so both paths cost the same.
    return _hasher().hash("not-a-real-password")


def _check_password(name: str, password: str) -> None:
    if not password or not password.strip():
        raise WeakPassword("the password is empty")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPassword(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if password.casefold() == name.casefold() or len(set(password)) < 4:
        raise WeakPassword("the password is too easy to guess")


def add_reviewer(
    session: Session, name: str, password: str, *, display_name: str | None = None
) -> Reviewer:
    """Create a reviewer; raises DuplicateReviewer or WeakPassword."""
    name = name.strip()
    if not name or len(name) > 64 or not name.isprintable():
        raise ReviewerError("a reviewer name is 1-64 printable characters")
    _check_password(name, password)
    if session.scalar(select(Reviewer.id).where(Reviewer.name == name)) is not None:
        raise DuplicateReviewer(f"a reviewer named {name!r} already exists")
    reviewer = Reviewer(
        name=name,
        display_name=(display_name or name)[:128],
        password_hash=_hasher().hash(password),
        active=True,
    )
    session.add(reviewer)
    session.flush()
    return reviewer


def authenticate(session: Session, name: str, password: str) -> Reviewer | None:
    """The active reviewer with these credentials, or None."""
    reviewer = session.scalar(select(Reviewer).where(Reviewer.name == name.strip()))
    stored = reviewer.password_hash if reviewer is not None else _dummy_hash()
    try:
        _hasher().verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if reviewer is None or not reviewer.active:
        return None
    if _hasher().check_needs_rehash(stored):
        reviewer.password_hash = _hasher().hash(password)
    return reviewer


def get_reviewer(session: Session, reviewer_id: int) -> Reviewer | None:
    reviewer = session.get(Reviewer, reviewer_id)
    return reviewer if reviewer is not None and reviewer.active else None
