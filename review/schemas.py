"""JSON shapes of the API, and the conversions the pages share with it."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field

from db.listing import DraftDetail, QueueRow, as_utc
from db.reviews import MAX_TEXT
from db.tables import DraftState

# PostgreSQL refuses NUL in text, and no report needs other control characters.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _printable(value: str) -> str:
    if CONTROL_CHARACTERS.search(value):
        raise ValueError("control characters are not allowed")
    return value


ReportText = Annotated[str, Field(max_length=MAX_TEXT), AfterValidator(_printable)]


def priority_label(priority: int) -> str:
    if priority >= 2:
        return "STAT"
    if priority == 1:
        return "Urgent"
    return "Routine" if priority == 0 else "Low"


class QueueItem(BaseModel):
    id: int
    state: DraftState
    state_reason: str | None
    priority: int
    priority_label: str
    modality: str
    created_at: datetime
    study_description: str | None
    accession_number: str | None
    flags: list[str]
    model_id: str
    prompt_version: str
    claimed_by: str | None
    claim_expires_at: datetime | None

    @classmethod
    def of(cls, row: QueueRow) -> QueueItem:
        return cls(priority_label=priority_label(row.priority), **row.__dict__)


class QueuePage(BaseModel):
    items: list[QueueItem]
    total: int
    offset: int
    limit: int
    counts: dict[DraftState, int]


class StudyOut(BaseModel):
    accession_number: str | None
    patient_name: str | None
    patient_id: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    study_date: str | None
    study_description: str | None
    modalities: str


class ReviewOut(BaseModel):
    outcome: str
    reviewer: str | None
    findings: str | None
    impression: str | None
    reason: str | None
    edit_distance: int
    sections_changed: list[str]
    created_at: datetime


class DraftOut(BaseModel):
    id: int
    state: DraftState
    state_reason: str | None
    generation: int
    priority: int
    priority_label: str
    modality: str
    findings: str
    impression: str
    edited_findings: str | None
    edited_impression: str | None
    flags: list[str]
    provenance: dict[str, Any]
    model_id: str
    prompt_version: str
    images: list[str] = Field(description="URLs of the de-identified images the model saw")
    claimed_by: str | None
    claimed_by_me: bool
    claim_expires_at: datetime | None
    created_at: datetime
    study: StudyOut
    review: ReviewOut | None

    @classmethod
    def of(cls, detail: DraftDetail, me_id: int) -> DraftOut:
        d, s, r = detail.draft, detail.study, detail.review
        expires = as_utc(d.claim_expires_at)
        mine = d.state is DraftState.CLAIMED and d.claimed_by == me_id
        return cls(
            id=d.id,
            state=d.state,
            state_reason=d.state_reason,
            generation=d.generation,
            priority=d.priority,
            priority_label=priority_label(d.priority),
            modality=d.modality,
            findings=d.findings,
            impression=d.impression,
            edited_findings=d.edited_findings,
            edited_impression=d.edited_impression,
            flags=list(d.flags or []),
            provenance=dict(d.provenance or {}),
            model_id=d.model_id,
            prompt_version=d.prompt_version,
            images=[f"/drafts/{d.id}/images/{i}" for i in range(len(d.images or []))],
            claimed_by=detail.claimant if d.state is DraftState.CLAIMED else None,
            claimed_by_me=mine,
            claim_expires_at=expires,
            created_at=as_utc(d.created_at) or datetime.now(UTC),
            study=StudyOut(
                accession_number=s.accession_number,
                patient_name=s.patient_name,
                patient_id=s.patient_id,
                patient_birth_date=s.patient_birth_date,
                patient_sex=s.patient_sex,
                study_date=s.study_date,
                study_description=s.study_description,
                modalities=s.modalities,
            ),
            review=None
            if r is None
            else ReviewOut(
                outcome=str(r.outcome),
                reviewer=detail.reviewer,
                findings=r.findings,
                impression=r.impression,
                reason=r.reason,
                edit_distance=r.edit_distance,
                sections_changed=list(r.sections_changed or []),
                created_at=as_utc(r.created_at) or datetime.now(UTC),
            ),
        )


class ReportIn(BaseModel):
    findings: ReportText = ""
    impression: ReportText = ""


class RejectIn(BaseModel):
    reason: ReportText = Field(description="Required; an empty reason is refused (422)")


class ClaimOut(BaseModel):
    draft_id: int | None = Field(description="The claimed draft, or null when none is waiting")


class ActionOut(BaseModel):
    draft_id: int
    outcome: str


class MeOut(BaseModel):
    id: int
    name: str
    display_name: str
    csrf_token: str = Field(description="Send it back in the X-CSRF-Token header of writes")


class Health(BaseModel):
    status: str
