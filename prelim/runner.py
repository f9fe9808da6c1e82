"""``prelim run`` (everything in one process tree) and ``prelim listen``."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from prelim.database import Database, open_database
from prelim.settings import Settings, use_settings

log = logging.getLogger(__name__)


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def drain_prefect_clients(timeout_s: float = 10.0) -> None:
    """Send Prefect's queued logs and events now, so shutdown does not wait on retries."""
    import sys

    if "prefect" not in sys.modules:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout_s)


@contextmanager
def review_server(settings: Settings, app: Any) -> Iterator[Any]:
    """The review app served by uvicorn in a thread."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=settings.review_host,
        port=settings.review_port,
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="prelim-review", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def embedded_stack(settings: Settings, *, review: bool = True) -> Iterator[dict[str, Any]]:
    """Prefect server (unless PREFECT_API_URL is set), pipeline, listener and review app."""
    with ExitStack() as stack:
        info: dict[str, Any] = {}
        use_settings(settings)
        database = open_database(settings)
        stack.callback(database.dispose)
        # What a user can get wrong fails first, before anything slow starts.
        app = None
        if review:
            from review.app import create_app

            app = create_app(settings, database)
        from flows.drafting import get_batcher

        log.info("loading the model %s", settings.model)
        get_batcher(settings)
        if not os.environ.get("PREFECT_API_URL"):
            from prelim.prefect_server import EmbeddedPrefectServer, activate

            server = EmbeddedPrefectServer(settings)
            server.start()
            stack.callback(server.stop)
            # Runs before server.stop: flush Prefect's log and event queues while it listens.
            stack.callback(drain_prefect_clients)
            activate(server.env)
            info["dashboard"] = server.dashboard_url
        else:
            info["dashboard"] = os.environ["PREFECT_API_URL"].removesuffix("/api")

        from dicom_listener.service import start_listener
        from flows.local import LocalPipeline
        from flows.worker import ensure_gpu_limit

        ensure_gpu_limit(settings)
        pipeline = LocalPipeline(database, threads=settings.gpu_concurrency)
        pipeline.start()
        stack.callback(pipeline.stop)
        listener = start_listener(settings, database, trigger=pipeline.submit)
        stack.callback(listener.stop)
        info.update(listener=listener, pipeline=pipeline, database=database)
        if app is not None:
            stack.enter_context(review_server(settings, app))
            info["review"] = f"http://{settings.review_host}:{settings.review_port}/"
        yield info


def _has_reviewers(database: Database) -> bool:
    from sqlalchemy import func, select

    from db.tables import Reviewer

    with database.sessions() as session:
        return bool(session.scalar(select(func.count()).select_from(Reviewer)))


def run_all(settings: Settings) -> int:
    from dicom_listener.transport import freeze_start_up

    with embedded_stack(settings) as info:
        freeze_start_up()  # the process's start-up objects: out of later collections
        listener = info["listener"]
        where = f"{settings.listener_host}:{listener.port}"
        print(
            "prelim is running\n"
            f"  DICOM listener : AE {settings.ae_title} at {where}\n"
            f"  review page    : {info['review']}\n"
            f"  Prefect        : {info['dashboard']}\n"
            f"  model          : {settings.model}\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        if not _has_reviewers(info["database"]):
            print("No reviewer accounts yet: add one with `prelim user add NAME`.", flush=True)
        wait_for_signal()
        print("stopping...", flush=True)
    return 0


def run_listener(settings: Settings) -> int:
    from dicom_listener.service import serve

    trigger: Callable[[str], None] | None = None
    if os.environ.get("PREFECT_API_URL"):
        from flows.trigger import deployment_trigger

        trigger = deployment_trigger(settings)
    else:
        log.warning(
            "PREFECT_API_URL is not set: studies will be stored and marked ready, but no "
            "pipeline run is triggered (use `prelim run` for everything on one machine)"
        )
    return serve(settings, trigger=trigger)
