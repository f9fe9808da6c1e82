"""How queue outcomes become HTTP answers."""

from __future__ import annotations

from fastapi import HTTPException

from db.audit import Outcome

_STATUS = {
    Outcome.NOT_FOUND: (404, "no such draft"),
    Outcome.NOT_YOURS: (409, "another reviewer holds this draft"),
    Outcome.WRONG_STATE: (409, "the draft is not in a state that allows this"),
    Outcome.INVALID: (422, "the request is incomplete or too long"),
    Outcome.DENIED: (403, "not allowed"),
}


def raise_for(outcome: Outcome) -> None:
    """Raise the HTTP error for a refused action; return for success."""
    if outcome in (Outcome.OK, Outcome.EMPTY):
        return
    status, message = _STATUS[outcome]
    raise HTTPException(status, message)
