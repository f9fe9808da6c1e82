"""The temp file a data set is received into: Part 10 framing, direct writes, hash.

A received data set becomes ``<spool>/.incoming/rx-<random>.part``: the
128-byte preamble, ``DICM``, the File Meta Information (as pynetdicom writes
it), then the data set bytes exactly as they arrived. The receiving thread
only copies each fragment into a page-aligned 256 KB chunk; full chunks go
down a pipeline of two threads per association (``DiskWriter``):

- a writer thread writes each chunk with direct I/O (``O_DIRECT``), straight
  from the chunk to the disk, while the rest of the data set still arrives. A
  buffered file makes the kernel copy every page into its cache and write it
  back page by page at the fsync; on the disk we measured, a durable 10 MB
  instance took 26 ms that way and 6 ms written directly (``bench/RESULTS.md``).
  The last chunk is padded to the alignment and the file cut back to its true
  length. A file system that refuses direct I/O (at the open, or for one
  write) gets the same chunks through the page cache, each followed by a
  request to start writing it back (``sync_file_range``);
- at the same time a hash thread adds the same chunk to the file's digest
  (BLAKE3, ``fingerprint.py``; it releases the GIL), so what is hashed is
  exactly what is written. The first MB is hashed on the receiving thread
  itself, which for a small instance is sooner than a hand-off.
  When both are done with it the chunk goes back to be filled again. An
  association owns at most ``_DIRECT_DEPTH`` chunks: when the disk or the
  hash falls behind, the receiving thread waits, so memory stays flat
  whatever the instance's size.

The file's first bytes also stay in memory, so the header check does not read
them back. ``finish`` hands the last chunk to the writer thread, which then
cuts the file to its length and fsyncs it (by then mostly its metadata), while
the caller checks the header (``readable`` waits for the bytes, if it must
read the file) and prepares the index; storing waits with ``flushed`` before
moving the file.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import queue
import struct
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from dicom_listener import fingerprint
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

_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
# Bytes of the file kept in memory for the header check.
HEAD_BYTES = 64 * 1024
# Direct I/O: buffer addresses, file offsets and lengths are multiples of this
# (the page size, a multiple of every logical block size Linux supports).
ALIGNMENT = mmap.PAGESIZE
# Bytes per write: large enough for the disk's full speed, small enough that a
# CT slice's first chunk is on disk before its last PDU arrives.
CHUNK = 256 * 1024
# The first bytes of a file hashed on the receiving thread (see DiskWriter.submit).
HASH_INLINE = 1 << 20
# Chunks one association may have filled, being written or being hashed.
_DIRECT_DEPTH = 16
_O_DIRECT = getattr(os, "O_DIRECT", 0)


def prepare(folder: Path, writer: DiskWriter | None = None) -> Future[IncomingFile]:
    """Create the next temp file on a helper thread (creating one waits on the journal)."""
    return in_background(IncomingFile, folder, writer)


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class DiskWriter:
    """The writer and hash threads of one association's temp files (module doc).

    Each thread takes the chunks in the order they are submitted; one file
    is written at a time. The threads start with the first chunk.
    """

    def __init__(self, depth: int = _DIRECT_DEPTH) -> None:
        self._depth = depth
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._hashes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        self._made: list[mmap.mmap] = []
        self._threads: list[threading.Thread] = []
        # Chunks that one of the two threads is done with (by id).
        self._busy: set[int] = set()
        self._busy_lock = threading.Lock()

    def buffer(self) -> mmap.mmap:
        """An empty chunk to fill (waits while all are in use)."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        if len(self._made) < self._depth:
            made = mmap.mmap(-1, CHUNK)
            self._made.append(made)
            return made
        return self._free.get()

    def release(self, chunk: mmap.mmap) -> None:
        """Give back a chunk that is not submitted."""
        self._free.put(chunk)

    def submit(
        self, file: IncomingFile, chunk: mmap.mmap, offset: int, length: int, data: int
    ) -> None:
        """Write ``chunk[:length]`` at ``offset`` of ``file`` and hash ``chunk[:data]``.

        ``data`` is less than ``length`` only for a last chunk padded to the alignment.
        The file's first ``HASH_INLINE`` bytes are hashed here, on the caller's
        thread: for a CT slice, waiting for the hash thread to get the GIL
        cost more than the hash.
        """
        if not self._threads:
            self._start()
        if offset < HASH_INLINE:
            with memoryview(chunk) as view:
                file._digest.update(view[:data])
            self._writes.put((file, chunk, offset, length, True))
            return
        file._hash_queued = True
        self._writes.put((file, chunk, offset, length, False))
        self._hashes.put((file, chunk, data))

    def written(self) -> None:
        """Return once every chunk submitted so far is written (or failed)."""
        self._reach(self._writes)

    def call(self, function: Callable[..., None], *args: Any) -> None:
        """Run ``function(*args)`` on the writer thread, after the chunks submitted so far."""
        if not self._threads:
            self._start()
        self._writes.put((function, args))

    def hashed(self) -> None:
        """Return once every chunk submitted so far is hashed."""
        self._reach(self._hashes)

    def _reach(self, line: queue.SimpleQueue[Any]) -> None:
        if self._threads:
            mark = threading.Event()
            line.put(mark)
            mark.wait()

    def _done_with(self, chunk: mmap.mmap) -> None:
        # The second of the two threads to finish with a chunk frees it.
        with self._busy_lock:
            key = id(chunk)
            if key not in self._busy:
                self._busy.add(key)  # the other thread still has it
                return
            self._busy.remove(key)
        self._free.put(chunk)

    def close(self) -> None:
        """Stop the threads and unmap the chunks (every file done with)."""
        if self._threads:
            self._writes.put(None)
            self._hashes.put(None)
            for thread in self._threads:
                thread.join()
            self._threads = []
        while True:
            try:
                self._free.get_nowait()
            except queue.Empty:
                break
        for chunk in self._made:
            try:
                chunk.close()
            except BufferError:  # still viewed somewhere: freed with its last view
                pass
        self._made.clear()

    def _start(self) -> None:
        for target, name in ((self._write_loop, "write"), (self._hash_loop, "hash")):
            thread = threading.Thread(target=target, name=f"prelim-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _write_loop(self) -> None:
        while (item := self._writes.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
                continue
            if len(item) == 2:
                function, args = item
                function(*args)
                continue
            file, chunk, offset, length, hashed = item
            file._write_chunk(chunk, offset, length)
            if hashed:
                self._free.put(chunk)
            else:
                self._done_with(chunk)

    def _hash_loop(self) -> None:
        while (item := self._hashes.get()) is not None:
            if isinstance(item, threading.Event):
                item.set()
                continue
            file, chunk, length = item
            with memoryview(chunk) as view:
                file._digest.update(view[:length])
            self._done_with(chunk)


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
    """A write-only temp file in ``folder`` (see the module docstring).

    ``writer`` is the association's ``DiskWriter``; without one the file has
    a writer of its own, for its lifetime.
    """

    def __init__(self, folder: Path, writer: DiskWriter | None = None) -> None:
        self.path = folder / f"rx-{uuid.uuid4().hex}.part"
        self.name = str(self.path)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._direct = bool(_O_DIRECT)
        try:
            self._fd = os.open(self.path, flags | _O_DIRECT, 0o600)
        except OSError as exc:
            if not self._direct or exc.errno != errno.EINVAL:
                raise
            # No direct I/O on this file system (refused before the file exists).
            self._direct = False
            self._fd = os.open(self.path, flags, 0o600)
        # The descriptor the writer thread writes to (``_fd`` is -1 once finished).
        self._out = self._fd
        self._writer = writer
        self._own_writer: DiskWriter | None = None
        self._digest = fingerprint.hasher()  # updated by the hash thread only
        self._head = bytearray()
        self.size = 0
        self._sync: Future[None] | None = None
        # The chunk being filled, how full it is and its offset in the file;
        # the first write error (raised by the next write, or by finish).
        self._chunk: mmap.mmap | None = None
        self._fill = 0
        self._offset = 0
        self._error: OSError | None = None
        self._written = False
        # Whether a chunk went to the hash thread (else the digest is complete here).
        self._hash_queued = False
        # Set once the file holds every byte at its true length.
        self._readable = threading.Event()

    @property
    def direct(self) -> bool:
        """Whether the file is written with direct I/O (so far)."""
        return self._direct

    @property
    def file(self) -> IncomingFile:
        # pynetdicom's chunked receive flushes ``.file`` after each write.
        return self

    def flush(self) -> None:
        """Nothing to do before the end (``finish`` writes the last chunk)."""

    @property
    def head(self) -> bytes:
        """The file's first bytes (at most HEAD_BYTES)."""
        return bytes(self._head)

    def write_file_meta(self, sop_class: str, sop_instance: str, transfer_syntax: str) -> None:
        self.write(file_meta(sop_class, sop_instance, transfer_syntax))

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Copy ``data`` into chunks; the buffer may be reused once this returns."""
        if self._error is not None:
            raise self._error
        view = memoryview(data)
        end = len(view)
        if len(self._head) < HEAD_BYTES:
            self._head += view[: HEAD_BYTES - len(self._head)]
        writer = self._disk_writer()
        done = 0
        while done < end:
            if self._chunk is None:
                self._chunk = writer.buffer()
                self._fill = 0
            take = min(end - done, CHUNK - self._fill)
            self._chunk[self._fill : self._fill + take] = view[done : done + take]
            self._fill += take
            done += take
            if self._fill == CHUNK:
                chunk, self._chunk = self._chunk, None
                writer.submit(self, chunk, self._offset, CHUNK, CHUNK)
                self._offset += CHUNK
        self.size += end
        return end

    def _disk_writer(self) -> DiskWriter:
        if self._writer is not None:
            return self._writer
        if self._own_writer is None:
            self._own_writer = DiskWriter(depth=4)
        return self._own_writer

    def _write_chunk(self, chunk: mmap.mmap, offset: int, length: int) -> None:
        """On the writer thread: write ``chunk[:length]`` at ``offset``, all of it."""
        if self._error is not None:
            return
        with memoryview(chunk) as whole:
            view = whole[:length]
            try:
                done = 0
                while done < length:
                    try:
                        done += os.pwrite(self._out, view[done:], offset + done)
                    except OSError as exc:
                        if exc.errno != errno.EINVAL or not self._direct:
                            raise
                        # Not possible directly here (the file system wants a
                        # larger alignment, or a short write left us unaligned):
                        # this file goes on through the page cache.
                        flags = fcntl.fcntl(self._out, fcntl.F_GETFL)
                        fcntl.fcntl(self._out, fcntl.F_SETFL, flags & ~_O_DIRECT)
                        self._direct = False
                if not self._direct and _sync_file_range is not None:
                    # A hint only: an error here shows again, and counts, at the fsync.
                    _sync_file_range(self._out, offset, length, _SYNC_FILE_RANGE_WRITE)
            except OSError as exc:
                # Kept without its traceback, whose frames would pin the chunk.
                self._error = exc.with_traceback(None)
            finally:
                view.release()

    def _submit_last(self, writer: DiskWriter) -> None:
        """Hand the partly filled last chunk to ``writer``, padded with zeros to the alignment."""
        assert self._chunk is not None
        chunk, self._chunk = self._chunk, None
        padded = -(-self._fill // ALIGNMENT) * ALIGNMENT
        chunk[self._fill : padded] = bytes(padded - self._fill)
        writer.submit(self, chunk, self._offset, padded, self._fill)

    def _write_rest(self, keep: bool = True) -> None:
        """Write the last, partly filled chunk and wait for every write of this file.

        With ``keep`` false the last chunk is dropped instead. Either way no
        write of this file is left pending, so its descriptor can be closed.
        Raises the first write error (when keeping).
        """
        if self._written:
            return
        self._written = True
        writer = self._writer or self._own_writer
        if self._chunk is not None:
            assert writer is not None
            if keep:
                self._submit_last(writer)
            else:
                writer.release(self._chunk)
                self._chunk = None
        if self._own_writer is not None:
            # Its threads end with this file: wait for the hash too.
            self._own_writer.hashed()
            self._own_writer.close()
            self._own_writer = None
        elif writer is not None:
            writer.written()
        if not keep:
            return
        if self._error is not None:
            raise self._error
        if os.fstat(self._fd).st_size != self.size:
            os.ftruncate(self._fd, self.size)  # drop the last chunk's padding

    def digest(self) -> str:
        """The file's fingerprint, ``blake3:<hex>`` (call after ``finish`` or ``close``)."""
        writer = self._writer or self._own_writer
        if writer is not None and self._hash_queued:
            writer.hashed()
        return fingerprint.label(self._digest.hexdigest())

    def finish(self) -> None:
        """No more writes: the last chunk, the cut to length, then the fsync, all in order.

        With the association's writer this returns at once: the writer thread
        does it after this file's other chunks, and ``flushed`` raises any
        write or fsync error. Without one, the rest is written here (raising a
        write error) and the fsync runs on a helper thread.
        """
        if self._fd < 0 or self._sync is not None:
            return
        if self._writer is None:
            self._write_rest()
            self._readable.set()
            fd, self._fd = self._fd, -1
            self._sync = in_background(_fsync_and_close, fd)
            return
        self._written = True
        if self._chunk is not None:
            self._submit_last(self._writer)
        sync: Future[None] = Future()
        fd, self._fd = self._fd, -1
        self._sync = sync
        self._writer.call(self._complete, fd, sync)

    def _complete(self, fd: int, sync: Future[None]) -> None:
        # On the writer thread, after every chunk of this file.
        try:
            if self._error is not None:
                raise self._error
            if os.fstat(fd).st_size != self.size:
                os.ftruncate(fd, self.size)  # drop the last chunk's padding
            self._readable.set()
            os.fsync(fd)
        except OSError as exc:
            sync.set_exception(exc.with_traceback(None))
        else:
            sync.set_result(None)
        finally:
            self._readable.set()
            os.close(fd)

    def readable(self) -> None:
        """Wait until the file holds every byte (for reading it back; not yet durable)."""
        self.finish()
        self._readable.wait()

    def flushed(self) -> None:
        """Wait until the file is on disk; raises the fsync's OSError."""
        self.finish()
        assert self._sync is not None
        self._sync.result()

    def close(self, keep: bool = True) -> None:
        """Write the rest (unless not ``keep``) and close the descriptor (idempotent).

        Raises the OSError of a failed write (the file is then not complete).
        """
        if self._sync is not None:
            self._sync.exception()  # wait; an error was or will be reported by flushed()
        elif self._fd >= 0:
            try:
                self._write_rest(keep)
            finally:
                fd, self._fd = self._fd, -1
                os.close(fd)

    def discard(self) -> None:
        """Close, and remove the file unless it was moved away (stored)."""
        self.close(keep=False)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
