"""The temp file a data set is received into: Part 10 framing, direct writes, hash.

A received data set becomes ``<spool>/.incoming/rx-<random>.part`` (made
ahead, empty, while the listener is quiet: ``TempFiles``): the 128-byte
preamble, ``DICM``, the File Meta Information (as pynetdicom writes it), then
the data set bytes exactly as they arrived. The receiving thread
copies each fragment into a page-aligned 256 KB chunk; each full chunk is
added to the file's digest (XXH3-128, ``fingerprint.py``) and handed to the
association's writer thread (``DiskWriter``):

- the writer thread writes the chunks with direct I/O (``O_DIRECT``),
  straight from the chunk to the disk, while the rest of the data set still
  arrives; chunks already waiting go down together in one ``pwritev``. A
  buffered file makes the kernel copy every page into its cache and write it
  back page by page at the fsync; on the disk we measured, a durable 10 MB
  instance took 19-26 ms that way and 6-11 ms written directly
  (``bench/RESULTS.md``). The file's last bytes short of a page (direct
  I/O takes whole pages) are written through the page cache; padding them
  and cutting the file back to length costs more, as the cut reads that
  page back from the disk (0.11 ms here). A file system that refuses direct I/O
  (at the open, or for one write) gets the same chunks through the page
  cache, each followed by a request to start writing it back
  (``sync_file_range``);
- a written chunk goes back to be filled again. An association owns at most
  ``_DIRECT_DEPTH`` chunks: when the disk falls behind, the receiving thread
  waits, so memory stays flat whatever the instance's size.

A record file (``record.py``: made ahead, its blocks already written) is
written without the writer thread where the kernel has native AIO
(``aio.py``): the receiving thread submits each full chunk as it is filled
and goes on; the record's last write (``RWF_DSYNC``) is submitted once the
others are done, at ``finish`` if they are, else by the store after its
header check (``advance``), and ``flushed`` waits for it. When the data set
is sized like the one before it on the association (a series' slices are),
its last full chunk is kept back and goes with that last write: one request
fewer, and none for that write to wait for. Each hand-over to the writer thread had to
wait for that thread to be scheduled and to win the GIL from the receiving
thread, which holds it while the data set arrives: a CT slice's first chunk
often went to the disk only with its last, and the answer came 15 % later
(``bench/RESULTS.md``).

Hashing on the receiving thread, not a thread of its own, is deliberate: a
hash thread has to win the GIL for every chunk, and that hand-off costs more
than the hash (5 µs per chunk).

The file's first bytes also stay in memory, so the header check does not read
them back. ``finish`` hands the last chunk to the writer thread, which then
writes it and fsyncs the file (by then mostly its metadata), while
the caller checks the header (``readable`` waits for the bytes, if it must
read the file) and prepares the index; storing waits with ``flushed`` before
moving the file.

A file made with ``seal`` (for a spool on a file system where one fsync of
a linked file also makes its new name durable: ``spool.py``) is instead
given its fingerprint as an extended attribute at ``finish``, and the
writer thread only writes: the caller links it into the spool first, and
``flushed`` then fsyncs it, bytes, inode and name at once.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import functools
import mmap
import os
import queue
import struct
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

from dicom_listener import aio, fingerprint, record
from dicom_listener.spool import DIGEST_XATTR, Spool, fsync_path, in_background


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
# Bytes of the file kept in memory for the header check.
HEAD_BYTES = 64 * 1024
# Direct I/O: buffer addresses, file offsets and lengths are multiples of this
# (the page size, a multiple of every logical block size Linux supports).
ALIGNMENT = mmap.PAGESIZE
# Bytes per write: large enough for the disk's full speed, small enough that a
# CT slice's first chunk is on disk before its last PDU arrives.
CHUNK = 256 * 1024
# A full chunk likely followed by no more than this is kept back for a record's
# last write (``IncomingFile._submit_aio``).
_KEEP_BACK_BYTES = 64 * 1024
# Chunks one association may have filled or waiting for the disk.
_DIRECT_DEPTH = 16
_O_DIRECT = getattr(os, "O_DIRECT", 0)
# Most chunks written by one system call (when that many are waiting).
_WRITE_BATCH = 16
_NOTHING = object()


# Temp files a listener keeps made ahead (``TempFiles``): a CT series of a
# few hundred slices arrives without a file created on the way.
FILES_AHEAD = 512
# How long the listener must have taken no temp file before more are made.
_QUIET_S = 0.05
# Files made in one go by the refill thread, between two checks for quiet.
_AHEAD_BATCH = 16


def prepare(
    folder: Path, writer: DiskWriter | None = None, seal: bool = False
) -> Future[IncomingFile]:
    """Create the next temp file on a helper thread (the file system may take a while)."""
    return in_background(functools.partial(IncomingFile, folder, writer, seal=seal))


class TempFiles:
    """Empty temp files made ahead, while the listener is quiet, for data sets to come.

    Creating a file is the file system's slowest step of a store after the
    flushes: it allocates an inode, which took 0.1-0.8 ms on ext4 without a
    journal once many files had been deleted (each recently freed inode is
    skipped), and it competes with the receiving thread for the two cores.
    Made while no data set is arriving (none taken for ``_QUIET_S``), a
    burst of up to ``ahead`` instances (a CT series) is received into files
    that already exist; past that, each association makes its next file on a
    helper thread, as before.

    The files are empty, closed, and named like any temp file in the spool's
    ``.incoming`` folder: a crash leaves them to start-up recovery with the
    other orphans, and ``close`` removes those not taken. With ``prepared``
    (ext4, ``records_possible``) they are record files instead
    (``record.py``): zeros of the record size, on disk, named ``.rec``; an
    instance that fits is then made durable by one write.
    """

    def __init__(
        self,
        folder: Path,
        ahead: int = FILES_AHEAD,
        quiet_s: float = _QUIET_S,
        prepared: bool = False,
    ) -> None:
        self.folder = folder
        # Record files (``record.py``): zeros written and fsynced, the folder
        # fsynced after each batch, instead of empty files.
        self.prepared = prepared
        self._ahead = ahead
        self._quiet_s = quiet_s
        self._names: collections.deque[Path] = collections.deque()
        # The name being made (it may exist before it is in ``_names``), and
        # record files made whose folder is not fsynced yet.
        self._making: Path | None = None
        self._batch: list[Path] = []
        self._last_taken = 0.0
        self._wanted = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def fill(self) -> int:
        """Make files until ``ahead`` are ready (now, on this thread); how many were made."""
        return self._make(self._ahead - len(self._names))

    def start(self) -> None:
        """Keep the files topped up in the background."""
        if self._thread is None and self._ahead > 0:
            self._thread = threading.Thread(target=self._run, name="prelim-ahead", daemon=True)
            self._thread.start()

    def take(self) -> Path | None:
        """The name of a file made ahead, now the caller's; None when none is left."""
        self._last_taken = time.monotonic()
        try:
            name = self._names.popleft()
        except IndexError:
            name = None
        if not self._wanted.is_set():
            self._wanted.set()
        return name

    def give_back(self, path: Path) -> None:
        """A file taken and never written: the next ``take`` has it again."""
        self._names.appendleft(path)

    def ready(self) -> set[Path]:
        """The names made ahead and not taken (and the one being made)."""
        making = self._making
        ready = set(self._names) | set(self._batch)
        return ready | ({making} if making is not None else set())

    def __len__(self) -> int:
        return len(self._names)

    def _make(self, count: int) -> int:
        made = 0
        for _ in range(max(count, 0)):
            suffix = record.SUFFIX if self.prepared else ".part"
            path = self._making = self.folder / _temp_name(suffix)
            try:
                if self.prepared:
                    record.prepare(path)
                else:
                    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                    os.close(os.open(path, flags, 0o600))
            except OSError:
                self._making = None
                break  # a full disk or no folder: a store then reports it itself
            if self.prepared:
                self._batch.append(path)
            else:
                self._names.append(path)
            self._making = None
            made += 1
        if self._batch:
            # The names are durable before any is handed out: a record relies on it.
            try:
                fsync_path(self.folder, directory=True)
            except OSError:
                for path in self._batch:
                    path.unlink(missing_ok=True)
                self._batch.clear()
                return 0
            self._names.extend(self._batch)
            self._batch.clear()
        return made

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopped:
                return
            quiet_for = time.monotonic() - self._last_taken
            if quiet_for < self._quiet_s:
                time.sleep(self._quiet_s - quiet_for)
                continue
            missing = self._ahead - len(self._names)
            if missing > 0 and self._make(min(missing, _AHEAD_BATCH)):
                continue
            self._wanted.clear()  # full, or the disk refuses: until the next take

    def close(self) -> None:
        """Stop making files and remove those not taken."""
        self._stopped = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        while True:
            try:
                path = self._names.popleft()
            except IndexError:
                return
            try:
                os.unlink(path)
            except OSError:
                pass


