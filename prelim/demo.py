"""``prelim demo``: synthetic studies through the real C-STORE path, to drafts in the queue."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from db.engine import transaction
from db.tables import Study, StudyState
from prelim.errors import PrelimError
from prelim.settings import Settings

DONE = {StudyState.DRAFTED, StudyState.SKIPPED, StudyState.FAILED}


class DemoError(PrelimError):
    """The demo could not finish."""


@dataclass
class DemoStudy:
    label: str
    datasets: list[Dataset]

    @property
    def uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)


def demo_studies() -> list[DemoStudy]:
    """A chest X-ray (PA and lateral) and a small CT, with realistic headers."""
    from prelim.synthetic import make_ct_series, make_cxr_study

    return [
        DemoStudy("Chest X-ray, PA + lateral", make_cxr_study(seed=1)),
        DemoStudy("CT chest, 24 slices", make_ct_series(slices=24, seed=2)),
    ]


def send_studies(
    settings: Settings, host: str, port: int, studies: list[DemoStudy], console: Console
) -> None:
    """C-STORE every instance over one association, with a progress bar."""
    from pynetdicom import AE, StoragePresentationContexts

    ae = AE(ae_title="PRELIM_DEMO")
    ae.requested_contexts = StoragePresentationContexts[:127]
    assoc = ae.associate(host, port, ae_title=settings.ae_title)
    if not assoc.is_established:
        raise DemoError(
            f"the listener at {host}:{port} refused the association; check "
            "PRELIM_ALLOWED_AE_TITLES / PRELIM_ALLOWED_NETWORKS allow the AE PRELIM_DEMO"
        )
    total = sum(len(s.datasets) for s in studies)
    try:
        with _progress(console) as progress:
            bar = progress.add_task("sending instances (C-STORE)", total=total)
            for study in studies:
                for ds in study.datasets:
                    status = assoc.send_c_store(ds)
                    code = getattr(status, "Status", None)
                    if code != 0x0000:
                        raise DemoError(f"the listener answered status {code!r} for an instance")
                    progress.advance(bar)
    finally:
        assoc.release()


def wait_for_drafts(
    settings: Settings, database: Any, studies: list[DemoStudy], timeout_s: float, console: Console
) -> dict[str, Study]:
    """Poll the queue until every study is drafted, skipped or failed."""
    uids = [s.uid for s in studies]
    deadline = time.monotonic() + timeout_s
    with _progress(console) as progress:
        bar = progress.add_task(
            f"waiting for drafts (ready {settings.stable_age_s:g} s after the last instance)",
            total=len(uids),
        )
        while True:
            with transaction(database.sessions) as session:
                rows = {
                    r.study_instance_uid: r
                    for r in session.scalars(
                        select(Study).where(Study.study_instance_uid.in_(uids))
                    )
                }
            done = sum(1 for r in rows.values() if r.state in DONE)
            progress.update(bar, completed=done)
            if done == len(uids):
                return rows
            if time.monotonic() > deadline:
                raise DemoError(
                    f"only {done} of {len(uids)} studies finished within {timeout_s:.0f} s; "
                    "see `prelim queue` and the Prefect dashboard"
                )
            time.sleep(0.5)


def summary_table(studies: list[DemoStudy], rows: dict[str, Study], database: Any) -> Table:
    from db.tables import Draft

    table = Table(title="prelim demo", expand=True)
    for col in ("study", "instances", "study key", "state", "draft", "flags"):
        table.add_column(col)
    with transaction(database.sessions) as session:
        for study in studies:
            row = rows[study.uid]
            draft = session.scalar(
                select(Draft).where(Draft.study_id == row.id).order_by(Draft.id.desc()).limit(1)
            )
            text = "-"
            flags = "-"
            if draft is not None:
                raw = draft.impression or draft.findings or draft.raw_text or ""
                text = "".join(c if c.isprintable() else " " for c in raw)[:40] or "-"
                flags = ", ".join(draft.flags or []) or "none"
            table.add_row(
                study.label,
                str(len(study.datasets)),
                row.study_key[:8],
                row.state.value + (f" ({row.state_reason})" if row.state_reason else ""),
                text,
                flags,
            )
    return table


def ensure_demo_reviewer(database: Any) -> tuple[str, str] | None:
    """A ``demo`` reviewer with a fresh password, when no reviewer exists yet."""
    from db.reviewers import add_reviewer
    from db.tables import Reviewer

    with transaction(database.sessions) as session:
        if session.scalar(select(func.count()).select_from(Reviewer)):
            return None
        password = secrets.token_urlsafe(12)
        add_reviewer(session, "demo", password, display_name="Demo Reviewer")
    return "demo", password


def run_demo(settings: Settings, *, timeout_s: float = 600.0, stay: bool = True) -> int:
    from prelim.model_choice import choose_model
    from prelim.runner import embedded_stack, wait_for_signal

    console = Console()
    if settings.log_level.upper() not in ("DEBUG",):
        # The progress bars tell the story; keep routine log lines off the console.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        for name in ("prelim", "dicom_listener", "flows", "db", "review", "models"):
            logging.getLogger(name).setLevel(logging.WARNING)
    settings, stand_in = choose_model(settings, allow_stand_in=True)
    console.print("[bold]prelim demo[/]: starting the listener, pipeline, review app and Prefect")
    with ExitStack() as stack:
        info = stack.enter_context(embedded_stack(settings))
        database = info["database"]
        port = info["listener"].port
        studies = demo_studies()
        send_studies(settings, "127.0.0.1", port, studies, console)
        rows = wait_for_drafts(settings, database, studies, timeout_s, console)
        console.print(summary_table(studies, rows, database))
        account = ensure_demo_reviewer(database)
        console.print(f"review page : {info['review']}")
        console.print(f"dashboard   : {info['dashboard']}")
        if account:
            console.print(f"sign in as  : {account[0]} / {account[1]}")
        if stand_in:
            console.print("[yellow]drafts come from the tiny stand-in model: meaningless text[/]")
        if stay:
            console.print("Ctrl-C stops the demo.")
            wait_for_signal()
    return 0


@contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        yield progress
