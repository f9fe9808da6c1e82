"""Study assembly: a study is ready when it has been quiet for the stable age.

One background thread polls the index. Each poll first marks quiet RECEIVING
studies READY (committed), then calls the trigger for every READY study whose
current generation is not yet triggered, and records each success in its own
transaction. Both facts live in the database, so a restart picks up where the
last process stopped: a READY study whose trigger never ran is triggered then;
a triggered one is not triggered again. The one window left is a crash between
the trigger returning and the record committing: that generation is triggered
twice, and the pipeline, which works per (study_key, generation), runs it once.
A trigger that raises is logged and retried on a later poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from db.engine import transaction
from db.studies import due_triggers, mark_stable_ready, mark_triggered
from prelim.database import Database

log = logging.getLogger(__name__)

Trigger = Callable[[str], None]


class Assembler:
    def __init__(
        self,
        database: Database,
        stable_age_s: float,
        trigger: Trigger | None,
        poll_s: float = 0.25,
        before_poll: Callable[[], None] | None = None,
    ) -> None:
        self.database = database
        # Run first in each poll: the listener settles its records there
        # (``settle.py``), so a study is never ready before its files are named.
        self.before_poll = before_poll
        self.stable_age = timedelta(seconds=stable_age_s)
        self.trigger = trigger
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prelim-assembly", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except SQLAlchemyError as exc:
                log.warning("study assembly: database unavailable (%s)", type(exc).__name__)
            except Exception:
                log.exception("study assembly poll failed")
            self._stop.wait(self.poll_s)

    def poll(self) -> int:
        """One round: mark quiet studies ready, fire due triggers; how many fired."""
        if self.before_poll is not None:
            self.before_poll()
        now = datetime.now(UTC)
        with transaction(self.database.sessions) as session:
            for key in mark_stable_ready(session, now - self.stable_age, now):
                log.info("study %s is ready", key)
        if self.trigger is None:
            # Nothing to hand over: leave them due for a process that has a trigger.
            return 0
        with self.database.sessions() as session:
            due = due_triggers(session)
        fired = 0
        for item in due:
            if self._stop.is_set():
                break
            try:
                self.trigger(item.study_key)
            except Exception:
                log.exception(
                    "trigger for study %s generation %d failed; will retry",
                    item.study_key,
                    item.generation,
                )
                continue
            with transaction(self.database.sessions) as session:
                mark_triggered(session, item.study_key, item.generation, datetime.now(UTC))
            log.info("study %s generation %d triggered", item.study_key, item.generation)
            fired += 1
        return fired
