"""kill -9 of a `prelim listen` process mid-transfer, repeated: nothing acknowledged is lost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

import pytest
from pydicom import dcmread
from sqlalchemy import select

from db.tables import Instance
from prelim.database import open_database
from prelim.settings import Settings
from prelim.synthetic import make_ct_series
from tests.integration.listener.conftest import associate

pytestmark = pytest.mark.slow
CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, process: subprocess.Popen, timeout_s: float = 60) -> None:
    pause = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        assert process.poll() is None, "the listener exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            pause.wait(0.05)
    raise AssertionError("the listener did not open its port")


def _listen(data_dir: Path, port: int, log: BinaryIO) -> subprocess.Popen:
    env = dict(os.environ, PRELIM_MIN_FREE_DISK_MB="0", PRELIM_CONFIG=str(data_dir / "none.toml"))
    env.pop("PREFECT_API_URL", None)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prelim.cli",
            "listen",
            "--data-dir",
            str(data_dir),
            "--listener-host",
            "127.0.0.1",
            "--listener-port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def test_kill_9_during_transfer_loses_nothing_acknowledged(
    settings: Settings, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    series = make_ct_series(41, slices=500, rows=64, columns=64)
    acknowledged: list[str] = []
    associations: list = []
    sent = 0
    log = (tmp_path / "listener.log").open("ab")
    for round_ in range(3):
        port = _free_port()
        process = _listen(data_dir, port, log)
        _wait_port(port, process)
        kill_after = 60 + 40 * round_
        done = threading.Event()

        def send(start: int) -> None:
            nonlocal sent
            try:
                assoc = associate(port, [(CT, [EXPLICIT])])
                associations.append(assoc)
                for ds in series[start:]:
                    status = assoc.send_c_store(ds)
                    sent += 1
                    if "Status" not in status:
                        break
                    if status.Status == 0:
                        acknowledged.append(str(ds.SOPInstanceUID))
                        if len(acknowledged) >= kill_after * (round_ + 1):
                            done.set()
                assoc.release()
            except Exception:  # the peer died under us: that is the point
                pass
            finally:
                done.set()

        sender = threading.Thread(target=send, args=(sent,))
        sender.start()
        assert done.wait(120)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        sender.join(60)
        for assoc in associations:  # pynetdicom leaves a dead peer's socket open
            if assoc.dul.socket is not None:
                assoc.dul.socket.close()
    # Restart: recovery runs, then every acknowledged instance is there and decodes.
    port = _free_port()
    process = _listen(data_dir, port, log)
    try:
        _wait_port(port, process)
        spool = data_dir / "spool"
        assert not any((spool / ".incoming").iterdir())
        database = open_database(settings.model_copy(update={"data_dir": data_dir}))
        with database.sessions() as session:
            indexed = {row.sop_instance_uid: row.path for row in session.scalars(select(Instance))}
        database.dispose()
    finally:
        process.terminate()
        process.wait(10)
        log.close()
    assert len(acknowledged) >= 60 * 3
    for uid in acknowledged:
        assert uid in indexed
        ds = dcmread(spool / indexed[uid])
        assert ds.SOPInstanceUID == uid and ds.pixel_array.shape == (64, 64)
