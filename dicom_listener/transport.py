"""The listener's TCP side: accepting, TLS, source screening, fast reads, temp files.

pynetdicom's acceptor is kept; a few of its seams are used:

- ``server_class``: TCP_NODELAY on every accepted socket, and the TLS handshake
  moved off the accept loop into the connection's own thread, so a slow or
  hostile client cannot stall other senders.
- the request handler: a source address outside the allowlist is refused with
  an A-ASSOCIATE-RJ (rejected-permanent, service-user, no-reason-given: the
  standard has no "address not allowed" reason, and "calling AE title not
  recognised" would point the sender's admin at the wrong setting).
- the socket: it always closes on shutdown, and reads ahead into one buffer,
  handing out each PDU that fits as a view into it (one ``recv`` for what the
  kernel holds, instead of 4 KB ``recv`` calls).
- the association's DUL and DIMSE providers: event-driven (``reactor.py``).
- the accept loop's housekeeping: pynetdicom collects all of the process's
  garbage every 60 turns of the loop (every 12 s when idle, or every 60
  associations). That full collection took 90-114 ms here, holding the GIL,
  so every transfer under way stalled for that long. Here it runs only while
  no association is active; and once the listener has started, the objects
  made at start-up are frozen out of the collector's reach
  (``freeze_start_up``), so a full collection, the interpreter's own
  included, takes a few milliseconds.
- the chunked-receive temp file: created in the spool's ``.incoming`` folder
  (same file system, so storing is a link) and hashed while it is written
  (``incoming.py``), for the messages pynetdicom itself serves; C-STORE and
  C-ECHO are served on the DUL thread (``dimse.py``).
"""

from __future__ import annotations

import gc
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path
from tempfile import NamedTemporaryFile
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import dimse_messages, evt
from pynetdicom.acse import ACSE
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_listener.dimse import DataPath
from dicom_listener.incoming import IncomingFile
from dicom_listener.reactor import READ_AHEAD, make_event_driven

if TYPE_CHECKING:
    from dicom_listener.receiver import Receiver

log = logging.getLogger(__name__)

_READ_PIECE = 1 << 20
_install_lock = threading.Lock()


def _incoming_temp_file(*args: Any, **kwargs: Any) -> Any:
    # Called by pynetdicom on the association's reactor thread when a C-STORE
    # dataset starts; that thread knows its association, which knows our folder.
    assoc = getattr(threading.current_thread(), "assoc", None)
    folder = getattr(assoc, "prelim_incoming", None)
    if isinstance(folder, Path):
        return IncomingFile(folder)
    return NamedTemporaryFile(*args, **kwargs)  # noqa: SIM115


def install_temp_file_hook() -> None:
    """Make pynetdicom's chunked receive write into our spool (idempotent)."""
    with _install_lock:
        dimse_messages.NamedTemporaryFile = _incoming_temp_file  # type: ignore[attr-defined]


