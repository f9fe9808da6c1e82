"""In-process pipeline for the embedded mode: the listener's trigger feeds worker threads.

Each study becomes an ``ingest-study`` flow run on the Prefect server (so the
dashboard shows it), executed in this process, where the model stays loaded.
The queue is in memory; durability comes from the database: a study whose
trigger fired but whose run never finished is re-submitted at start-up.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from db.engine import transaction
from db.pipeline import unfinished_studies
from prelim.database import Database

log = logging.getLogger(__name__)

_STOP = ""


class LocalPipeline:
    def __init__(self, database: Database, threads: int = 1) -> None:
        self.database = database
        self._queue: queue.Queue[str] = queue.Queue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"prelim-pipeline-{n}", daemon=True)
            for n in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        with transaction(self.database.sessions) as session:
            unfinished = unfinished_studies(session)
        for key in unfinished:
            log.info("re-running study %s, whose run did not finish", key)
            self.submit(key)

    def submit(self, study_key: str) -> None:
        """The listener's trigger: queue a study for drafting (duplicates collapse)."""
        with self._lock:
            if study_key in self._pending:
                return
            self._pending.add(study_key)
        self._queue.put(study_key)

    def stop(self, timeout_s: float = 30.0) -> None:
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            thread.join(timeout_s)

    def _work(self) -> None:
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        from flows.ingest import ingest_study

        # Heartbeats let a runner's server spot crashed subprocesses; here the run is in
        # this process, recovery is ours (unfinished studies re-run at start-up), and the
        # heartbeat thread's shutdown adds up to a second to every study.
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            self._loop(ingest_study)

    def _loop(self, ingest_study: Callable[[str], object]) -> None:
        while True:
            key = self._queue.get()
            if key == _STOP:
                return
            with self._lock:
                self._pending.discard(key)
            try:
                ingest_study(key)
            except Exception as exc:  # recorded in the queue and in Prefect by the flow
                log.warning("study %s: run failed (%s)", key, type(exc).__name__)
