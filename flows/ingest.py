"""The Prefect flow ``ingest-study``: one study in, one draft (or a reason) in the queue.

Parameters, run names, logs and artifacts carry the opaque study key only.
Results are not persisted: what matters lands in the queue database.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task, flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency
from prefect.logging import get_run_logger
from prefect.runtime import deployment
from sqlalchemy.exc import DBAPIError, OperationalError

from db.engine import transaction
from db.pipeline import StudyInputs, finish_study, load_study_inputs, start_processing
from db.queue import enqueue_draft, record_failure
from db.tables import StudyState
from flows.drafting import ModelNotAvailable, get_batcher
from flows.prepare import PreparedStudy, prepare_study
from prelim.database import Database, open_database
from prelim.errors import DatabaseUnavailable, PrelimError
from prelim.settings import Settings, get_settings

P = ParamSpec("P")
R = TypeVar("R")

TRANSIENT = (OperationalError, DatabaseUnavailable, ConnectionError, TimeoutError)


class StudyFailed(PrelimError):
    """The study could not be drafted."""


def gpu_limit_name() -> str:
    """The global concurrency limit that keeps one model per GPU on this node."""
    return f"prelim-gpu-{socket.gethostname().lower()}"


_databases: dict[str, Database] = {}
_databases_lock = threading.Lock()


def database(settings: Settings) -> Database:
    """This process's connection pool for the settings' database, opened on first use."""
    url = settings.resolved_database_url
    with _databases_lock:
        if url not in _databases:
            _databases[url] = open_database(settings, migrate=False)
        return _databases[url]


def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what may pass: the database or the network blinking."""
    try:
        state.result()
    except TRANSIENT:
        return True
    except DBAPIError as exc:
        return bool(exc.connection_invalidated)
    except BaseException:
        return False
    return False


def pipeline_task(name: str) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A task that is not cached, keeps no result, and retries transient failures only."""
    return task(
        name=name,
        persist_result=False,
        cache_policy=NO_CACHE,
        retries=3,
        retry_delay_seconds=[1, 5, 20],
        retry_condition_fn=retry_transient,
    )


@pipeline_task("load-study")
def load_study(study_key: str) -> StudyInputs | None:
    """The study's instances, or None while it is still receiving (a new trigger follows)."""
    settings = get_settings()
    with transaction(database(settings).sessions) as session:
        inputs = load_study_inputs(session, study_key, settings.resolved_spool_dir)
        if inputs.state == StudyState.RECEIVING:
            return None
        start_processing(session, study_key, inputs.generation)
    return inputs


@pipeline_task("prepare-images")
def prepare_images(inputs: StudyInputs) -> PreparedStudy:
    return prepare_study(inputs, get_settings().resolved_images_dir)


@task(name="draft-report", persist_result=False, cache_policy=NO_CACHE)
def draft_report(prepared: PreparedStudy) -> Any:
    from models import DraftRequest, StudyContext

    settings = get_settings()
    request = DraftRequest(
        request_id=prepared.study_key,
        task=prepared.task,
        images=prepared.images,
        context=StudyContext(
            modality=str(prepared.context.get("modality") or "OT"),
            view=_str(prepared.context.get("view")),
            body_part=_str(prepared.context.get("body_part")),
            age_years=_int(prepared.context.get("age_years")),
            sex=_str(prepared.context.get("sex")),
        ),
    )
    batcher = get_batcher(settings)
    if deployment.get_id() is None:
        # In-process run (`prelim run`): this process holds the one model and its batcher
        # serialises the GPU; a server round trip per study would only add latency.
        return batcher.draft(request)
    # A deployment run in its own process: the node's limit keeps one model per GPU.
    with concurrency(gpu_limit_name(), occupy=1):
        return batcher.draft(request)


@pipeline_task("enqueue-draft")
def enqueue(prepared: PreparedStudy, report: Any) -> bool:
    def put(session: Any) -> None:
        enqueue_draft(
            session,
            study_key=prepared.study_key,
            generation=prepared.generation,
            findings=report.findings,
            impression=report.impression,
            raw_text=report.raw_text,
            flags=list(report.flags),
            provenance=report.provenance,
            model_id=str(report.provenance.get("model_id", get_settings().model)),
            prompt_version=str(report.provenance.get("prompt_version", "")),
            images=prepared.image_files,
        )

    with transaction(database(get_settings()).sessions) as session:
        return finish_study(
            session, prepared.study_key, prepared.generation, StudyState.DRAFTED, then=put
        )