def records_possible(spool: Spool) -> bool:
    """Whether ``spool`` gets record files made ahead (``record.py``): ext4, direct I/O."""
    return bool(_O_DIRECT) and bool(spool.names_durable_with_file) and hasattr(os, "RWF_DSYNC")


def _temp_name(suffix: str = ".part") -> str:
    return f"rx-{uuid.uuid4().hex}{suffix}"


def _span(views: list[memoryview], start: int, stop: int) -> list[memoryview]:
    """The bytes of ``views`` (back to back) from ``start`` to ``stop``, as views."""
    span = []
    position = 0
    for view in views:
        end = position + len(view)
        if end > start:
            span.append(view[max(start - position, 0) : min(stop, end) - position])
        position = end
        if position >= stop:
            break
    return span


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_HUGE_PAGE = 2 << 20
# Chunk regions kept for later associations, at most (``_Region``).
_REGIONS_KEPT = 16
_regions: list[_Region] = []
_regions_lock = threading.Lock()


class _Region:
    """``count`` chunks back to back in one private anonymous map, on huge pages if it can.

    A direct write goes to the disk as one request per physically contiguous
    piece of memory, up to the device's limit of segments (here 254): from
    4 KB pages a 4 MB write took 8 requests and 2.1 ms, from a 2 MB huge page
    one request and 1.55 ms, and 16 writes of 256 KB 2.3-2.6 ms instead of
    2.7-3.1 (``bench/RESULTS.md``). The map is aligned to 2 MB inside a
    larger one and offered to transparent huge pages (``MADV_HUGEPAGE``);
    where the kernel has none to give, the same chunks are on ordinary pages.
    Regions are kept for the next association (``take``, ``give_back``), so
    a huge page is found and cleared once, not per association.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        size = count * CHUNK
        self._map = mmap.mmap(-1, size + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        anchor = ctypes.c_char.from_buffer(self._map)
        start = (-ctypes.addressof(anchor)) % _HUGE_PAGE
        del anchor  # a ctypes view would keep the map from closing
        advice = getattr(mmap, "MADV_HUGEPAGE", None)
        if advice is not None:
            try:
                self._map.madvise(advice, start, size)
            except OSError:  # no transparent huge pages: ordinary pages
                pass
        window = memoryview(self._map)[start : start + size]
        self.chunks = [window[i * CHUNK : (i + 1) * CHUNK] for i in range(count)]

    @classmethod
    def take(cls, count: int) -> _Region:
        with _regions_lock:
            for index, region in enumerate(_regions):
                if region.count == count:
                    return _regions.pop(index)
        return cls(count)

    def give_back(self) -> None:
        with _regions_lock:
            if len(_regions) < _REGIONS_KEPT:
                _regions.append(self)
                return
        for chunk in self.chunks:
            chunk.release()
        self.chunks = []
        try:
            self._map.close()
        except BufferError:  # still viewed somewhere: freed with its last view
            pass


class DiskWriter:
    """The writer thread of one association's temp files (see the module docstring).

    It owns ``depth`` chunk buffers (page-aligned, in one region on huge
    pages where the kernel has them: ``_Region``, reused from one instance to
    the next), taken when the first is needed; when all are filled and
    waiting for the disk, ``buffer`` waits too, so memory stays flat whatever
    the instance's size. Chunks are written in the order they are submitted,
    one file at a time; the thread starts with the first.
    """

    def __init__(self, depth: int = _DIRECT_DEPTH) -> None:
        self._depth = depth
        self._writes: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        self._region: _Region | None = None
        self._handed = 0  # chunks of the region handed out at least once
        self._thread: threading.Thread | None = None

    def buffer(self) -> memoryview:
        """An empty chunk to fill (waits while all are in use)."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        if self._region is None:
            self._region = _Region.take(self._depth)
        if self._handed < self._depth:
            self._handed += 1
            return self._region.chunks[self._handed - 1]
        return self._free.get()

    def release(self, chunk: memoryview) -> None:
        """Give back a chunk that is not submitted."""
        self._free.put(chunk)

    def submit(self, file: IncomingFile, chunk: memoryview, offset: int, length: int) -> None:
        """Write ``chunk[:length]`` at ``offset`` of ``file``, then give the chunk back."""
        self._put((file, chunk, offset, length))

    def call(self, function: Callable[..., None], *args: Any) -> None:
        """Run ``function(*args)`` on the writer thread, after the chunks submitted so far."""
        self._put((function, args))

    def written(self) -> None:
        """Return once every chunk submitted so far is written (or failed)."""
        if self._thread is not None:
            mark = threading.Event()
            self._writes.put(mark)
            mark.wait()

    def _put(self, item: Any) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prelim-write", daemon=True)
            self._thread.start()
        self._writes.put(item)

    def close(self) -> None:
        """Stop the thread and give the chunks back (every file done with)."""
        if self._thread is not None:
            self._writes.put(None)
            self._thread.join()
            self._thread = None
        while True:
            try:
                self._free.get_nowait()
            except queue.Empty:
                break
        region, self._region = self._region, None
        self._handed = 0
        if region is not None:
            region.give_back()

    def _run(self) -> None:
        held: Any = _NOTHING  # an item taken from the queue while gathering, not yet done
        while True:
            item, held = (self._writes.get(), _NOTHING) if held is _NOTHING else (held, _NOTHING)
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            if len(item) == 2:
                function, args = item
                function(*args)
                continue
            # Chunks of the same file already waiting, back to back, go down in
            # one write: one system call and one disk request for several.
            file, chunk, offset, length = item
            batch = [(chunk, length)]
            end = offset + length
            while length == CHUNK and len(batch) < _WRITE_BATCH:
                try:
                    after = self._writes.get_nowait()
                except queue.Empty:
                    break
                if isinstance(after, tuple) and len(after) == 4:
                    if after[0] is file and after[2] == end:
                        _, chunk, _, length = after
                        batch.append((chunk, length))
                        end += length
                        continue
                held = after
                break
            file._write_chunks(batch, offset)
            for chunk, _ in batch:
                self._free.put(chunk)


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


