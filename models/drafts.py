"""What goes into the engine and what comes out of it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

TASKS = ("cxr", "ct", "generic")


@dataclass(frozen=True)
class StudyContext:
    """Non-identifying context from the DICOM headers; never names, IDs or dates."""

    modality: str
    view: str | None = None
    body_part: str | None = None
    age_years: int | None = None
    sex: str | None = None


@dataclass
class DraftRequest:
    """One study to draft: de-identified images plus context, under an opaque key."""

    request_id: str
    task: str
    images: list[Image.Image]
    context: StudyContext


@dataclass
class DraftReport:
    """A draft for a radiologist to review, with the flags and provenance to judge it by."""

    request_id: str
    findings: str
    impression: str
    raw_text: str
    flags: list[str] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)
