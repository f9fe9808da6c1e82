"""Start and serve the listener: recovery, the storage SCP, and study assembly."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_listener import aio, uids
from dicom_listener.assembly import Assembler
from dicom_listener.handlers import handlers_for
from dicom_listener.incoming import TempFiles, records_possible
from dicom_listener.receiver import Receiver
from dicom_listener.recovery import recover
from dicom_listener.security import allowed_calling_titles, tls_context
from dicom_listener.spool import Spool
from dicom_listener.transport import ListenerServer, freeze_start_up, install_temp_file_hook
from prelim.database import Database, open_database
from prelim.logs import quiet_pynetdicom
from prelim.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ListenerHandle:
    """A running listener. ``port`` is the bound port (useful with listener_port=0)."""

    port: int
    ae: AE
    server: ListenerServer
    assembler: Assembler
    _thread: threading.Thread
    _stopped: bool = field(default=False)

    def stop(self) -> None:
        """Stop accepting, end open associations, stop assembly. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()
        self.server.server_close()
        for assoc in list(self.ae.active_associations):
            assoc.abort()
        self._thread.join(10)
        self.assembler.stop()
        self.server.receiver.close()


def accepted_transfer_syntaxes() -> list[str]:
    """Every syntax pydicom knows, compressed first.

    pynetdicom, as acceptor, picks the first of its own syntaxes that a context
    offers. A sender offering [JPEG 2000, Explicit VR LE] for a JPEG 2000 file
    should then send it as it is, not decompress it on the way.
    """
    native = [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
    ]
    return [str(uid) for uid in AllTransferSyntaxes if uid not in native] + native


def build_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu
    ae.maximum_associations = settings.max_associations
    ae.require_calling_aet = allowed_calling_titles(settings)
    ae.network_timeout = 60
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.add_supported_context(Verification)
    syntaxes = accepted_transfer_syntaxes()
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, syntaxes)
    return ae


def start_listener(
    settings: Settings, database: Database, trigger: Callable[[str], None] | None = None
) -> ListenerHandle:
    """Recover the spool, then listen (non-blocking) and assemble studies in the background."""
    quiet_pynetdicom()
    # Receive each dataset straight to a file, so memory stays flat for huge instances.
    _config.STORE_RECV_CHUNKED_DATASET = True
    install_temp_file_hook()
    uids.install()  # association negotiation without thousands of regex checks
    spool = Spool(settings.resolved_spool_dir)
    records = records_possible(spool)
    log.info(
        "spool %s: each instance %s",
        spool.root,
        "of up to 1 MiB made durable in a record file made ahead (one write, one flush)"
        " and named later; a larger one linked, then fsynced with its new name (one flush)"
        if records
        else "linked, then fsynced with its new name (one flush)"
        if spool.names_durable_with_file
        else "fsynced, linked, then its folder fsynced",
    )
    if records:
        log.info(
            "record files written %s",
            "from the receiving thread with native AIO"
            if aio.available()
            else "by each association's writer thread (no native AIO here)",
        )
    recover(spool, database)
    # Temp files for the first burst are made before the first association.
    # On ext4 they are record files (``record.py``): an instance that fits is
    # then made durable by one write and one flush of the disk.
    temp_files = TempFiles(spool.incoming, settings.files_ahead, prepared=records)
    temp_files.fill()
    temp_files.start()
    receiver = Receiver(database, spool, settings.min_free_disk_mb, temp_files)
    ae = build_ae(settings)
    try:
        server = ae.make_server(
            (settings.listener_host, settings.listener_port),
            ssl_context=tls_context(settings),
            evt_handlers=handlers_for(receiver, allowed_calling_titles(settings)),
            server_class=ListenerServer,
            receiver=receiver,
            allowed_networks=settings.allowed_networks,
        )
    except BaseException:  # the port taken, a bad certificate: nothing left behind
        receiver.close()
        raise
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="prelim-listener"
    )
    thread.daemon = True
    thread.start()
    ae._servers.append(server)
    # Records get their spool names before a study is marked ready.
    assembler = Assembler(
        database,
        settings.stable_age_s,
        trigger,
        before_poll=functools.partial(receiver.settler.drain, settings.stable_age_s / 2),
    )
    assembler.start()
    port = int(server.server_address[1])
    log.info("listening as AE %s on %s:%d", settings.ae_title, settings.listener_host, port)
    return ListenerHandle(port, ae, cast(ListenerServer, server), assembler, thread)


def serve(settings: Settings, trigger: Callable[[str], None] | None = None) -> int:
    """Run the listener until SIGINT or SIGTERM; the exit code."""
    from prelim.runner import wait_for_signal

    database = open_database(settings)
    try:
        handle = start_listener(settings, database, trigger)
        freeze_start_up()
        print(
            f"prelim listener: AE {settings.ae_title} at {settings.listener_host}:{handle.port}",
            flush=True,
        )
        try:
            wait_for_signal()
        finally:
            handle.stop()
    finally:
        database.dispose()
    return 0
