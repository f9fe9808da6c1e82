"""Non-identifying context for the model's prompt: modality, view, body part, age, sex.

Nothing else leaves the dataset: no names, IDs, dates or free text. Ages of 90
and over are reported as 90 (HIPAA Safe Harbor aggregates them), and the birth
date is only used to compute the age, never returned.
"""

from __future__ import annotations

import re
from datetime import date

from pydicom.dataset import Dataset

_MAX_LEN = 32
_UNSAFE = re.compile(r"[^A-Za-z0-9 _./()+-]")
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$")
_OLDEST = 90
_SEXES = {"M": "M", "F": "F", "O": "O"}


def sanitise(value: object) -> str | None:
    """A short printable rendering of a coded value, or None when nothing is left."""
    if value is None:
        return None
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        value = "\\".join(str(v) for v in value)
    text = " ".join(_UNSAFE.sub(" ", str(value)).split())[:_MAX_LEN].strip()
    return text or None


def _parse_date(value: object) -> date | None:
    text = str(value or "").strip()
    if len(text) < 8 or not text[:8].isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def age_years(ds: Dataset) -> int | None:
    """Age in whole years from Patient's Age, else from birth date and the study's date."""
    match = _AGE.match(str(ds.get("PatientAge", "") or ""))
    if match:
        number, unit = int(match.group(1)), match.group(2) or "Y"
        years = number if unit == "Y" else 0 if unit in "DW" else number // 12
        return min(years, _OLDEST)
    born = _parse_date(ds.get("PatientBirthDate"))
    if born is None:
        return None
    seen = None
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        seen = _parse_date(ds.get(keyword))
        if seen is not None:
            break
    if seen is None or seen < born:
        return None
    years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return min(years, _OLDEST)


def view_of(ds: Dataset) -> str | None:
    """View Position, else the view code's meaning (e.g. "postero-anterior")."""
    view = sanitise(ds.get("ViewPosition"))
    if view:
        return view.upper()
    codes = ds.get("ViewCodeSequence")
    if codes:
        return sanitise(codes[0].get("CodeMeaning"))
    return None


def study_context(ds: Dataset) -> dict[str, str | int | None]:
    """What the prompt may say about the image: never an identifier."""
    sex = str(ds.get("PatientSex", "") or "").strip().upper()
    modality = sanitise(ds.get("Modality"))
    body_part = sanitise(ds.get("BodyPartExamined"))
    return {
        "modality": modality.upper() if modality else None,
        "view": view_of(ds),
        "body_part": body_part.upper() if body_part else None,
        "age_years": age_years(ds),
        "sex": _SEXES.get(sex),
    }
