"""The worker process's one model, shared by concurrent flow runs through a batcher.

Flow runs in one process submit their requests here; a single thread gathers
whatever is waiting (up to the engine's batch size) into one ``generate`` call,
so concurrent studies share the GPU instead of queueing behind each other.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING

from prelim.errors import PrelimError
from prelim.settings import Settings

if TYPE_CHECKING:
    from models import DraftReport, DraftRequest, ReportDrafter

log = logging.getLogger(__name__)


class ModelNotAvailable(PrelimError):
    """The model could not be loaded."""


class DraftBatcher:
    """Collects draft requests from many threads and runs them in batches."""

    def __init__(self, drafter: ReportDrafter, max_batch: int, gather_s: float = 0.02) -> None:
        self.drafter = drafter
        self.max_batch = max_batch
        self.gather_s = gather_s
        self._queue: queue.Queue[tuple[DraftRequest, Future[DraftReport]]] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="prelim-drafter", daemon=True)
        self._thread.start()

    def draft(self, request: DraftRequest) -> DraftReport:
        future: Future[DraftReport] = Future()
        self._queue.put((request, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            try:
                while len(batch) < self.max_batch:
                    batch.append(self._queue.get(timeout=self.gather_s))
            except queue.Empty:
                pass
            try:
                reports = self.drafter.draft([req for req, _ in batch])
            except BaseException as exc:  # the engine failed: every waiter hears it
                for _, fut in batch:
                    fut.set_exception(exc)
                continue
            for (_, fut), report in zip(batch, reports, strict=True):
                fut.set_result(report)


_lock = threading.Lock()
_batchers: dict[tuple[str, str | None, str], DraftBatcher] = {}


def get_batcher(settings: Settings) -> DraftBatcher:
    """The process's batcher for the configured model, loading the model on first use."""
    key = (settings.model, settings.model_revision, settings.device)
    with _lock:
        batcher = _batchers.get(key)
        if batcher is None:
            from models import ModelConfigurationError, ModelUnavailableError, ReportDrafter

            try:
                drafter = ReportDrafter.load(
                    settings.model,
                    revision=settings.model_revision,
                    device=settings.device,
                    max_new_tokens=settings.max_new_tokens,
                    max_batch_size=settings.max_batch_size,
                )
            except (ModelUnavailableError, ModelConfigurationError) as exc:
                raise ModelNotAvailable(str(exc)) from exc
            batcher = _batchers[key] = DraftBatcher(drafter, settings.max_batch_size)
        return batcher
