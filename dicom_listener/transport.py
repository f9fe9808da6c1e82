"""The listener's TCP side: accepting, TLS, source screening, fast reads, temp files.

pynetdicom's acceptor is kept; a few of its seams are used:

- ``server_class``: TCP_NODELAY on every accepted socket, and the TLS handshake
  moved off the accept loop into the connection's own thread, so a slow or
  hostile client cannot stall other senders.
- the request handler: a source address outside the allowlist is refused with
  an A-ASSOCIATE-RJ (rejected-permanent, service-user, no-reason-given: the
  standard has no "address not allowed" reason, and "calling AE title not
  recognised" would point the sender's admin at the wrong setting).
- the socket: it always closes on shutdown, and reads a PDU with ``recv_into``
  in large pieces instead of 4 KB ``recv`` calls.
- the association's DUL and DIMSE providers: event-driven (``reactor.py``).
- the chunked-receive temp file: created in the spool's ``.incoming`` folder
  (same file system, so storing is a rename) and hashed while it is written
  (a large one on a helper thread).
"""

from __future__ import annotations

import ctypes
import hashlib
import ipaddress
import logging
import queue
import socket
import ssl
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import Any, BinaryIO, cast

from pynetdicom import dimse_messages, evt
from pynetdicom.acse import ACSE
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_listener.reactor import make_event_driven

log = logging.getLogger(__name__)

_READ_PIECE = 1 << 20
_install_lock = threading.Lock()


def _load_sync_file_range() -> Any:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return function


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
# Start writing to disk every this many bytes while the dataset still arrives.
_WRITEBACK_STEP = 2 << 20
# Hash this much on the DUL thread before handing the rest to a helper thread.
_HASH_INLINE = 1 << 20


class _Hasher:
    """SHA-256 of a stream of buffers, on a helper thread once the stream is large.

    The first ``_HASH_INLINE`` bytes are hashed on the caller's thread (a CT
    slice never pays for a thread); after that each buffer is queued, in
    order, to a helper thread, and hashlib releases the GIL on large buffers,
    so the hashing overlaps the DUL thread's next reads and writes. Buffers
    are kept as they are, not copied: the caller must not change them later
    (each received PDU is a fresh buffer).
    """

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self._inline = 0
        self._queue: queue.SimpleQueue[bytes | memoryview | None] | None = None
        self._thread: threading.Thread | None = None

    def update(self, data: bytes | memoryview) -> None:
        if self._queue is not None:
            self._queue.put(data)
            return
        self._digest.update(data)
        self._inline += len(data)
        if self._inline >= _HASH_INLINE:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, name="prelim-sha256", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        assert self._queue is not None
        while (data := self._queue.get()) is not None:
            self._digest.update(data)

    def finish(self) -> None:
        """Wait for the queued buffers (idempotent); no update may follow."""
        if self._thread is not None:
            assert self._queue is not None
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        self.finish()
        return self._digest.hexdigest()


class HashingFile:
    """A write-only temp file that keeps the SHA-256 of what was written.

    It also asks the kernel to start writing each 2 MB to disk as soon as it is
    written (sync_file_range, asynchronous), so the disk works while the rest of
    the dataset arrives and the fsync before the answer only waits for the tail.
    The hash of a large dataset runs on a helper thread (``_Hasher``).
    """

    def __init__(self, folder: Path) -> None:
        self.name = str(folder / f"rx-{uuid.uuid4().hex}.part")
        self.file: BinaryIO = open(self.name, "xb", buffering=0)  # noqa: SIM115
        self._digest = _Hasher()
        self._written = 0
        self._flushed = 0

    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        count = 0
        while count < len(view):
            count += self.file.write(view[count:]) or 0
        # Hashed after the write: what is hashed is exactly what the file got.
        self._digest.update(view)
        self._written += count
        if _sync_file_range is not None and self._written - self._flushed >= _WRITEBACK_STEP:
            # A hint only: an error here shows again, and counts, at the fsync.
            _sync_file_range(
                self.file.fileno(),
                self._flushed,
                self._written - self._flushed,
                _SYNC_FILE_RANGE_WRITE,
            )
            self._flushed = self._written
        return count

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self._digest.finish()


def _incoming_temp_file(*args: Any, **kwargs: Any) -> Any:
    # Called by pynetdicom on the association's reactor thread when a C-STORE
    # dataset starts; that thread knows its association, which knows our folder.
    assoc = getattr(threading.current_thread(), "assoc", None)
    folder = getattr(assoc, "prelim_incoming", None)
    if isinstance(folder, Path):
        return HashingFile(folder)
    return NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115


def install_temp_file_hook() -> None:
    """Make pynetdicom's chunked receive write into our spool (idempotent)."""
    with _install_lock:
        dimse_messages.NamedTemporaryFile = _incoming_temp_file  # type: ignore[attr-defined]


class FastSocket(AssociationSocket):
    def _shutdown_socket(self) -> None:
        # pynetdicom skips close() when shutdown() fails (the peer is already
        # gone), leaking one descriptor per dropped connection.
        sock = self.socket
        if sock is None:
            return
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        done = 0
        while done < nr_bytes:
            got = sock.recv_into(view[done:], min(nr_bytes - done, _READ_PIECE))
            if not got:
                del view
                return buffer[:done]
            done += got
        return buffer


class _RefusingACSE(ACSE):
    """Answers every association request with A-ASSOCIATE-RJ (1, 1, 1)."""

    def _negotiate_as_acceptor(self) -> None:
        primitive = self.requestor.primitive
        self.requestor.ae_title = primitive.calling_ae_title if primitive else ""
        self.send_reject(0x01, 0x01, 0x01)
        evt.trigger(self.assoc, evt.EVT_REJECTED, {})
        self.assoc.kill()


class ListenerRequestHandler(RequestHandler):
    server: ListenerServer

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        # Same socket, faster reads: only the class of pynetdicom's wrapper changes.
        assoc.dul.socket.__class__ = FastSocket
        # Blocking waits instead of pynetdicom's 1 ms polling loops (reactor.py).
        make_event_driven(assoc)
        # Our attributes on pynetdicom's object, read by our handlers.
        assoc.prelim_incoming = self.server.incoming  # type: ignore[attr-defined]
        host = str(self.client_address[0])
        if not self.server.allows(host):
            log.warning("association from %s refused: address not allowed", host)
            assoc.prelim_address_refused = True  # type: ignore[attr-defined]
            assoc.acse = _RefusingACSE(assoc)
        return assoc


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with our socket handling."""

    daemon_threads = True

    def __init__(
        self,
        *args: Any,
        incoming: Path,
        allowed_networks: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        self.incoming = incoming
        self.networks = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
        kwargs["request_handler"] = ListenerRequestHandler
        super().__init__(*args, **kwargs)

    def allows(self, host: str) -> bool:
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = cast(socket.socket, self.socket).accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context:
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, address

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(30)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ValueError) as exc:
                log.warning("TLS handshake with %s failed: %s", client_address[0], exc)
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("connection from %s failed", client_address[0])