@pipeline_task("record-outcome")
def record_outcome(study_key: str, generation: int, reason: str, skipped: bool) -> bool:
    state = StudyState.SKIPPED if skipped else StudyState.FAILED

    def put(session: Any) -> None:
        record_failure(
            session, study_key=study_key, generation=generation, reason=reason, skipped=skipped
        )

    with transaction(database(get_settings()).sessions) as session:
        return finish_study(session, study_key, generation, state, reason, then=put)


@flow(
    name="ingest-study",
    flow_run_name="study-{study_key}",
    persist_result=False,
    validate_parameters=True,
)
def ingest_study(study_key: str) -> dict[str, Any]:
    """Select, de-identify and preprocess a study's images, draft a report, queue it."""
    logger = get_run_logger()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    inputs = load_study(study_key)
    if inputs is None:
        logger.info("study %s is receiving again; its next trigger will draft it", study_key)
        return {"study_key": study_key, "outcome": "still-receiving"}
    generation = inputs.generation
    prepared: PreparedStudy | None = None
    report: Any = None
    try:
        t = time.perf_counter()
        prepared = prepare_images(inputs)
        timings["prepare_s"] = time.perf_counter() - t
        if prepared.skip_reason is not None:
            logger.info("study %s skipped: %s", study_key, prepared.skip_reason)
            record_outcome(study_key, generation, prepared.skip_reason, True)
            _artifact(study_key, "skipped", prepared, None, timings, prepared.skip_reason)
            return {"study_key": study_key, "outcome": "skipped"}
        t = time.perf_counter()
        report = draft_report(prepared)
        timings["draft_s"] = time.perf_counter() - t
        current = enqueue(prepared, report)
    except Exception as exc:
        reason = failure_reason(exc)
        logger.error("study %s failed: %s", study_key, reason)
        record_outcome(study_key, generation, reason, False)
        _artifact(study_key, "failed", prepared, report, timings, reason)
        raise StudyFailed(reason) from exc
    timings["total_s"] = time.perf_counter() - started
    outcome = "drafted" if current else "superseded-before-queueing"
    logger.info("study %s %s in %.2f s", study_key, outcome, timings["total_s"])
    _artifact(study_key, outcome, prepared, report, timings, None)
    return {"study_key": study_key, "outcome": outcome, "flags": list(report.flags)}


def failure_reason(exc: BaseException) -> str:
    """A reviewer-readable reason; our messages name keys and counts, never identifiers."""
    if isinstance(exc, ModelNotAvailable | PrelimError):
        return str(exc)[:1000]
    return f"{type(exc).__name__}: {str(exc)[:500]}"


def _artifact(
    study_key: str,
    outcome: str,
    prepared: PreparedStudy | None,
    report: Any,
    timings: dict[str, float],
    reason: str | None,
) -> None:
    lines = [f"# Study `{study_key}`: {outcome}", ""]
    if reason:
        lines += [f"**Reason:** {reason}", ""]
    if prepared is not None:
        lines += [
            "| | |",
            "| --- | --- |",
            f"| task | {prepared.task} |",
            f"| images sent to the model | {len(prepared.image_files)} |",
            f"| instances not used | {len(prepared.skipped)} |",
        ]
        reasons: dict[str, int] = {}
        for _, why in prepared.skipped:
            reasons[why] = reasons.get(why, 0) + 1
        for why, count in sorted(reasons.items()):
            lines.append(f"| not used: {why} | {count} |")
    if report is not None:
        prov = report.provenance
        lines += [
            f"| model | {prov.get('model_id', '')} |",
            f"| model revision | {prov.get('model_revision') or prov.get('weights_hash', '')} |",
            f"| prompt | {prov.get('prompt_template', '')} {prov.get('prompt_version', '')} |",
            f"| flags | {', '.join(report.flags) or 'none'} |",
        ]
    for name, value in timings.items():
        lines.append(f"| {name} | {value:.2f} |")
    create_markdown_artifact(
        "\n".join(lines), key=f"study-{study_key}", description=f"ingest-study {outcome}"
    )


def _str(value: object) -> str | None:
    return None if value is None or value == "" else str(value)


def _int(value: object) -> int | None:
    try:
        return None if value is None else int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return None
