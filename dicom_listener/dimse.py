"""C-ECHO and C-STORE served on the association's DUL thread, straight off the socket.

pynetdicom turns every received PDU into a state-machine event, completes the
DIMSE message on the DUL thread, hands it to the association thread, builds
request and response primitives and events there, and hands the answer back
to the DUL thread to send. For a sender that waits for each answer (DCMTK
``storescu``, most PACS) those hand-offs and objects cost more than the store
itself. In the established state (Sta6) a P-DATA-TF PDU only ever carries
more of the current DIMSE message (the standard's DT-2), so the DUL thread can
read it itself:

- command fragments are collected and the command set (always Implicit VR
  Little Endian, a dozen small elements) decoded by hand;
- a C-STORE-RQ on a storage context streams its data set fragments from the
  received PDU into the temp file (``incoming.py``), then the same
  ``Receiver.store`` as the stock handler decides the status, and the
  C-STORE-RSP is encoded by hand and sent at once;
- a C-ECHO-RQ on the Verification context is answered at once;
- anything else (another command, a command on a context of another kind) is
  handed to pynetdicom as the stock DT-2 would, command fragments included,
  and served by its association thread.

A fragment out of order (data before its command, a command inside a data
set, a context that was not accepted) is a protocol error: the association is
aborted (Evt19, as pynetdicom does for an invalid PDU) and the partial file
removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicom_listener import aio, statuses
from dicom_listener.incoming import DiskWriter, IncomingFile, prepare
from dicom_listener.receiver import StoreRequest

if TYPE_CHECKING:
    from dicom_listener.receiver import Receiver

log = logging.getLogger(__name__)

VERIFICATION = str(Verification)
_C_STORE_RQ, _C_STORE_RSP = 0x0001, 0x8001
_C_ECHO_RQ, _C_ECHO_RSP = 0x0030, 0x8030
_NO_DATA_SET = 0x0101
_COMMAND, _LAST = 0x01, 0x02

# AIO writes one association may have in flight: a record's chunks and its last write.
_AIO_DEPTH = 8

_PDV = struct.Struct(">LBB")  # item length, presentation context ID, message control header
_ELEMENT = struct.Struct("<HHL")  # group, element, length (Implicit VR Little Endian)
_US = struct.Struct("<H")
_PDU_HEADER = struct.Struct(">BBL")

# Command elements by (group << 16 | element); all in group 0000.
_AFFECTED_SOP_CLASS = 0x0002
_COMMAND_FIELD = 0x0100
_MESSAGE_ID = 0x0110
_MESSAGE_ID_RESPONDED = 0x0120
_PRIORITY = 0x0700
_DATA_SET_TYPE = 0x0800
_STATUS = 0x0900
_ERROR_COMMENT = 0x0902
_AFFECTED_SOP_INSTANCE = 0x1000


class ProtocolError(Exception):
    """The peer broke the DIMSE fragment rules (PS3.8 Annex E)."""


def decode_command(data: bytes | bytearray) -> dict[int, bytes]:
    """Group 0000 elements of an encoded command set, by element number."""
    elements: dict[int, bytes] = {}
    offset, end = 0, len(data)
    while offset < end:
        if offset + 8 > end:
            raise ProtocolError("command set ends inside an element header")
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        if group != 0 or length > end - offset:
            raise ProtocolError("command set element out of group 0000 or past its end")
        elements[element] = bytes(data[offset : offset + length])
        offset += length
    return elements


def _us(command: dict[int, bytes], element: int) -> int | None:
    value = command.get(element)
    if value is None or len(value) != 2:
        return None
    return int(_US.unpack(value)[0])


def _uid(command: dict[int, bytes], element: int) -> str:
    return command.get(element, b"").rstrip(b"\0 ").decode("ascii", "replace")


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return _ELEMENT.pack(0, element, len(value)) + value


def encode_response(
    command_field: int,
    message_id: int,
    status: int,
    sop_class: str,
    sop_instance: str | None,
    comment: str | None = None,
) -> bytes:
    """An encoded C-STORE-RSP or C-ECHO-RSP command set, group length first."""
    body = _element(_AFFECTED_SOP_CLASS, sop_class.encode("ascii"))
    body += _element(_COMMAND_FIELD, _US.pack(command_field))
    body += _element(_MESSAGE_ID_RESPONDED, _US.pack(message_id))
    body += _element(_DATA_SET_TYPE, _US.pack(_NO_DATA_SET))
    body += _element(_STATUS, _US.pack(status))
    if comment and status != statuses.SUCCESS:
        text = statuses.error_comment(comment).encode("ascii")
        body += _element(_ERROR_COMMENT, text + (b" " if len(text) % 2 else b""))
    if sop_instance:
        body += _element(_AFFECTED_SOP_INSTANCE, sop_instance.encode("ascii"))
    return _ELEMENT.pack(0, 0, 4) + struct.pack("<L", len(body)) + body


def command_pdus(context_id: int, command: bytes, max_pdu: int) -> list[bytes]:
    """P-DATA-TF PDUs carrying ``command``, fragmented to the peer's maximum PDU."""
    room = (max_pdu - 6) if max_pdu else len(command)
    room = max(room, 1)
    pdus = []
    for start in range(0, len(command), room):
        piece = command[start : start + room]
        header = _COMMAND | (_LAST if start + room >= len(command) else 0)
        item = _PDV.pack(len(piece) + 2, context_id, header) + piece
        pdus.append(_PDU_HEADER.pack(0x04, 0, len(item)) + item)
    return pdus


