"""Event-driven replacements for pynetdicom's two polling loops, per association.

pynetdicom 3.0 runs two threads per association, and both poll:

- the DUL reactor (``dul.py``) checks the socket with ``select(0)`` and, when
  nothing is there, sleeps 1 ms. Every PDU that lands while it sleeps waits, and
  so does every response the association thread hands it to send.
- the association reactor (``association.py``) sleeps 1 ms, then looks for a
  complete DIMSE message without waiting.

On a sender that waits for each C-STORE response (DCMTK ``storescu``) those
sleeps add up to several ms per instance, and the idle wake-ups (2000 a second
per association) compete for the GIL with the threads doing real work.

Here the DUL blocks in ``select`` on the socket and a wake-up pipe (written
when a primitive is queued for sending), and the DIMSE provider blocks on its
message queue, woken when a message is complete or the DUL has an ACSE
primitive (release, abort) for the association thread. Both waits are bounded
(``_POLL_S``) so the ARTIM, idle and kill checks still run. Everything else
(the state machine, ACSE, timers, events) is pynetdicom's own.

Once the association is established (Sta6), a P-DATA-TF PDU is read into one
buffer and given to the association's ``DataPath`` (``dimse.py``), which
serves C-STORE and C-ECHO on this thread and hands anything else to
pynetdicom. In the other states, P-DATA-TF PDUs are decoded without copying
(each PDV's data a memoryview into the received PDU; stock pynetdicom copies
each 128 KB PDU four times). Both only when no one listens to the raw-PDU
events (EVT_DATA_RECV, EVT_PDU_RECV), which need the stock objects.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import struct
import threading
import time
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import P_DATA

from dicom_listener.dimse import DataPath, ProtocolError

log = logging.getLogger(__name__)

# Upper bound of one wait: how late an expired ARTIM or idle timer is noticed.
_POLL_S = 0.05
_P_DATA_TF = 0x04
_PDV_HEADER = struct.Struct(">LB")
_PDU_HEADER = struct.Struct(">BBL")
_PDU_TYPES = frozenset(range(0x01, 0x08))
# Bytes the socket reads ahead per association (transport.FastSocket); a PDU
# that fits is served from there without a copy.
READ_AHEAD = 1 << 20
# The largest PDU accepted when the listener's maximum PDU is 0 ("unlimited").
_UNLIMITED_PDU = 256 << 20


class _WakingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that calls ``wake`` after each put."""

    def __init__(self, wake: Any) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class _PData:
    """A decoded P-DATA-TF PDU whose PDVs are memoryviews into the received bytes."""

    __slots__ = ("pdvs",)

    def __init__(self, pdu: bytearray) -> None:
        view = memoryview(pdu)
        pdvs = []
        offset, end = 6, len(pdu)
        while offset < end:
            length, context_id = _PDV_HEADER.unpack_from(pdu, offset)
            if length < 2 or offset + 4 + length > end:
                raise ValueError("invalid PDV item length")
            pdvs.append((context_id, view[offset + 5 : offset + 4 + length]))
            offset += 4 + length
        self.pdvs = pdvs

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        # The public setter insists on bytes; decode_msg only indexes and
        # slices the data and writes it, which a memoryview does without a copy.
        primitive._presentation_data_value_list = self.pdvs  # type: ignore[assignment]
        return primitive


