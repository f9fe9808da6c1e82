"""Record files: an instance made durable with one write and no metadata (ext4, small instances).

On ext4 an instance is normally linked into the spool, then fsynced once
(``spool.py``): the disk then writes the file's last bytes, its inode and
its folder's block, one after the other, before its flush. For an instance
that fits in ``RECORD_BYTES`` there is a shorter way:

- The listener makes its temp files ahead, while it is quiet, as *record
  files* (``rx-<nonce>.rec`` in ``.incoming``): ``RECORD_BYTES`` of zeros
  written and fsynced, the folder fsynced, so the name, the size and every
  block are already on disk (``prepare``).
- The data set is written into it with direct I/O, as any temp file, but
  every write is an overwrite of blocks already written: nothing of the
  inode changes but its times (and so, with native AIO, each write is
  queued to the disk at once: ``aio.py``). The last write carries the last bytes,
  zero-padded to a page, and right after them a *trailer* page (``trailer``:
  the length, the fingerprint, the nonce of the file's name), with
  ``RWF_DSYNC``: once it returns, bytes and trailer are on disk, and the
  disk has been flushed once.
- The instance is indexed and answered then. Its spool name comes later,
  in batches, from ``settle.Settler``: linked into the spool, the names made
  durable, then the file cut to its length, given its fingerprint
  attribute, made durable again, and only then its ``.rec`` name removed.

Until the ``.rec`` name is gone, start-up recovery (``recovery.py``) finds
the instance there: a record file whose trailer is whole, names its file,
and matches the bytes before it is an instance that may have been
acknowledged, and it is settled into the spool like the others. One whose
trailer is missing or does not match never was, and is removed.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import xxhash

from dicom_listener import fingerprint

# The size of a record file, and so the largest instance stored this way
# (less its trailer page and the padding of its last page). CT and MR
# slices fit; radiographs take the ordinary way.
RECORD_BYTES = 1 << 20
PAGE = mmap.PAGESIZE
SUFFIX = ".rec"
_MAGIC = b"PRELIMR1"
_PREAMBLE = 128  # bytes before "DICM" in a DICOM file (PS3.10)
# magic, length, nonce (16 bytes), fingerprint label (ascii, space-padded), checksum
_TRAILER = struct.Struct("<8sQ16s64sQ")
_zeros: mmap.mmap | None = None


def nonce_of(path: Path) -> bytes | None:
    """The 16 random bytes in a record file's name (``rx-<32 hex>.rec``), or None."""
    name = path.name
    if not (name.startswith("rx-") and name.endswith(SUFFIX)):
        return None
    try:
        nonce = bytes.fromhex(name[3 : -len(SUFFIX)])
    except ValueError:
        return None
    return nonce if len(nonce) == 16 else None


def padded(size: int) -> int:
    """``size`` rounded up to whole pages: where a record's trailer page starts."""
    return -(-size // PAGE) * PAGE


def fits(size: int) -> bool:
    """Whether an instance of ``size`` bytes, padded to a page, leaves room for the trailer."""
    return padded(size) + PAGE <= RECORD_BYTES


def trailer(size: int, nonce: bytes, digest: str) -> bytes:
    """The trailer page of a record of ``size`` bytes whose fingerprint is ``digest``."""
    label = digest.encode("ascii")
    if len(label) > 64 or len(nonce) != 16:
        raise ValueError("a fingerprint label of at most 64 characters and a 16-byte nonce")
    head = _TRAILER.pack(_MAGIC, size, nonce, label.ljust(64), 0)[:-8]
    page = head + struct.pack("<Q", xxhash.xxh3_64_intdigest(head))
    return page.ljust(PAGE, b"\0")


def prepare(path: Path) -> None:
    """Create ``path`` as an empty record file: RECORD_BYTES of zeros, on disk (not its name)."""
    global _zeros
    if _zeros is None:
        _zeros = mmap.mmap(-1, RECORD_BYTES)  # never written: the kernel's zero pages
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_DIRECT", 0)
    fd = os.open(path, flags, 0o600)
    try:
        written = 0
        while written < RECORD_BYTES:
            written += os.pwrite(fd, memoryview(_zeros)[written:], written)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def read(path: Path, nonce: bytes | None = None) -> tuple[int, str] | None:
    """(length, fingerprint) of the whole record in ``path``, or None if it holds none."""
    found = read_data(path, nonce)
    return None if found is None else found[:2]


def read_data(path: Path, nonce: bytes | None = None) -> tuple[int, str, bytes] | None:
    """``read``'s (length, fingerprint) and the record's bytes, or None if it holds none.

    Whole: the file is RECORD_BYTES long, the trailer's checksum holds, it
    sits on the page after the last byte it counts, its nonce is ``nonce``
    (the name's, when given), and the fingerprint of the bytes before it is
    the one it records.
    """
    try:
        with path.open("rb") as file:
            # Every record starts with the file meta the listener wrote (the
            # preamble, then "DICM"): a file made ahead and never used (after a
            # crash, hundreds of them) is told by its first page alone.
            first = file.read(PAGE)
            if first[_PREAMBLE : _PREAMBLE + 4] != b"DICM":
                return None
            data = first + file.read()
    except OSError:
        return None
    if len(data) != RECORD_BYTES:
        return None
    # The trailer is the last page that is not all zeros (the file was zeros before).
    end = len(data)
    while end >= PAGE and not any(data[end - PAGE : end]):
        end -= PAGE
    if end < PAGE:
        return None
    page = data[end - PAGE : end]
    magic, size, found_nonce, label, checksum = _TRAILER.unpack_from(page)
    head = page[: _TRAILER.size - 8]
    if magic != _MAGIC or checksum != xxhash.xxh3_64_intdigest(head):
        return None
    if nonce is not None and found_nonce != nonce:
        return None
    if padded(size) != end - PAGE:
        return None
    digest = label.rstrip(b" ").decode("ascii", "replace")
    hasher = fingerprint.hasher()
    hasher.update(memoryview(data)[:size])
    if fingerprint.label(hasher.hexdigest()) != digest:
        return None
    return size, digest, data[:size]
