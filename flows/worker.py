"""``prelim worker``: serve the ingest-study deployment on a (GPU) node."""

from __future__ import annotations

import logging
import os

from prelim.errors import ConfigurationError
from prelim.settings import Settings, settings_env

log = logging.getLogger(__name__)


def ensure_gpu_limit(settings: Settings) -> None:
    """Create or update this node's GPU concurrency limit on the Prefect server."""
    from prefect.client.orchestration import get_client

    from flows.ingest import gpu_limit_name

    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(gpu_limit_name(), settings.gpu_concurrency)


def serve_worker(settings: Settings) -> int:
    if not os.environ.get("PREFECT_API_URL"):
        raise ConfigurationError(
            "prelim worker serves a deployment of a shared Prefect server: set PREFECT_API_URL "
            "(e.g. http://prefect-host:4200/api). On a single machine use `prelim run`."
        )
    from flows.drafting import get_batcher
    from flows.ingest import ingest_study

    # Flow runs execute in child processes: hand them the settings, flags included.
    os.environ.update(settings_env(settings))
    # Fail now, not on the first study, when the weights are not available.
    get_batcher(settings)
    ensure_gpu_limit(settings)
    name = settings.deployment.split("/", 1)[-1]
    log.info(
        "serving deployment ingest-study/%s, %d run(s) at a time", name, settings.gpu_concurrency
    )
    ingest_study.serve(name=name, limit=settings.gpu_concurrency, print_starting_message=True)
    return 0
