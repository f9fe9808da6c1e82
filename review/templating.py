"""Jinja2 templates (autoescaped) and the filters the pages use."""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from review.schemas import priority_label

TEMPLATES = Path(__file__).with_name("templates")


def _age(value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = (datetime.now(UTC) - value).total_seconds()
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def _until(value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = (value - datetime.now(UTC)).total_seconds()
    return "expired" if seconds <= 0 else f"{int(seconds // 60)} min {int(seconds % 60)} s"


def _dicom_date(value: str | None) -> str:
    if not value or len(value) != 8 or not value.isdigit():
        return value or "—"
    return f"{value[:4]}-{value[4:6]}-{value[6:]}"


def _person(value: str | None) -> str:
    # DICOM PN: family^given^middle^prefix^suffix
    if not value:
        return "—"
    parts = [p for p in value.split("=")[0].split("^")]
    family, given = (parts + ["", ""])[:2]
    return f"{family.upper()}, {given}".strip(", ") if given else family.upper()


@lru_cache(maxsize=1)
def templates() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(TEMPLATES))
    t.env.filters.update(
        age=_age, until=_until, dicom_date=_dicom_date, person=_person, priority=priority_label
    )
    return t


def render(
    request: Request, name: str, context: dict[str, Any], *, status_code: int = 200
) -> Response:
    response = templates().TemplateResponse(request, name, context, status_code=status_code)
    return response