def freeze_start_up() -> None:
    """Collect once, then keep every object alive now out of later collections.

    Called once the listener runs (``service.serve``, ``runner.run_all``): the
    100 000-odd objects of the imported libraries, settings and engines live
    as long as the process, and a full collection that walks them took about
    100 ms holding the GIL. Garbage made later (ended associations, say) is
    collected as before.
    """
    gc.collect()
    gc.freeze()


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
        # The 1 MB read-ahead buffer goes now, not with the association's
        # reference cycles at the next full collection.
        self._rx = self._rx_view = None
        self._lo = self._hi = 0

    # Read-ahead: bytes received from the socket but not yet taken are
    # ``_rx[_lo:_hi]``. One recv takes whatever the kernel holds (often several
    # PDUs at once), instead of two or more calls per PDU; a PDU that fits is
    # then handed out as a view into this buffer, without a copy.
    _rx: bytearray | None = None
    _rx_view: memoryview | None = None
    _lo = 0
    _hi = 0

    @property
    def ready(self) -> bool:
        """Data to read: already read ahead, or waiting on the socket (pynetdicom's check)."""
        if self._hi > self._lo:
            return True
        return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]

    def _buffer(self) -> tuple[bytearray, memoryview]:
        if self._rx is None or self._rx_view is None:
            self._rx = bytearray(READ_AHEAD)
            self._rx_view = memoryview(self._rx)
        return self._rx, self._rx_view

    def peek(self, size: int) -> memoryview | None:
        """The next ``size`` bytes (at most READ_AHEAD), not taken; None at end of stream.

        The view is valid until the next read from this socket.
        """
        rx, view = self._buffer()
        while self._hi - self._lo < size:
            if self._lo == self._hi:
                self._lo = self._hi = 0
            elif len(rx) - self._lo < size:
                # Move the partial bytes to the front (a copy: the two ranges overlap).
                held = self._hi - self._lo
                rx[:held] = bytes(view[self._lo : self._hi])
                self._lo, self._hi = 0, held
            sock = cast(socket.socket, self.socket)
            got = sock.recv_into(view[self._hi :], len(rx) - self._hi)
            if not got:
                return None
            self._hi += got
        return view[self._lo : self._lo + size]

    def take(self, size: int) -> memoryview | None:
        """Like ``peek``, and the bytes are taken."""
        got = self.peek(size)
        if got is not None:
            self._lo += size
        return got

    def recv(self, nr_bytes: int) -> bytearray:
        buffer = bytearray(nr_bytes)
        done = self.recv_into(buffer, 0)
        return buffer if done == nr_bytes else buffer[:done]

    def recv_into(self, buffer: bytearray, start: int) -> int:
        """Fill ``buffer`` from ``start``; the bytes it holds (less only at end of stream)."""
        view = memoryview(buffer)
        done, size = start, len(buffer)
        if self._hi > self._lo and self._rx_view is not None:
            held = min(self._hi - self._lo, size - done)
            view[done : done + held] = self._rx_view[self._lo : self._lo + held]
            self._lo += held
            done += held
        sock = cast(socket.socket, self.socket)
        while done < size:
            got = sock.recv_into(view[done:], min(size - done, _READ_PIECE))
            if not got:
                break
            done += got
        return done


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
        receiver = self.server.receiver
        assoc.prelim_incoming = receiver.spool.incoming  # type: ignore[attr-defined]
        assoc.dul.datapath = DataPath(assoc.dul, receiver)  # type: ignore[attr-defined]
        host = str(self.client_address[0])
        if not self.server.allows(host):
            log.warning("association from %s refused: address not allowed", host)
            assoc.prelim_address_refused = True  # type: ignore[attr-defined]
            assoc.acse = _RefusingACSE(assoc)
        return assoc


class SharedContexts(list[Any]):
    """The server's presentation contexts, given as they are to each association.

    pynetdicom deep-copies them for every association it accepts, which for
    the storage SOP classes we support (about 150 contexts, each UID made
    and validated again) took 30-40 ms of the listener's CPU per association:
    two thirds of a one-instance association's time. Negotiation only reads
    them (``negotiate_as_acceptor`` builds new contexts for its result), so
    the copy is a list of the same objects.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[Any]:
        return list(self)


class ListenerServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with our socket handling."""

    daemon_threads = True

    def __init__(
        self,
        *args: Any,
        receiver: Receiver,
        allowed_networks: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        self.receiver = receiver
        self.incoming = receiver.spool.incoming
        self.networks = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
        kwargs["request_handler"] = ListenerRequestHandler
        super().__init__(*args, **kwargs)
        self.contexts = SharedContexts(self.contexts)

    def service_actions(self) -> None:
        # pynetdicom's: a full collection every 60 turns (module docstring);
        # here only when it stalls no transfer. A busy listener still has the
        # interpreter's own collections, which find the same garbage.
        self._gc[0] += 1
        if self._gc[0] >= self._gc[1] and not self.ae.active_associations:
            self._gc[0] = 0
            gc.collect()

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