class FastDUL(DULServiceProvider):
    """pynetdicom's DUL with a blocking wait instead of 1 ms sleeps."""

    def __init__(self, assoc: Any) -> None:
        super().__init__(assoc)
        # The wake-up pipe lives while the reactor thread runs (-1: none). The
        # lock keeps a late write off a closed descriptor whose number the
        # process may have reused.
        self._wake_r = self._wake_w = -1
        self._wake_lock = threading.Lock()
        self.to_user_queue = _WakingQueue(self._wake_association)
        self.datapath: DataPath | None = None

    def _wake_association(self) -> None:
        # The association thread waits on the DIMSE queue; (None, None) is what
        # it gets on a timeout anyway, so it then looks at the ACSE primitives.
        self.assoc.dimse.msg_queue.put((None, None))

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"\0")
                except BlockingIOError:  # already full of wake-ups
                    pass

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def _raw_pdus_watched(self) -> bool:
        return bool(
            self.assoc.get_handlers(evt.EVT_DATA_RECV) or self.assoc.get_handlers(evt.EVT_PDU_RECV)
        )

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        if bytestream[0] == _P_DATA_TF and not self._raw_pdus_watched():
            return _PData(bytestream), "Evt10"
        return super()._decode_pdu(bytestream)

    def _pdu_limit(self) -> int:
        # The peer must keep P-DATA within our maximum; other PDUs are small.
        # A claimed length past this is an attack or garbage, not a buffer to allocate.
        ours = int(self.assoc.acceptor.maximum_length or 0)
        return max(ours, 1 << 20) if ours else _UNLIMITED_PDU

    def _read_pdu_data(self) -> None:
        # pynetdicom's _read_pdu_data (3.0.4), reading into one buffer, with
        # P-DATA-TF in Sta6 served by the DataPath instead of the state machine.
        sock = self.socket
        pdu: bytearray | memoryview | None
        try:
            header = sock.peek(6)  # type: ignore[union-attr]
            if header is None:
                raise ConnectionError("closed")
            pdu_type, _, length = _PDU_HEADER.unpack(header)
            if pdu_type not in _PDU_TYPES or length > self._pdu_limit():
                log.error("invalid PDU received (type 0x%02X, %d bytes)", pdu_type, length)
                self.event_queue.put("Evt19")
                return
            if 6 + length <= READ_AHEAD:
                # A view into the socket's read-ahead buffer, valid until the next read.
                pdu = sock.take(6 + length)  # type: ignore[union-attr]
                if pdu is None:
                    raise ConnectionError("closed inside a PDU")
            else:
                pdu = bytearray(6 + length)
                if sock.recv_into(pdu, 0) != len(pdu):  # type: ignore[union-attr]
                    raise ConnectionError("closed inside a PDU")
        except (OSError, TimeoutError):
            self.event_queue.put("Evt17")
            return
        datapath = self.datapath
        if (
            pdu_type == _P_DATA_TF
            and datapath is not None
            and self.state_machine.current_state == "Sta6"
            and not self._raw_pdus_watched()
        ):
            try:
                datapath.receive(pdu)
            except ProtocolError as exc:
                log.error("aborting the association: %s", exc)
                datapath.close()
                self.event_queue.put("Evt19")
            return
        if isinstance(pdu, memoryview):
            pdu = bytearray(pdu)  # pynetdicom keeps what it decodes
        try:
            decoded, event = self._decode_pdu(pdu)
        except Exception:
            log.exception("unable to decode the received PDU")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(decoded)

    def _wait(self) -> None:
        """Block until the socket is readable, a primitive is queued, or _POLL_S."""
        sock = getattr(self.socket, "socket", None)
        try:
            if sock is None or sock.fileno() < 0:
                raise ValueError("no socket")
            select.select([sock, self._wake_r], [], [], _POLL_S)
        except (OSError, ValueError):
            time.sleep(0.001)  # closing down: the stock loop's pace
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def run_reactor(self) -> None:
        # pynetdicom's run_reactor (3.0.4) with its idle sleep replaced by _wait.
        with self._wake_lock:
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self._run()
        finally:
            if self.datapath is not None:
                self.datapath.close()
            with self._wake_lock:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1

    def _run(self) -> None:
        self._idle_timer.start()
        self.assoc._dul_ready.set()
        while not self._kill_thread:
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            busy = True
            try:
                # Either send one queued primitive or read one PDU per turn.
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
                else:
                    busy = False
            except Exception:
                log.exception("DUL reactor failed, aborting the association")
                self._abort_hard()
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                # After work, look again at once: the next PDU may already be
                # here (or sit decrypted in the TLS buffer, where select cannot
                # see it). Only an idle turn waits.
                if not busy:
                    self._wait()
                continue
            self.state_machine.do_action(event)

    def _abort_hard(self) -> None:
        # As pynetdicom does: bypass the state machine, send A-ABORT, stop both reactors.
        abort = A_ABORT_RQ()
        abort.source = 0x02
        abort.reason_diagnostic = 0x00
        try:
            if self.socket is not None:
                self.socket.send(abort.encode())
        except OSError:
            pass
        finally:
            self.assoc.is_aborted = True
            self.assoc.is_established = False
            self.assoc._kill = True
            self._kill_thread = True


class WaitingDIMSE(DIMSEServiceProvider):
    """Lets the association reactor wait for a message instead of polling.

    The reactor calls ``get_msg(block=False)`` after a 1 ms sleep, in a loop;
    waiting here (woken by a message, or by FastDUL for release and abort)
    turns most of those loops into one blocking wait. A (None, None) wake-up
    reads as "no message"; fine for an SCP that never sends requests of its own
    (C-STORE, C-ECHO), as pynetdicom's blocking get_msg callers are SCU paths.
    """

    def get_msg(self, block: bool = False) -> Any:
        if block:
            return super().get_msg(block)
        try:
            return self.msg_queue.get(timeout=_POLL_S)
        except queue.Empty:
            return None, None


def make_event_driven(assoc: Any) -> None:
    """Give a new (not yet started) acceptor association the event-driven loops."""
    old = assoc.dul
    dul = FastDUL(assoc)
    dul.socket = old.socket
    # The socket wrapper already queued its T-CONNECT indication (Evt5) there.
    dul.event_queue = old.event_queue
    dul.to_provider_queue = old.to_provider_queue
    dul._idle_timer.timeout = old._idle_timer.timeout
    dul.artim_timer.timeout = old.artim_timer.timeout
    assoc.dul = dul
    assoc.dimse.__class__ = WaitingDIMSE
