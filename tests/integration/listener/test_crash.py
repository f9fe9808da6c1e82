"""kill -9 of a `prelim listen` process mid-transfer, repeated: nothing acknowledged is lost."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from pydicom import dcmread
from sqlalchemy import select

from db.tables import Instance
from dicom_listener import record
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
    env = dict(
        os.environ,
        PRELIM_MIN_FREE_DISK_MB="0",
        PRELIM_CONFIG=str(data_dir / "none.toml"),
        # Fewer than a round sends: files made ahead and files made on the way both.
        PRELIM_FILES_AHEAD="32",
    )
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


@dataclass
class Sender:
    """Sends instances on one association, noting each one answered 0x0000."""

    port: int
    series: list
    acknowledged: list[str]
    kill_at: int
    sent: int = 0
    ready_to_kill: threading.Event = field(default_factory=threading.Event)
    assoc: Any = None

    def run(self, start: int) -> None:
        try:
            self.assoc = associate(self.port, [(CT, [EXPLICIT])])
            for ds in self.series[start:]:
                status = self.assoc.send_c_store(ds)
                self.sent += 1
                if "Status" not in status:
                    break
                if status.Status == 0:
                    self.acknowledged.append(str(ds.SOPInstanceUID))
                    if len(self.acknowledged) >= self.kill_at:
                        self.ready_to_kill.set()
            self.assoc.release()
        except Exception:  # the peer died under us: that is the point
            pass
        finally:
            self.ready_to_kill.set()


def test_kill_9_during_transfer_loses_nothing_acknowledged(
    settings: Settings, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    series = make_ct_series(41, slices=500, rows=64, columns=64)
    acknowledged: list[str] = []
    position = 0
    log = (tmp_path / "listener.log").open("ab")
    for round_ in range(3):
        port = _free_port()
        process = _listen(data_dir, port, log)
        _wait_port(port, process)
        sender = Sender(port, series, acknowledged, kill_at=len(acknowledged) + 60 + 40 * round_)
        thread = threading.Thread(target=sender.run, args=(position,))
        thread.start()
        assert sender.ready_to_kill.wait(120)
        process.send_signal(signal.SIGKILL)  # mid-transfer: the sender is still sending
        process.wait(10)
        thread.join(60)
        position += sender.sent
        if sender.assoc is not None and sender.assoc.dul.socket is not None:
            sender.assoc.dul.socket.close()
    # Restart: recovery runs, then every acknowledged instance is there and decodes.
    spool = data_dir / "spool"
    before = set((spool / ".incoming").iterdir())  # partial files, and files made ahead
    assert before
    port = _free_port()
    process = _listen(data_dir, port, log)
    try:
        _wait_port(port, process)
        # Every temp file of the killed listeners is gone (records among them
        # named, the rest removed); what is there now was made ahead by this
        # one: empty, or on ext4 record files of zeros (record.py).
        after = set((spool / ".incoming").iterdir())
        assert not before & after
        made = {0, record.RECORD_BYTES}
        assert all(path.stat().st_size in made for path in after)
        assert any(path.name.endswith(record.SUFFIX) for path in before) == any(
            path.name.endswith(record.SUFFIX) for path in after
        )
        database = open_database(settings.model_copy(update={"data_dir": data_dir}))
        with database.sessions() as session:
            indexed = {row.sop_instance_uid: row.path for row in session.scalars(select(Instance))}
        database.dispose()
    finally:
        process.terminate()
        process.wait(10)
        log.close()
    assert len(acknowledged) >= 60 + 100 + 140
    assert position < len(series)  # each kill really cut a transfer short
    for uid in acknowledged:
        assert uid in indexed
        ds = dcmread(spool / indexed[uid])
        assert ds.SOPInstanceUID == uid and ds.pixel_array.shape == (64, 64)
