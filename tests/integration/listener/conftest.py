"""A real listener on a free loopback port, and raw-request helpers."""

from __future__ import annotations

import gc
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dsutils import create_file_meta

from dicom_listener.service import ListenerHandle, start_listener
from dicom_listener.transport import FastSocket
from prelim.database import Database
from prelim.settings import Settings


@dataclass
class Triggers:
    keys: list[str] = field(default_factory=list)
    event: threading.Event = field(default_factory=threading.Event)

    def __call__(self, study_key: str) -> None:
        self.keys.append(study_key)
        self.event.set()


@dataclass
class Running:
    handle: ListenerHandle
    settings: Settings
    database: Database
    triggers: Triggers

    @property
    def port(self) -> int:
        return self.handle.port

    @property
    def incoming(self) -> Path:
        return self.settings.resolved_spool_dir / ".incoming"

    def settle(self) -> None:
        """Give every instance stored as a record its spool name now (``settle.py``)."""
        self.handle.server.receiver.settler.drain()

    def spool_dir(self) -> Path:
        """The spool, every record in it named (the pipeline sees it so: ``settle.py``)."""
        self.settle()
        return self.settings.resolved_spool_dir

    def leftovers(self) -> list[Path]:
        """Temp files other than those made ahead: received data, whole or partial.

        Records waiting for their spool names are named first.
        """
        self.settle()
        found = list(self.incoming.iterdir())  # first: a name made after this is not listed
        ahead = self.handle.server.receiver.temp_files.ready()
        return [path for path in found if path not in ahead]


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; whether it held."""
    deadline = time.monotonic() + timeout_s
    pause = threading.Event()
    while not condition():
        if time.monotonic() >= deadline:
            return False
        pause.wait(0.02)
    return True


def listener_settings(settings: Settings, database: Database | None = None, **kw: Any) -> Settings:
    update: dict[str, Any] = {
        "listener_host": "127.0.0.1",
        "listener_port": 0,
        "min_free_disk_mb": 0,
        "stable_age_s": 0.5,
        # A few made ahead: tests then cover both a file made ahead and one
        # made when none is left.
        "files_ahead": 4,
    }
    if database is not None:
        update["database_url"] = database.engine.url.render_as_string(hide_password=False)
    update.update(kw)
    return settings.model_copy(update=update)


StartListener = Callable[..., Running]


@pytest.fixture
def start(settings: Settings) -> Iterator[StartListener]:
    """Start listeners (on a given database, or the SQLite default); all stopped at the end."""
    running: list[Running] = []
    opened: list[Database] = []

    def _start(database: Database | None = None, **kw: Any) -> Running:
        from prelim.database import open_database

        s = listener_settings(settings, database, **kw)
        if database is None:
            database = open_database(s)
            opened.append(database)
        triggers = Triggers()
        handle = start_listener(s, database, trigger=triggers)
        item = Running(handle, s, database, triggers)
        running.append(item)
        return item

    yield _start
    for item in running:
        item.handle.stop()
    for db in opened:
        db.dispose()
    # Sockets pynetdicom drops without closing (a failed TLS handshake) are
    # reported here, under the test that made them, not under a later one.
    gc.collect()


@pytest.fixture
def listener(start: StartListener) -> Running:
    """A listener on SQLite."""
    return start()


def associate(port: int, contexts: list[tuple[str, list[str]]], **kw: Any) -> Association:
    ae = AE(ae_title=kw.pop("ae_title", "TESTSCU"))
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", port, **kw)
    if assoc.dul.socket is not None:
        # The listener's socket class: it closes even when the peer has vanished.
        assoc.dul.socket.__class__ = FastSocket
    return assoc


def send_raw(
    assoc: Association, sop_class: str, sop_instance: str, encoded: bytes, message_id: int = 1
) -> int | None:
    """Send a C-STORE-RQ whose dataset is exactly ``encoded``; the response status.

    The bytes go out unparsed: pynetdicom's chunked send streams them from a
    Part 10 file whose file meta carries the request's UIDs.
    """
    from pydicom.filewriter import write_file_meta_info
    from pynetdicom import _config

    cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class)
    meta = create_file_meta(
        sop_class_uid=UID(sop_class),
        sop_instance_uid=UID(sop_instance),
        transfer_syntax=UID(cx.transfer_syntax[0]),
    )
    with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
        f.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(f, meta)  # type: ignore[arg-type]
        f.write(encoded)
        f.flush()
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            status = assoc.send_c_store(f.name, msg_id=message_id)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
    return int(status.Status) if "Status" in status else None


def store_request(ds: Dataset, message_id: int = 1) -> Any:
    """A C-STORE request primitive for ``ds``, its data set encoded (Explicit VR LE)."""
    import io

    from pynetdicom.dimse_primitives import C_STORE

    request = C_STORE()
    request.MessageID = message_id
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 0
    request.DataSet = io.BytesIO(encode(ds))
    return request


def encode(ds: Dataset, implicit: bool = False) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = implicit
    write_dataset(buffer, ds)
    return buffer.getvalue()