@dataclass
class _Store:
    context_id: int
    message_id: int
    request: StoreRequest
    file: IncomingFile | None
    # Why the temp file could not be written; the rest of the data set is then
    # read and dropped, and the answer is 0xA700.
    failure: str | None = None


class DataPath:
    """The DIMSE side of one association while it is established (see module doc)."""

    def __init__(self, dul: Any, receiver: Receiver) -> None:
        self.dul = dul
        self.receiver = receiver
        self._command = bytearray()
        self._command_pdvs: list[tuple[int, bytes]] = []
        self._store: _Store | None = None
        # Writes this association's temp files (one thread, chunks reused).
        self._writing = DiskWriter()
        # Record files are written from this thread with native AIO where
        # the kernel gives a context (``aio.py``); made with the first one.
        self._ring: aio.Ring | None = None
        self._ring_tried = False
        # The size of the last data set received here (the next is likely alike).
        self._last_size: int | None = None
        # Linked into the spool before their fsync, where that one fsync also
        # makes the name durable (``spool.py``).
        self._seal = receiver.spool.names_durable_with_file
        # The next data set's temp file when the listener has none made
        # ahead (``TempFiles``): made on a helper thread once our answer is
        # sent, while the sender reads it and prepares its next request
        # (creating a file can take a while: the file system looks for a free
        # inode). Made earlier, it would compete with the answer.
        self._spare: Future[IncomingFile] | None = None
        # The next data set's file, taken from those made ahead and opened
        # once the last answer was sent.
        self._opened: IncomingFile | None = None
        # pynetdicom serves the current message: its PDVs go to its DIMSE provider.
        self._passthrough = False

    def receive(self, pdu: bytearray | memoryview) -> None:
        """Act on one P-DATA-TF PDU (header included); a ProtocolError aborts.

        ``pdu`` may be a view into the socket's read-ahead buffer: nothing of it
        is kept once this returns (the temp file and the command copy theirs).
        """
        view = memoryview(pdu)
        offset, end = 6, len(pdu)
        while offset < end:
            if offset + 6 > end:
                raise ProtocolError("PDV item header past the end of the PDU")
            length, context_id, header = _PDV.unpack_from(pdu, offset)
            stop = offset + 4 + length
            if length < 2 or stop > end:
                raise ProtocolError("invalid PDV item length")
            self._fragment(context_id, header, view[offset + 6 : stop])
            offset = stop

    def _fragment(self, context_id: int, header: int, data: memoryview) -> None:
        if self._passthrough:
            self._hand_over([(context_id, bytes([header]) + data)])
            if header & _LAST and not header & _COMMAND:
                self._passthrough = False
            return
        if header & _COMMAND:
            if self._store is not None:
                raise ProtocolError("command fragment inside a data set")
            self._command += data
            self._command_pdvs.append((context_id, bytes([header]) + data))
            if header & _LAST:
                self._on_command(context_id)
            return
        store = self._store
        if store is None or context_id != store.context_id:
            raise ProtocolError("data set fragment without its command")
        if store.file is not None:
            try:
                store.file.write(data)
            except OSError as exc:
                self._failed(store, exc)
        if header & _LAST:
            self._store = None
            self._finish(store)

    def _on_command(self, context_id: int) -> None:
        encoded, pdvs = self._command, self._command_pdvs
        self._command, self._command_pdvs = bytearray(), []
        context = self.dul.assoc._accepted_cx.get(context_id)
        if context is None:
            raise ProtocolError(f"presentation context {context_id} was not accepted")
        command = decode_command(encoded)
        field = _us(command, _COMMAND_FIELD)
        message_id = _us(command, _MESSAGE_ID)
        has_data = _us(command, _DATA_SET_TYPE) != _NO_DATA_SET
        storage = context.abstract_syntax != VERIFICATION
        if field == _C_STORE_RQ and has_data and storage and message_id is not None:
            self._start_store(context, command, message_id)
        elif field == _C_ECHO_RQ and not has_data and not storage and message_id is not None:
            echo = encode_response(_C_ECHO_RSP, message_id, statuses.SUCCESS, VERIFICATION, None)
            self._send(context_id, echo)
        else:
            self._passthrough = has_data
            self._hand_over(pdvs)

    def _start_store(self, context: Any, command: dict[int, bytes], message_id: int) -> None:
        assoc = self.dul.assoc
        request = StoreRequest(
            sop_class_uid=_uid(command, _AFFECTED_SOP_CLASS),
            sop_instance_uid=_uid(command, _AFFECTED_SOP_INSTANCE),
            priority=_us(command, _PRIORITY),
            calling_ae_title=str(assoc.requestor.ae_title or "").strip() or None,
        )
        store = self._store = _Store(context.context_id, message_id, request, None)
        try:
            store.file = self._temp_file()
            store.file.write_file_meta(
                request.sop_class_uid, request.sop_instance_uid, str(context.transfer_syntax[0])
            )
        except OSError as exc:
            self._failed(store, exc)

    def _temp_file(self) -> IncomingFile:
        opened, self._opened = self._opened, None
        if opened is not None:
            return opened
        made = self._made_ahead()
        if made is not None:
            return made
        spare, self._spare = self._spare, None
        if spare is not None and spare.exception() is None:
            return spare.result()
        # None made yet, or it failed: this attempt reports why.
        return IncomingFile(self.receiver.spool.incoming, self._writing, seal=self._seal)

    def _made_ahead(self) -> IncomingFile | None:
        """The next file the listener made ahead, opened; None if none is left or it is gone."""
        folder = self.receiver.spool.incoming
        made = self.receiver.temp_files.take()
        if made is not None:
            try:
                return IncomingFile(
                    folder,
                    self._writing,
                    made=made,
                    seal=self._seal,
                    ring=self._aio_ring(),
                    expected=self._last_size,
                )
            except OSError:  # removed behind our back, say: drop it (a new one is made)
                with contextlib.suppress(OSError):
                    os.unlink(made)
        return None

    def _aio_ring(self) -> aio.Ring | None:
        if not self._ring_tried:
            self._ring_tried = True
            self._ring = aio.Ring.open(_AIO_DEPTH)
        return self._ring

    @staticmethod
    def _failed(store: _Store, exc: OSError) -> None:
        log.error(
            "instance %s refused: cannot write the spool (%s)",
            store.request.sop_instance_uid,
            exc.strerror,
        )
        store.failure = "cannot write the spool"
        if store.file is not None:
            try:
                store.file.discard()
            except OSError:
                pass
            store.file = None

    def _finish(self, store: _Store) -> None:
        request, file = store.request, store.file
        try:
            if file is not None:
                self._last_size = file.size
                try:
                    file.finish()
                except OSError as exc:
                    self._failed(store, exc)
                    file = None
            if file is None:
                status, comment = statuses.OUT_OF_RESOURCES, store.failure
            else:
                status, comment = self.receiver.store(
                    file.path,
                    request,
                    file.digest,
                    head=file.head,
                    size=file.size,
                    flushed=file.flushed,
                    ready=file.readable,
                    sealed=file.sealed,
                    record=file.record,
                    keep=file.keep,
                    progress=file.advance,
                )
        except Exception:
            log.exception("C-STORE failed for instance %s", request.sop_instance_uid)
            status, comment = statuses.HANDLER_FAILED, "internal error, see the listener's log"
        response = encode_response(
            _C_STORE_RSP,
            store.message_id,
            status,
            request.sop_class_uid,
            request.sop_instance_uid,
            comment,
        )
        # A stored file is in the spool, or a record the settler names; anything
        # left here is not stored. After a success only the temp file's own
        # resources are left to release, which can wait for the answer; a
        # refused data set is removed before its answer goes.
        stored = status == statuses.SUCCESS
        try:
            if file is not None and not stored:
                file.discard()
        finally:
            try:
                self._send(store.context_id, response)
            finally:
                if file is not None and stored:
                    file.discard()
        # The next data set's file is opened now, while the sender reads the
        # answer and prepares its next request: not on the way of its arrival.
        # Only when one is left: a take is what keeps the listener from making
        # more while it is busy, and the next command takes again anyway.
        temp_files = self.receiver.temp_files
        if self._opened is None and len(temp_files):
            self._opened = self._made_ahead()
        if self._opened is None and self._spare is None and len(temp_files) == 0:
            self._spare = prepare(self.receiver.spool.incoming, self._writing, self._seal)

    def _send(self, context_id: int, command: bytes) -> None:
        peer_max = int(self.dul.assoc.requestor.maximum_length or 0)
        for pdu in command_pdus(context_id, command, peer_max):
            self.dul.socket.send(pdu)

    def _hand_over(self, pdvs: list[tuple[int, bytes]]) -> None:
        # What pynetdicom's DT-2 does with a received P-DATA-TF.
        primitive = P_DATA()
        primitive._presentation_data_value_list = list(pdvs)  # its setter wants lists
        self.dul.assoc.dimse.receive_primitive(primitive)

    def close(self) -> None:
        """Drop the partial file of a data set cut off by the end of the association."""
        store, self._store = self._store, None
        if store is not None and store.file is not None:
            store.file.discard()
        spare, self._spare = self._spare, None
        if spare is not None and spare.exception() is None:
            spare.result().discard()
        opened, self._opened = self._opened, None
        if opened is not None:  # never written: the listener's again, for another association
            opened.close(keep=False)
            self.receiver.temp_files.give_back(opened.path)
        self._writing.close()
        if self._ring is not None:
            self._ring.close()
            self._ring = None
