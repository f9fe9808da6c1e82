"""Study readiness: quiet for the stable age, one trigger per generation, restarts, re-opening."""

from __future__ import annotations

import threading

from sqlalchemy import select

from db.engine import transaction
from db.studies import study_counts
from db.tables import Study, StudyState
from dicom_listener.assembly import Assembler
from prelim.database import Database
from prelim.synthetic import make_ct_series
from tests.integration.listener.conftest import StartListener, associate, wait_until

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def _send(port: int, datasets: list) -> list[int]:
    assoc = associate(port, [(CT, [EXPLICIT])])
    statuses = [int(assoc.send_c_store(d).Status) for d in datasets]
    assoc.release()
    return statuses


def _study(database: Database) -> Study:
    with database.sessions() as session:
        study = session.scalar(select(Study))
    assert study is not None
    return study


def test_ready_triggers_once_survives_restart_and_reopens(
    start: StartListener, database: Database
) -> None:
    series = make_ct_series(31, slices=3, rows=16, columns=16)
    listener = start(database, stable_age_s=0.3)
    assert _send(listener.port, series[:2]) == [0, 0]
    assert listener.triggers.event.wait(10)
    # The trigger runs before its record commits: poll the record.
    wait_until(lambda: _study(database).triggered_generation == 1)
    study = _study(database)
    assert listener.triggers.keys == [study.study_key]
    assert (study.state, study.generation, study.triggered_generation) == (StudyState.READY, 1, 1)
    assert study.ready_at is not None and study.triggered_at is not None
    with database.sessions() as session:
        assert study_counts(session)[StudyState.READY] == 1

    # A restart does not trigger the same generation again.
    listener.handle.stop()
    again = start(database, stable_age_s=0.3)
    Assembler(database, 0.3, again.triggers).poll()
    assert again.triggers.keys == []

    # A late instance re-opens the study: a new generation, triggered once.
    assert _send(again.port, series[2:]) == [0]
    assert again.triggers.event.wait(10)
    wait_until(lambda: _study(database).triggered_generation == 2)
    study = _study(database)
    assert again.triggers.keys == [study.study_key]
    assert (study.generation, study.triggered_generation, study.instance_count) == (2, 2, 3)


def test_failed_trigger_is_retried_and_a_pending_one_survives_restart(
    start: StartListener, database: Database
) -> None:
    listener = start(database, stable_age_s=0.2)
    listener.handle.assembler.stop()  # drive the polls by hand
    assert _send(listener.port, make_ct_series(32, slices=1, rows=16, columns=16)) == [0]
    with transaction(database.sessions) as session:  # as if the quiet period had passed
        for study in session.scalars(select(Study)):
            study.last_received_at = study.last_received_at.replace(year=2000)
    calls: list[str] = []

    def broken(key: str) -> None:
        calls.append(key)
        raise RuntimeError("pipeline unreachable")

    assert Assembler(database, 0.2, broken).poll() == 0
    assert _study(database).triggered_generation == 0
    # The process dies; the next one finds the study READY and untriggered.
    fired = threading.Event()
    keys: list[str] = []
    assert Assembler(database, 0.2, lambda k: (keys.append(k), fired.set())).poll() == 1
    assert keys == calls == [_study(database).study_key]
    assert _study(database).triggered_generation == 1
