"""The temp file writer: direct I/O in aligned chunks, its fallbacks and its errors."""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from pathlib import Path

import pytest
import xxhash

from dicom_listener import incoming
from dicom_listener.incoming import CHUNK, DiskWriter, IncomingFile
from prelim.settings import Settings


def _pieces(data: bytes, step: int) -> list[memoryview]:
    return [memoryview(data)[start : start + step] for start in range(0, len(data), step)]


def _assert_holds(file: IncomingFile, data: bytes) -> None:
    """The file holds exactly ``data``, and its digest is XXH3-128 of those bytes."""
    assert file.path.read_bytes() == data
    assert file.digest() == "xxh128:" + xxhash.xxh3_128(data).hexdigest()


def _write_whole(file: IncomingFile, data: bytes) -> None:
    """Write ``data`` in one piece, finish and flush the file, and check what it holds."""
    file.write(data)
    file.finish()
    file.flushed()
    _assert_holds(file, data)


@pytest.mark.parametrize(
    "size", [0, 1, 4095, 4096, 4097, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345]
)
def test_every_length_is_written_exactly(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    writer = DiskWriter()
    file = IncomingFile(tmp_path, writer)
    for piece in _pieces(data, 70_001):
        file.write(piece)
    file.finish()
    file.flushed()
    _assert_holds(file, data)
    assert file.size == size
    file.discard()
    writer.close()
    assert not any(tmp_path.iterdir())


def test_one_writer_serves_files_one_after_another(tmp_path: Path) -> None:
    """Reused chunks carry nothing of the previous file."""
    writer = DiskWriter(depth=2)
    for size in (CHUNK + 100, 5, 2 * CHUNK):
        data = os.urandom(size)
        file = IncomingFile(tmp_path, writer)
        _write_whole(file, data)
        file.discard()
    writer.close()


def _direct_supported(folder: Path) -> bool:
    probe = folder / "probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600))
        return True
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


def test_direct_io_is_used_where_the_file_system_has_it(tmp_path: Path) -> None:
    file = IncomingFile(tmp_path)
    file.write(b"x" * 10)
    file.close()
    assert file.direct is _direct_supported(tmp_path)
    assert file.path.read_bytes() == b"x" * 10


def test_the_last_bytes_short_of_a_page_need_no_cut_to_length(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """They go through the page cache: no padding, so no ftruncate (which reads the page back)."""
    cuts: list[int] = []
    real_ftruncate = os.ftruncate
    monkeypatch.setattr(os, "ftruncate", lambda fd, n: (cuts.append(n), real_ftruncate(fd, n)))
    writer = DiskWriter()
    data = os.urandom(2 * CHUNK + 3 * incoming.ALIGNMENT + 77)
    file = IncomingFile(tmp_path, writer)
    _write_whole(file, data)
    assert file.direct is _direct_supported(tmp_path)
    assert cuts == []
    file.discard()
    writer.close()


def test_no_direct_io_at_the_open_falls_back_to_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing(path: object, flags: int, *args: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing)
    data = os.urandom(2 * CHUNK + 3)
    file = IncomingFile(tmp_path)
    assert not file.direct
    for piece in _pieces(data, 100_000):
        file.write(piece)
    file.flushed()
    _assert_holds(file, data)


def test_a_write_refused_direct_goes_on_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pwritev = os.pwritev
    import fcntl

    def picky(fd: int, data: list[memoryview], offset: int) -> int:
        reaches = offset + sum(len(view) for view in data)
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT and reaches > CHUNK:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwritev(fd, data, offset)

    monkeypatch.setattr(os, "pwritev", picky)
    data = os.urandom(3 * CHUNK + 999)
    file = IncomingFile(tmp_path)
    if not file.direct:
        pytest.skip("no direct I/O on this file system")
    file.write(data)
    file.flushed()
    assert not file.direct
    _assert_holds(file, data)


def test_a_failed_write_is_raised_and_the_file_goes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int, data: list[memoryview], offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", full)
    writer = DiskWriter()
    file = IncomingFile(tmp_path, writer)
    file.write(b"y" * CHUNK)  # the chunk is written on the writer thread
    writer.written()
    with pytest.raises(OSError) as failed:
        file.write(b"more")  # the next write tells
    assert failed.value.errno == errno.ENOSPC
    file.finish()  # returns at once: the writer thread does the rest
    with pytest.raises(OSError) as failed:
        file.flushed()  # and the error is raised before anything is stored
    assert failed.value.errno == errno.ENOSPC
    file.discard()
    assert not any(tmp_path.iterdir())
    monkeypatch.undo()
    # The writer carries on with the next file.
    second = IncomingFile(tmp_path, writer)
    second.write(b"z" * 5000)
    second.flushed()
    assert second.path.read_bytes() == b"z" * 5000
    second.discard()
    writer.close()


def test_discard_before_the_end_writes_nothing_more(tmp_path: Path) -> None:
    writer = DiskWriter()
    file = IncomingFile(tmp_path, writer)
    file.write(b"a" * (CHUNK + 10))
    file.discard()
    assert not file.path.exists()
    assert writer._handed == 2 and writer._region is not None
    chunks = writer._region.chunks
    again = [writer.buffer(), writer.buffer()]  # both chunks came back: no third is handed
    assert writer._handed == 2
    assert all(any(chunk is mine for mine in chunks[:2]) for chunk in again)
    writer.close()


def test_own_writer_is_closed_with_the_file(tmp_path: Path) -> None:
    """pynetdicom's own receive path: a file without an association's writer."""
    data = os.urandom(CHUNK + 1)
    file = IncomingFile(tmp_path)
    file.write(data)
    file.close()
    assert file._own_writer is None
    _assert_holds(file, data)


def test_alignment_is_a_multiple_of_the_disk_block() -> None:
    assert incoming.ALIGNMENT % 512 == 0 and CHUNK % incoming.ALIGNMENT == 0


def test_incoming_file_keeps_head_size_and_digest(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)
    file = IncomingFile(tmp_path)
    file.write_file_meta("1.2.840.10008.5.1.4.1.1.2", "2.25.1", "1.2.840.10008.1.2.1")
    for piece in _pieces(data, 100_000):
        file.write(piece)
    file.flushed()  # fsync done on the helper thread, descriptor closed
    content = file.path.read_bytes()
    assert file.size == len(content) and content.endswith(data)
    assert file.head == content[: len(file.head)] and len(file.head) == 64 * 1024
    assert file.digest() == "xxh128:" + xxhash.xxh3_128(content).hexdigest()
    file.discard()
    assert not file.path.exists()


def test_chunks_in_flight_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stalled disk makes the receiver wait instead of holding every chunk in memory."""
    release = threading.Event()
    real_pwritev = os.pwritev

    def stalled(fd: int, data: list[memoryview], offset: int) -> int:
        release.wait()
        return real_pwritev(fd, data, offset)

    monkeypatch.setattr(os, "pwritev", stalled)
    writer = DiskWriter(depth=3)
    file = IncomingFile(tmp_path, writer)
    data = bytes(range(256)) * (CHUNK // 256)
    sender = threading.Thread(target=lambda: [file.write(data) for _ in range(6)])
    sender.start()
    sender.join(0.5)
    assert sender.is_alive()  # three chunks out, none written: the fourth waits
    assert writer._handed == 3
    release.set()
    sender.join(10)
    assert not sender.is_alive()
    file.flushed()
    _assert_holds(file, data * 6)
    file.discard()
    writer.close()


def test_waiting_chunks_go_down_in_one_write_and_short_writes_are_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks queued behind a slow write are written together; a short write is completed."""
    real_pwritev = os.pwritev
    slow, entered = threading.Event(), threading.Event()
    calls: list[int] = []

    def recording(fd: int, data: list[memoryview], offset: int) -> int:
        if not calls:
            entered.set()
            slow.wait(5)  # the first write stalls while the next chunks queue up
        calls.append(sum(len(v) for v in data))
        if len(calls) == 2:  # the disk takes only part of the second write
            return real_pwritev(fd, data[:1], offset)
        return real_pwritev(fd, data, offset)

    monkeypatch.setattr(os, "pwritev", recording)
    data = os.urandom(6 * CHUNK + 100)
    writer = DiskWriter()
    file = IncomingFile(tmp_path, writer)
    file.write(data[:CHUNK])
    assert entered.wait(5)
    file.write(data[CHUNK:])  # five more full chunks wait behind the first
    file.finish()  # and the last one
    slow.set()
    file.flushed()
    _assert_holds(file, data)
    assert calls[0] == CHUNK and calls[1] == 5 * CHUNK  # one call for the five
    assert calls[2] == 4 * CHUNK  # the rest of the short write
    assert calls[3] == 100  # the last bytes, short of a page, through the page cache
    assert file.direct is _direct_supported(tmp_path)
    file.discard()
    writer.close()


def test_temp_files_made_ahead_are_empty_and_taken_in_order(tmp_path: Path) -> None:
    ahead = incoming.TempFiles(tmp_path, ahead=3)
    assert ahead.fill() == 3 and len(ahead) == 3
    names = sorted(ahead.ready())
    assert sorted(tmp_path.iterdir()) == names
    assert all(path.stat().st_size == 0 for path in names)
    taken = [ahead.take() for _ in range(3)]
    assert sorted(taken) == names and ahead.take() is None  # none left: the caller makes one
    assert not ahead.ready()
    ahead.close()
    assert sorted(tmp_path.iterdir()) == names  # taken files are the takers' to remove


def test_close_removes_the_files_not_taken(tmp_path: Path) -> None:
    ahead = incoming.TempFiles(tmp_path, ahead=4)
    ahead.fill()
    kept = ahead.take()
    ahead.close()
    assert list(tmp_path.iterdir()) == [kept]


def test_a_file_made_ahead_is_written_like_a_new_one(tmp_path: Path) -> None:
    ahead = incoming.TempFiles(tmp_path, ahead=1)
    ahead.fill()
    made = ahead.take()
    assert made is not None
    writer = DiskWriter()
    data = os.urandom(2 * CHUNK + 5000)
    file = IncomingFile(tmp_path, writer, made=made)
    assert file.path == made and file.direct is _direct_supported(tmp_path)
    _write_whole(file, data)
    file.discard()
    writer.close()
    assert not any(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError):  # removed behind our back: the caller makes one
        IncomingFile(tmp_path, made=made)


def test_files_are_made_again_only_once_the_listener_is_quiet(tmp_path: Path) -> None:
    """Takes in a burst are not answered with creates on the way; the refill waits for quiet."""
    ahead = incoming.TempFiles(tmp_path, ahead=4, quiet_s=0.3)
    ahead.fill()
    ahead.start()
    try:
        started = time.monotonic()
        for _ in range(3):
            ahead.take()
        time.sleep(0.1)
        if time.monotonic() - started < 0.25:  # still inside the quiet time
            assert len(ahead) == 1
        deadline = time.monotonic() + 10
        while len(ahead) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(ahead) == 4
        assert len(list(tmp_path.iterdir())) == 4 + 3
    finally:
        ahead.close()


def test_no_folder_means_no_files_ahead(tmp_path: Path) -> None:
    ahead = incoming.TempFiles(tmp_path / "missing", ahead=2)
    assert ahead.fill() == 0 and ahead.take() is None
    ahead.close()


def test_a_receiver_keeps_the_temp_files_it_is_given_even_when_none_are_ready(
    tmp_path: Path, settings: Settings
) -> None:
    """None made yet (a full disk at start, say): the receiver still uses, and closes, these."""
    from dicom_listener.receiver import Receiver
    from dicom_listener.spool import Spool
    from prelim.database import open_database

    spool = Spool(tmp_path / "spool")
    ahead = incoming.TempFiles(spool.incoming, ahead=2)
    ahead.start()
    assert len(ahead) == 0
    database = open_database(settings)
    try:
        receiver = Receiver(database, spool, 0, ahead)
        assert receiver.temp_files is ahead
        ahead.take()  # wakes the refill: two files made once quiet
        deadline = time.monotonic() + 10
        while len(ahead) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(ahead) == 2
        receiver.close()
        assert ahead._thread is None and not any(spool.incoming.iterdir())
    finally:
        database.dispose()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("size", [0, 4097, 2 * CHUNK + 5])
def test_a_sealed_file_carries_its_fingerprint_and_is_fsynced_by_flushed(
    tmp_path: Path, size: int
) -> None:
    """Sealed: the writer thread only writes and sets the fingerprint attribute; the
    descriptor stays open until ``flushed`` fsyncs and closes it (after a link, say)."""
    data = os.urandom(size)
    writer = DiskWriter()
    before = _open_descriptors()
    file = IncomingFile(tmp_path, writer, seal=True)
    file.write(data)
    file.finish()
    assert file.sealed
    file.readable()
    linked = tmp_path / "linked.dcm"
    os.link(file.path, linked)  # what the receiver does before the fsync
    assert _open_descriptors() == before + 1  # held for the fsync
    file.flushed()
    assert _open_descriptors() == before
    file.flushed()  # again: nothing more to do, no error
    _assert_holds(file, data)
    assert os.getxattr(linked, incoming.DIGEST_XATTR).decode() == file.digest()
    file.discard()
    writer.close()
    assert [path.name for path in tmp_path.iterdir()] == ["linked.dcm"]


def test_a_sealed_file_never_fsynced_is_closed_by_discard(tmp_path: Path) -> None:
    writer = DiskWriter()
    before = _open_descriptors()
    file = IncomingFile(tmp_path, writer, seal=True)
    file.write(b"x" * 5000)
    file.finish()
    file.discard()  # refused after the data set ended: not stored
    writer.close()
    assert _open_descriptors() == before and not any(tmp_path.iterdir())


def test_without_its_writer_a_file_is_not_sealed(tmp_path: Path) -> None:
    file = IncomingFile(tmp_path, seal=True)  # pynetdicom's own receive path
    file.write(b"y" * 100)
    file.finish()
    file.flushed()
    assert not file.sealed
    with pytest.raises(OSError):
        os.getxattr(file.path, incoming.DIGEST_XATTR)
    file.discard()


def test_a_refused_fingerprint_fails_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system that refuses the attribute (after the start-up probe said yes)
    fails the file like a failed write: ``flushed`` raises, so the answer is 0xA700."""

    def refuse(*args: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(incoming.os, "setxattr", refuse)
    writer = DiskWriter()
    file = IncomingFile(tmp_path, writer, seal=True)
    file.write(b"z" * 10_000)
    file.finish()
    with pytest.raises(OSError) as raised:
        file.flushed()
    assert raised.value.errno == errno.ENOSPC
    with pytest.raises(OSError):
        file.flushed()  # and again: the failure stays
    file.discard()
    writer.close()
    assert not any(tmp_path.iterdir())


def test_chunks_are_aligned_back_to_back_and_their_region_is_reused() -> None:
    from dicom_listener.incoming import _Region

    writer = DiskWriter(depth=5)
    chunks = [writer.buffer() for _ in range(5)]
    region = writer._region
    assert region is not None and region.count == 5
    addresses = [ctypes.addressof(ctypes.c_char.from_buffer(chunk)) for chunk in chunks]
    assert all(address % incoming.ALIGNMENT == 0 for address in addresses)
    assert [b - a for a, b in zip(addresses, addresses[1:], strict=False)] == [CHUNK] * 4
    assert all(len(chunk) == CHUNK for chunk in chunks)
    writer.close()
    # The next association's writer gets the same region: no new map, no new huge page.
    again = DiskWriter(depth=5)
    again.buffer()
    assert again._region is region
    again.close()
    assert _Region.take(5) is region  # given back once more


def _transparent_huge_pages() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "never"
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else "never"


def _thp_fallbacks() -> int:
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("thp_fault_fallback "):
            return int(line.split()[1])
    return 0


def test_a_writers_chunks_are_on_huge_pages_where_the_kernel_offers_them() -> None:
    """One 2 MB huge page is one piece of memory, so a direct write from it is one disk
    request instead of one per 254 small pages."""
    from dicom_listener.incoming import _Region

    if _transparent_huge_pages() == "never":
        pytest.skip("transparent huge pages are off on this machine")
    region = _Region(16)  # a new one, not one kept from an earlier writer
    fallbacks = _thp_fallbacks()
    chunk = region.chunks[0]
    chunk[:] = b"x" * CHUNK  # the first touch brings the page in
    address = ctypes.addressof(ctypes.c_char.from_buffer(chunk))
    huge_kb = 0
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:
            low, high = (int(part, 16) for part in head.split("-"))
            inside = low <= address < high
        elif inside and line.startswith("AnonHugePages:"):
            huge_kb = int(line.split()[1])
    if huge_kb == 0 and _thp_fallbacks() > fallbacks:
        pytest.skip("the kernel asked for a huge page had none free (memory fragmented)")
    assert huge_kb >= 2048
