"""The scale-out trigger: the listener asks Prefect to run the deployment for a study."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prelim.settings import Settings

log = logging.getLogger(__name__)


def deployment_trigger(settings: Settings) -> Callable[[str], None]:
    """A trigger that creates an ``ingest-study`` flow run on the configured deployment.

    It raises when Prefect cannot be reached, so the listener keeps the study
    untriggered and tries again on its next poll.
    """
    from prefect.deployments import run_deployment

    def trigger(study_key: str) -> None:
        run = run_deployment(
            settings.deployment,
            parameters={"study_key": study_key},
            timeout=0,
            flow_run_name=f"study-{study_key}",
        )
        log.info("study %s: flow run %s scheduled", study_key, getattr(run, "id", "?"))

    return trigger