class _Final:
    """The last write of a record written with AIO: its bytes, and how it went."""

    __slots__ = ("chunks", "done", "error", "length", "offset", "page", "ticket", "views")

    def __init__(self, chunks: list[memoryview], views: list[memoryview], offset: int) -> None:
        self.chunks = chunks  # given back to the writer's pool once it is collected
        self.page = mmap.mmap(-1, ALIGNMENT)  # the trailer (page-aligned, for direct I/O)
        self.views = [*views, memoryview(self.page)]
        self.offset = offset
        self.length = sum(len(view) for view in self.views)
        self.ticket: int | None = None
        self.error: OSError | None = None
        self.done = False


class IncomingFile:
    """A write-only temp file in ``folder`` (see the module docstring).

    ``writer`` is the association's ``DiskWriter``; without one the file has
    a writer of its own, for its lifetime. ``seal``: with that writer, the
    file is given its fingerprint at ``finish`` and fsynced by ``flushed``,
    after the caller has linked it (the module docstring).
    """

    def __init__(
        self,
        folder: Path,
        writer: DiskWriter | None = None,
        made: Path | None = None,
        seal: bool = False,
        ring: aio.Ring | None = None,
        expected: int | None = None,
    ) -> None:
        # ``made``: an empty file made ahead (``TempFiles``), opened instead of created.
        self.path = made if made is not None else folder / _temp_name()
        self.name = str(self.path)
        flags = os.O_WRONLY | os.O_CLOEXEC
        if made is None:
            flags |= os.O_CREAT | os.O_EXCL
        self._direct = bool(_O_DIRECT)
        try:
            self._fd = os.open(self.path, flags | _O_DIRECT, 0o600)
        except OSError as exc:
            if not self._direct or exc.errno != errno.EINVAL:
                raise
            # No direct I/O on this file system (refused before the file exists).
            self._direct = False
            self._fd = os.open(self.path, flags, 0o600)
        # The descriptor the writer thread writes to (``_fd`` is -1 once
        # finished), and whether it is still open for direct I/O.
        self._out = self._fd
        self._out_direct = self._direct
        self._writer = writer
        self._own_writer: DiskWriter | None = None
        self._digest = fingerprint.hasher()
        self._head = bytearray()
        self.size = 0
        self._sync: Future[None] | None = None
        # Sealed (once finished): the descriptor kept open after the writes,
        # for ``flushed``'s fsync.
        self._seal = seal and writer is not None
        self._held = -1
        # The chunk being filled, how full it is and its offset in the file;
        # the first write error (raised by the next write, or by finish).
        self._chunk: memoryview | None = None
        self._fill = 0
        self._offset = 0
        self._error: OSError | None = None
        self._written = False
        # Set once the file holds every byte at its true length.
        self._readable = threading.Event()
        # A record file made ahead (``record.py``), its nonce; whether this
        # one was finished as a record, and whether its name is now someone
        # else's to remove (``keep``).
        self._prepared = made is not None and made.name.endswith(record.SUFFIX)
        self._nonce = record.nonce_of(made) if made is not None and self._prepared else None
        self._record = False
        self._kept = False
        # A record file written from this thread with native AIO (``aio.py``)
        # rather than by the writer thread: its chunks in flight by ticket,
        # and once finished as a record, its last write (``_Final``).
        # Not for a data set likely too large for a record (sized like the one
        # before it): its AIO writes would be collected, waiting, at 1 MB.
        aio_fits = expected is None or record.fits(expected)
        self._ring = (
            ring if writer is not None and self._prepared and self._direct and aio_fits else None
        )
        self._flying: dict[int, memoryview] = {}
        self._final: _Final | None = None
        # ``expected``: the size this data set will likely have (the previous
        # one's on the association: a series' slices are alike). A full chunk
        # that likely leaves less than _KEEP_BACK_BYTES to come is kept back,
        # (chunk, offset), and goes with the record's last write.
        self._expected = expected
        self._back: tuple[memoryview, int] | None = None

    @property
    def direct(self) -> bool:
        """Whether the file is written with direct I/O (so far)."""
        return self._direct

    @property
    def sealed(self) -> bool:
        """Finished with its fingerprint to set, its fsync left to ``flushed`` (``seal``)."""
        return self._seal and self._sync is not None

    @property
    def record(self) -> bool:
        """Finished as a record (``record.py``): ``flushed`` waits for its one durable write."""
        return self._record

    def keep(self) -> None:
        """The file is now the spool's (a record handed to ``settle.Settler``): not removed here."""
        self._kept = True

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
                self._digest.update(chunk)
                if not self._submit_aio(chunk):
                    writer.submit(self, chunk, self._offset, CHUNK)
                self._offset += CHUNK
        self.size += end
        return end

    def _submit_aio(self, chunk: memoryview) -> bool:
        """Start writing a full chunk from this thread (``aio.py``); False: the writer's job.

        Only a record file's chunks that a record can hold go this way; past
        that, or when a submission fails, the writes in flight are collected
        and the file goes on with the writer thread, in order. A chunk that
        is likely the last full one is kept back for the record's last write:
        one request instead of two, and no wait for it before that write.
        """
        ring = self._ring
        if ring is None:
            return False
        offset = self._offset
        if self._error is None and offset + CHUNK <= record.RECORD_BYTES - record.PAGE:
            try:
                if self._back is not None:  # more came after it: it goes now
                    back, at = self._back
                    self._flying[ring.submit(self._out, [back], at)] = back
                    self._back = None
                left = None if self._expected is None else self._expected - (offset + CHUNK)
                if left is not None and 0 <= left <= _KEEP_BACK_BYTES:
                    self._back = (chunk, offset)
                else:
                    self._flying[ring.submit(self._out, [chunk], offset)] = chunk
                return True
            except OSError:
                pass  # the writer thread writes it, and reports any error
        self._leave_aio()
        return False

    def _leave_aio(self, keep: bool = True) -> None:
        """Go on with the writer thread: collect the AIO writes, hand over a chunk kept back.

        With ``keep`` false (the file is dropped) the chunk kept back is not written.
        """
        self._collect(block=True)
        if self._back is not None:
            back, at = self._back
            self._back = None
            if keep:
                self._disk_writer().submit(self, back, at, CHUNK)
            else:
                self._disk_writer().release(back)
        self._ring = None

    def _collect(self, block: bool) -> None:
        """Collect this file's completed AIO writes (``block``: all of them), chunks given back."""
        ring = self._ring
        if ring is None or not self._flying:
            return
        for ticket, result in ring.wait(block):
            chunk = self._flying.pop(ticket)
            if result != len(chunk) and self._error is None:
                self._error = aio.failure(result)
            self._disk_writer().release(chunk)

    def _disk_writer(self) -> DiskWriter:
        if self._writer is not None:
            return self._writer
        if self._own_writer is None:
            self._own_writer = DiskWriter(depth=4)
        return self._own_writer

    def _write_chunks(self, chunks: list[tuple[memoryview, int]], offset: int) -> None:
        """On the writer thread: write each ``chunk[:length]``, back to back from ``offset``."""
        if self._error is not None:
            return
        views = [memoryview(chunk)[:length] for chunk, length in chunks]
        total = sum(length for _, length in chunks)
        try:
            done = 0
            while done < total:
                stop = total
                if self._out_direct:
                    # Direct I/O takes whole pages: the file's last bytes, short
                    # of a page, go through the page cache (the fsync writes
                    # them). Padding them to a page instead would need a cut
                    # back to length, which reads that page back from the disk.
                    stop -= total % ALIGNMENT
                    if done == stop:
                        self._through_cache()
                        continue
                try:
                    done += os.pwritev(self._out, _span(views, done, stop), offset + done)
                except OSError as exc:
                    if exc.errno != errno.EINVAL or not self._out_direct:
                        raise
                    # Not possible directly here (the file system wants a
                    # larger alignment, or a short write left us unaligned):
                    # this file goes on through the page cache.
                    self._through_cache()
                    self._direct = False
            if not self._direct and _sync_file_range is not None:
                # A hint only: an error here shows again, and counts, at the fsync.
                _sync_file_range(self._out, offset, total, _SYNC_FILE_RANGE_WRITE)
        except OSError as exc:
            # Kept without its traceback, whose frames would pin the chunks.
            self._error = exc.with_traceback(None)
        finally:
            for view in views:
                view.release()

    def _through_cache(self) -> None:
        """Write the rest of the file through the page cache (clear O_DIRECT)."""
        if self._out_direct:
            flags = fcntl.fcntl(self._out, fcntl.F_GETFL)
            fcntl.fcntl(self._out, fcntl.F_SETFL, flags & ~_O_DIRECT)
            self._out_direct = False

    def _submit_last(self, writer: DiskWriter) -> None:
        """Hand the partly filled last chunk to ``writer``."""
        assert self._chunk is not None
        chunk, self._chunk = self._chunk, None
        with memoryview(chunk) as view:
            self._digest.update(view[: self._fill])
        writer.submit(self, chunk, self._offset, self._fill)

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
            self._own_writer.close()  # its thread ends with this file, every chunk written
            self._own_writer = None
        elif writer is not None:
            writer.written()
        if keep and self._error is not None:
            raise self._error

    def digest(self) -> str:
        """The file's fingerprint, ``xxh128:<hex>`` (complete after ``finish`` or ``close``)."""
        return fingerprint.label(self._digest.hexdigest())

    def finish(self) -> None:
        """No more writes: the last chunk, then the fsync, in order.

        With the association's writer this returns at once: the writer thread
        does it after this file's other chunks, and ``flushed`` raises any
        write or fsync error. Without one, the rest is written here (raising a
        write error) and the fsync runs on a helper thread.
        """
        if self._fd < 0 or self._sync is not None:
            return
        if self._writer is None:
            self._write_rest()
            self._cut_to_length(self._fd)
            self._readable.set()
            fd, self._fd = self._fd, -1
            self._sync = in_background(_fsync_and_close, fd)
            return
        self._written = True
        fits = (
            self._nonce is not None
            and self._seal
            and self._out_direct
            and self._error is None
            and record.fits(self.size)
        )
        if fits and self._ring is not None:
            assert self._nonce is not None
            self._finish_record_aio(self._nonce)
            return
        if self._ring is not None:
            self._leave_aio()  # not a record after all: the writer thread goes on
        if fits:
            assert self._nonce is not None
            self._finish_record(self._writer, self._nonce)
            return
        if self._chunk is not None:
            self._submit_last(self._writer)
        sync: Future[None] = Future()
        fd, self._fd = self._fd, -1
        self._sync = sync
        seal = self.digest() if self._seal else None
        if seal is not None:
            self._held = fd  # fsynced and closed by ``flushed``
        self._writer.call(self._complete, fd, sync, seal)

    def _last_chunk_padded(self) -> tuple[memoryview | None, int]:
        """A record's last, partly filled chunk (now hashed) zero-padded to a page; its length."""
        chunk, self._chunk = self._chunk, None
        if chunk is None:
            return None, 0
        with memoryview(chunk) as view:
            self._digest.update(view[: self._fill])
        padded = record.padded(self._fill)  # chunks start on pages: the file's padding too
        chunk[self._fill : padded] = bytes(padded - self._fill)
        return chunk, padded

    def _finish_record(self, writer: DiskWriter, nonce: bytes) -> None:
        """The last bytes, padded to a page, and the trailer, in one durable write (record.py)."""
        chunk, padded = self._last_chunk_padded()
        page = mmap.mmap(-1, ALIGNMENT)  # page-aligned, for the direct write
        page[:] = record.trailer(self.size, nonce, self.digest())
        sync: Future[None] = Future()
        fd, self._fd = self._fd, -1
        self._sync = sync
        self._record = True
        writer.call(self._write_record, writer, chunk, padded, page, fd, sync)

    def _finish_record_aio(self, nonce: bytes) -> None:
        """``_finish_record`` from this thread: the last write starts once the others are done.

        It carries a chunk kept back, if any, the last bytes padded to a page,
        and the trailer.
        """
        chunks: list[memoryview] = []
        views: list[memoryview] = []
        offset = self._offset
        if self._back is not None:
            back, offset = self._back
            self._back = None
            chunks.append(back)
            views.append(back[:])  # a view of its own: released once written
        chunk, padded = self._last_chunk_padded()
        if chunk is not None:
            chunks.append(chunk)
            views.append(chunk[:padded])
        final = _Final(chunks, views, offset)
        final.page[:] = record.trailer(self.size, nonce, self.digest())
        self._fd = -1  # ``_out`` stays open until the last write is collected
        self._record = True
        self._final = final
        self._advance(block=False)

    def advance(self) -> None:
        """Start an AIO record's last write once its other writes are done (waiting for them).

        Called by the store after the header check: the last write (which
        must follow the others, as its flush covers only writes already done)
        then starts the moment the disk has the rest, while the index
        statements run. A no-op once started, or for a file written otherwise.
        """
        self._advance(block=True)

    def _advance(self, block: bool) -> None:
        final = self._final
        if final is None or final.ticket is not None or final.error is not None:
            return
        self._collect(block)
        if not self._flying:
            self._start_final(final)

    def _start_final(self, final: _Final) -> None:
        ring = self._ring
        assert ring is not None
        if self._error is not None:
            final.error = self._error
            return
        try:
            final.ticket = ring.submit(self._out, final.views, final.offset, os.RWF_DSYNC)
        except OSError as exc:
            final.error = exc.with_traceback(None)

    def _end_final(self) -> None:
        """Wait for an AIO record's last write (after the others); ``_release_final`` frees."""
        final = self._final
        assert final is not None and self._ring is not None
        if final.done:
            return
        try:
            self.advance()  # the other writes collected, the last one started
            if final.ticket is not None:
                for _, result in self._ring.wait(block=True):
                    if result != final.length:
                        final.error = aio.failure(result)
        finally:
            final.done = True
            self._readable.set()

    def _release_final(self) -> None:
        """Give back what an AIO record's last write held, once it is collected (``close``)."""
        final = self._final
        assert final is not None
        self._end_final()
        if final.page.closed:
            return
        for view in final.views:
            view.release()
        for chunk in final.chunks:
            self._disk_writer().release(chunk)
        final.page.close()
        os.close(self._out)

    def _write_record(
        self,
        writer: DiskWriter,
        chunk: memoryview | None,
        padded: int,
        page: mmap.mmap,
        fd: int,
        sync: Future[None],
    ) -> None:
        # On the writer thread, after this file's other chunks: an overwrite
        # of blocks already on disk, so RWF_DSYNC writes no metadata but the
        # file's times, then flushes the disk once.
        views = [memoryview(chunk)[:padded]] if chunk is not None else []
        views.append(memoryview(page))
        try:
            if self._error is not None:
                raise self._error
            total = padded + ALIGNMENT
            done = 0
            while done < total:
                done += os.pwritev(fd, _span(views, done, total), self._offset + done, os.RWF_DSYNC)
                if done % ALIGNMENT:
                    raise OSError(errno.EIO, "short direct write of a record")
        except OSError as exc:
            sync.set_exception(exc.with_traceback(None))
        else:
            sync.set_result(None)
        finally:
            for view in views:
                view.release()
            if chunk is not None:
                writer.release(chunk)
            page.close()
            os.close(fd)
            self._readable.set()

    def _cut_to_length(self, fd: int) -> None:
        """A record file made ahead, used as a plain one: cut to the data set's length."""
        if self._prepared and self.size < record.RECORD_BYTES:
            os.ftruncate(fd, self.size)

    def _complete(self, fd: int, sync: Future[None], seal: str | None) -> None:
        # On the writer thread, after every chunk of this file (and not on the
        # receiving thread: the attribute waits for the inode, which a direct
        # write holds). A file system that refuses it fails the store.
        try:
            if self._error is not None:
                raise self._error
            self._cut_to_length(fd)
            self._readable.set()
            if seal is None:
                os.fsync(fd)
            else:
                os.setxattr(fd, DIGEST_XATTR, seal.encode("ascii"))
        except OSError as exc:
            sync.set_exception(exc.with_traceback(None))
        else:
            sync.set_result(None)
        finally:
            self._readable.set()
            if seal is None:
                os.close(fd)

    def readable(self) -> None:
        """Wait until the file holds every byte (for reading it back; not yet durable)."""
        self.finish()
        if self._final is not None:
            self._end_final()  # its error, if any, is raised by ``flushed``
        self._readable.wait()

    def flushed(self) -> None:
        """Wait until the file is on disk; raises the write's or the fsync's OSError.

        A sealed file is fsynced here, on the calling thread, once its
        writes are done: after its link, that one fsync makes its new name
        durable too (on the file systems where ``seal`` is used).
        """
        self.finish()
        if self._final is not None:
            self._end_final()
            if self._final.error is not None:
                raise self._final.error
            return
        assert self._sync is not None
        fd, self._held = self._held, -1
        if fd < 0:
            self._sync.result()
            return
        try:
            self._sync.result()
            os.fsync(fd)
        except OSError as exc:
            failed: Future[None] = Future()
            failed.set_exception(exc.with_traceback(None))
            self._sync = failed  # raised again by a later call
            raise
        finally:
            os.close(fd)

    def close(self, keep: bool = True) -> None:
        """Write the rest (unless not ``keep``) and close the descriptor (idempotent).

        Raises the OSError of a failed write (the file is then not complete).
        """
        if self._final is not None:
            self._release_final()  # an error was or will be reported by flushed()
            return
        if self._ring is not None:
            self._leave_aio(keep)  # no write of ours may outlive the file
        if self._sync is not None:
            self._sync.exception()  # wait; an error was or will be reported by flushed()
            fd, self._held = self._held, -1
            if fd >= 0:  # sealed, never fsynced: not stored
                os.close(fd)
        elif self._fd >= 0:
            try:
                self._write_rest(keep)
            finally:
                fd, self._fd = self._fd, -1
                os.close(fd)

    def discard(self) -> None:
        """Close, and remove the file unless it was moved away (stored)."""
        self.close(keep=False)
        if self._kept:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
