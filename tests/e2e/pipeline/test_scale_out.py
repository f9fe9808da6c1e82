"""Scale-out: the listener triggers the deployment, a `prelim worker` process serves it.

The queue is on the real PostgreSQL; the worker is a separate process that
loads the tiny model and runs each study as a Prefect deployment run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from db.engine import transaction
from db.tables import Draft, Study, StudyState
from prelim.database import open_database
from prelim.settings import Settings, settings_env
from prelim.synthetic import make_cxr_study
from tests.e2e.pipeline.conftest import flow_runs


def _wait_for_deployment(name: str, worker: subprocess.Popen[bytes], timeout_s: float) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            assert worker.poll() is None, "prelim worker exited"
            try:
                client.read_deployment_by_name(name)
                return
            except ObjectNotFound:
                pass
            assert time.monotonic() < deadline, "the worker never served its deployment"
            time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.postgres
def test_listener_triggers_deployment_served_by_worker(
    stack_settings: Settings, prefect_server: Any, postgres_url: str, tmp_path: Path
) -> None:
    from pynetdicom import AE

    from dicom_listener.service import start_listener
    from flows.trigger import deployment_trigger

    settings = stack_settings.model_copy(update={"database_url": postgres_url})
    database = open_database(settings)
    env = {**os.environ, **prefect_server.env, **settings_env(settings)}
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        [sys.executable, "-m", "prelim.cli", "worker"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    listener = None
    try:
        _wait_for_deployment(settings.deployment, worker, 180)
        listener = start_listener(settings, database, trigger=deployment_trigger(settings))
        (ds,) = make_cxr_study(seed=31, views=("PA",))
        ae = AE(ae_title="SCALEOUT")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="PRELIM")
        assert assoc.is_established
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()

        deadline = time.monotonic() + 240
        while True:
            with transaction(database.sessions) as session:
                study = session.scalar(
                    select(Study).where(Study.study_instance_uid == str(ds.StudyInstanceUID))
                )
                drafts = (
                    []
                    if study is None
                    else session.scalars(select(Draft).where(Draft.study_id == study.id)).all()
                )
            if study is not None and study.state == StudyState.DRAFTED:
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.5)
        assert [d.state.value for d in drafts] == ["queued"]

        (run,) = flow_runs([f"study-{study.study_key}"])
        assert run.deployment_id is not None
        assert run.state is not None and run.state.is_completed()
    finally:
        if listener is not None:
            listener.stop()
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
        database.dispose()
