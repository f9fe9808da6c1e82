"""The temp file a data set is received into: Part 10 framing, hash, early writeback.

A received data set becomes ``<spool>/.incoming/rx-<random>.part``: the
128-byte preamble, ``DICM``, the File Meta Information (as pynetdicom writes
it), then the data set bytes exactly as they arrived. While it is written:

- its SHA-256 is kept, of exactly what the file got; past the first MB the
  hashing runs on a helper thread, so a large instance is hashed while the
  rest of it arrives (hashlib releases the GIL on large buffers);
- the kernel is asked to start writing each few MB to disk as soon as it is
  written (``sync_file_range``, asynchronous), so the fsync before the answer
  only waits for the tail;
- its first bytes stay in memory, so the header check does not read them back.

When the last byte is written, ``finish`` starts the file's fsync on a helper
thread, so the disk flushes while the caller checks the header and indexes
the instance (storing waits for it with ``flushed`` before moving the file).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import queue
import struct
import threading
import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from dicom_listener.spool import in_background


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
# Start writing to disk every this many bytes while the data set still arrives.
WRITEBACK_STEP = 256 * 1024
# Hash this much on the writer's thread before handing the rest to a helper thread.
_HASH_INLINE = 1 << 20
# Received bytes that may wait for the hash thread.
_MAX_QUEUED = 32 << 20
# Bytes of the file kept in memory for the header check.
HEAD_BYTES = 64 * 1024
def prepare(folder: Path, hashing: HashWorker | None = None) -> Future[IncomingFile]:
    """Create the next temp file on a helper thread (creating one waits on the journal)."""
    return in_background(IncomingFile, folder, hashing)


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class HashWorker:
    """One long-lived thread hashing the buffers of one association's data sets, in order.

    The receiving thread only queues each buffer (hashlib releases the GIL on
    large buffers, so the hash runs on the other core while the next PDU
    arrives). Buffers are kept as they are, not copied: the caller must not
    change them later (each received PDU is a fresh buffer). At most
    ``_MAX_QUEUED`` bytes wait; past that the receiving thread waits too, so a
    starved hash thread cannot make memory grow with the instance.
    """

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._room = threading.Condition()
        self._queued = 0

    def update(self, digest: Any, data: bytes | memoryview) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prelim-sha256", daemon=True)
            self._thread.start()
        size = len(data)
        with self._room:
            while self._queued and self._queued + size > _MAX_QUEUED:
                self._room.wait()
            self._queued += size
        self._queue.put((digest, data))

    def wait(self) -> None:
        """Return once everything queued so far is hashed."""
        if self._thread is not None:
            done = threading.Event()
            self._queue.put((None, done))
            done.wait()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            digest, data = item
            if digest is None:
                data.set()
                continue
            digest.update(data)
            with self._room:
                self._queued -= len(data)
                self._room.notify()


class _Hasher:
    """SHA-256 of a stream of buffers, off the receiving thread where it can be.

    With a ``HashWorker`` every buffer goes to it. Without one, the first
    ``_HASH_INLINE`` bytes are hashed on the caller's thread and the rest on a
    helper thread of this stream's own.
    """

    def __init__(self, worker: HashWorker | None = None) -> None:
        self._digest = hashlib.sha256()
        self._inline = 0
        self._worker = worker
        self._own: HashWorker | None = None
        self._finished = False

    def update(self, data: bytes | memoryview) -> None:
        if self._worker is not None:
            self._worker.update(self._digest, data)
            return
        if self._own is not None:
            self._own.update(self._digest, data)
            return
        self._digest.update(data)
        self._inline += len(data)
        if self._inline >= _HASH_INLINE:
            self._own = HashWorker()

    def finish(self) -> None:
        """Wait for the queued buffers (idempotent); no update may follow."""
        if self._finished:
            return
        self._finished = True
        if self._worker is not None:
            self._worker.wait()
        if self._own is not None:
            self._own.wait()
            self._own.close()

    def hexdigest(self) -> str:
        self.finish()
        return self._digest.hexdigest()


def _ui(tag: int, value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\0"
    return struct.pack("<HH2sH", 0x0002, tag, b"UI", len(raw)) + raw


def file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group, as pynetdicom writes them."""
    version = PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
    if len(version) % 2:
        version += b" "
    elements = (
        struct.pack("<HH2sHL", 0x0002, 0x0001, b"OB", 0, 2)
        + b"\x00\x01"
        + _ui(0x0002, sop_class)
        + _ui(0x0003, sop_instance)
        + _ui(0x0010, transfer_syntax)
        + _ui(0x0012, PYNETDICOM_IMPLEMENTATION_UID)
        + struct.pack("<HH2sH", 0x0002, 0x0013, b"SH", len(version))
        + version
    )
    length = struct.pack("<HH2sHL", 0x0002, 0x0000, b"UL", 4, len(elements))
    return b"\0" * 128 + b"DICM" + length + elements


class IncomingFile:
    """A write-only temp file in ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path, hashing: HashWorker | None = None) -> None:
        self.path = folder / f"rx-{uuid.uuid4().hex}.part"
        self.name = str(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._digest = _Hasher(hashing)
        self._head = bytearray()
        self.size = 0
        self._flushed = 0
        self._sync: Future[None] | None = None

    @property
    def file(self) -> IncomingFile:
        # pynetdicom's chunked receive flushes ``.file`` after each write.
        return self

    def flush(self) -> None:
        """Nothing is buffered here."""

    @property
    def head(self) -> bytes:
        """The file's first bytes (at most HEAD_BYTES)."""
        return bytes(self._head)

    def write_file_meta(self, sop_class: str, sop_instance: str, transfer_syntax: str) -> None:
        self.write(file_meta(sop_class, sop_instance, transfer_syntax))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        # Hashed after the write: what is hashed is exactly what the file got.
        self._digest.update(view)
        if len(self._head) < HEAD_BYTES:
            self._head += view[: HEAD_BYTES - len(self._head)]
        self.size += done
        if _sync_file_range is not None and self.size - self._flushed >= WRITEBACK_STEP:
            # A hint only: an error here shows again, and counts, at the fsync.
            _sync_file_range(
                self._fd, self._flushed, self.size - self._flushed, _SYNC_FILE_RANGE_WRITE
            )
            self._flushed = self.size
        return done

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def finish(self) -> None:
        """No more writes: start the fsync (and close) on a helper thread."""
        if self._fd >= 0 and self._sync is None:
            fd, self._fd = self._fd, -1
            self._sync = in_background(_fsync_and_close, fd)

    def flushed(self) -> None:
        """Wait until the file is on disk; raises the fsync's OSError."""
        self.finish()
        assert self._sync is not None
        self._sync.result()

    def close(self) -> None:
        """Close the descriptor and wait for the hash (idempotent)."""
        try:
            if self._sync is not None:
                self._sync.exception()  # wait; an error was or will be reported by flushed()
            elif self._fd >= 0:
                fd, self._fd = self._fd, -1
                os.close(fd)
        finally:
            self._digest.finish()

    def discard(self) -> None:
        """Close, and remove the file unless it was moved away (stored)."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
