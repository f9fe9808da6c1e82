"""``prelim queue``: studies and drafts by state, and the quality signal per model."""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.listing import quality_by_model, state_counts
from db.studies import study_counts
from prelim.database import open_database
from prelim.settings import Settings


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join("-" * w for w in widths)

    def fmt(row: list[str]) -> str:
        pairs = enumerate(zip(row, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        return "  ".join(cells).rstrip()

    return "\n".join([title, fmt(header), line, *(fmt(r) for r in rows)])


def queue_report(session: Session) -> str:
    """The summary as text: no patient identifiers, only counts and model names."""
    studies = study_counts(session)
    drafts = state_counts(session)
    quality = quality_by_model(session)
    parts = [
        _table("Studies", ["state", "count"], [[s.value, str(n)] for s, n in studies.items()]),
        _table("Drafts", ["state", "count"], [[s.value, str(n)] for s, n in drafts.items()]),
    ]
    rows = [
        [
            q.model_id or "?",
            q.prompt_version or "?",
            str(q.signed),
            str(q.as_is),
            str(q.edited),
            str(q.rejected),
            f"{q.as_is / q.signed:.0%}" if q.signed else "-",
            "-" if q.mean_edit_distance is None else f"{q.mean_edit_distance:.1f}",
        ]
        for q in quality
    ]
    header = [
        "model",
        "prompt",
        "signed",
        "as is",
        "edited",
        "rejected",
        "as-is %",
        "mean edit (words)",
    ]
    if rows:
        parts.append(_table("Quality per model and prompt version", header, rows))
    else:
        parts.append("Quality per model and prompt version\n(no reviewed drafts yet)")
    return "\n\n".join(parts)


def print_queue(settings: Settings) -> int:
    database = open_database(settings)
    try:
        with database.sessions() as session:
            print(queue_report(session))
    finally:
        database.dispose()
    return 0
