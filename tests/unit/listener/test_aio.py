"""Native AIO (aio.py) and the record files written with it (incoming.py)."""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_listener import aio, record
from dicom_listener.incoming import CHUNK, DiskWriter, IncomingFile
from dicom_listener.spool import Spool
from tests.unit.listener.test_record import _dicomish, _made, _spool


@pytest.fixture
def ring() -> Iterator[aio.Ring]:
    opened = aio.Ring.open(8)
    if opened is None:
        pytest.skip("no native AIO here")
    yield opened
    opened.close()


def _direct_file(tmp_path: Path, size: int) -> int:
    path = tmp_path / "target"
    path.write_bytes(bytes(size))
    try:
        return os.open(path, os.O_RDWR | os.O_DIRECT)
    except OSError:
        pytest.skip("no direct I/O here")


def _pages(data: bytes) -> memoryview:
    buffer = mmap.mmap(-1, len(data))  # page-aligned, as direct I/O wants
    buffer[:] = data
    return memoryview(buffer)


def test_writes_are_collected_by_ticket_with_their_lengths(tmp_path: Path, ring: aio.Ring) -> None:
    fd = _direct_file(tmp_path, 4 * 4096)
    first, second = _pages(b"a" * 4096), _pages(b"b" * 8192)
    tickets = [ring.submit(fd, [first], 0), ring.submit(fd, [second], 4096, os.RWF_DSYNC)]
    assert len(ring) == 2 and ring.submitted == 2
    done = dict(ring.wait())
    assert done == {tickets[0]: 4096, tickets[1]: 8192}
    assert len(ring) == 0
    assert ring.wait(block=False) == []  # nothing in flight: returns at once
    os.close(fd)
    assert (tmp_path / "target").read_bytes() == b"a" * 4096 + b"b" * 8192 + bytes(4096)


def test_a_write_the_kernel_refuses_comes_back_as_a_negative_errno(
    tmp_path: Path, ring: aio.Ring
) -> None:
    fd = _direct_file(tmp_path, 4096)
    unaligned = memoryview(bytearray(100))  # direct I/O needs whole blocks
    ticket = ring.submit(fd, [unaligned], 0)
    [(got, result)] = ring.wait()
    assert got == ticket and result == -errno.EINVAL
    os.close(fd)


def test_a_bad_descriptor_fails_the_submission_and_leaves_nothing_in_flight(
    ring: aio.Ring,
) -> None:
    with pytest.raises(OSError) as raised:
        ring.submit(987654, [_pages(bytes(4096))], 0)
    assert raised.value.errno == errno.EBADF
    assert len(ring) == 0 and ring.submitted == 0


def test_no_more_than_its_depth_is_in_flight(tmp_path: Path) -> None:
    ring = aio.Ring.open(1)
    if ring is None:
        pytest.skip("no native AIO here")
    fd = _direct_file(tmp_path, 8192)
    ring.submit(fd, [_pages(bytes(4096))], 0)
    with pytest.raises(OSError) as raised:
        ring.submit(fd, [_pages(bytes(4096))], 4096)
    assert raised.value.errno == errno.EAGAIN
    ring.close()  # waits for the one in flight
    assert len(ring) == 0
    os.close(fd)


def _aio_file(
    spool: Spool, writer: DiskWriter, ring: aio.Ring, expected: int | None
) -> IncomingFile:
    return IncomingFile(
        spool.incoming, writer, made=_made(spool), seal=True, ring=ring, expected=expected
    )


def test_a_failed_aio_write_fails_flushed_and_the_file_is_discarded(
    tmp_path: Path, ring: aio.Ring, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    real_wait = aio.Ring.wait

    def failing(self: aio.Ring, block: bool = True) -> list[tuple[int, int]]:
        return [(ticket, -errno.EIO) for ticket, _ in real_wait(self, block)]

    monkeypatch.setattr(aio.Ring, "wait", failing)
    file = _aio_file(spool, writer, ring, expected=None)
    file.write(_dicomish(2 * CHUNK + 5000))
    file.finish()
    with pytest.raises(OSError) as raised:
        file.flushed()
    assert raised.value.errno == errno.EIO
    with pytest.raises(OSError):  # and again: the store reports it, whoever asks
        file.flushed()
    file.discard()
    assert not file.path.exists() and len(ring) == 0
    writer.close()  # every chunk given back: close would wait forever otherwise


def test_a_refused_submission_hands_the_file_to_the_writer_thread(
    tmp_path: Path, ring: aio.Ring, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    real_submit = aio.Ring.submit
    calls = []

    def second_fails(self: aio.Ring, *args: object) -> int:
        calls.append(args)
        if len(calls) == 2:
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        return real_submit(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(aio.Ring, "submit", second_fails)
    file = _aio_file(spool, writer, ring, expected=None)
    data = _dicomish(3 * CHUNK + 100)
    file.write(data)
    file.finish()
    file.flushed()
    assert len(calls) == 2  # the rest went to the writer thread, the record too
    assert file.record
    assert record.read_data(file.path, record.nonce_of(file.path)) is not None
    assert file.path.read_bytes()[: len(data)] == data
    writer.close()


def test_a_record_cut_off_mid_way_waits_for_its_writes_before_it_goes(
    tmp_path: Path, ring: aio.Ring
) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    file = _aio_file(spool, writer, ring, expected=None)
    file.write(_dicomish(2 * CHUNK + 10))  # two chunks in flight, the rest never comes
    assert ring.submitted == 2
    file.discard()
    assert len(ring) == 0 and not file.path.exists()
    writer.close()


def test_the_header_can_be_read_back_before_the_record_is_durable(
    tmp_path: Path, ring: aio.Ring
) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    file = _aio_file(spool, writer, ring, expected=None)
    data = _dicomish(CHUNK + 3000)
    file.write(data)
    file.finish()
    file.advance()  # the last write started (the others waited for)
    file.advance()  # and then nothing more to do
    file.readable()  # every byte in the file
    assert file.path.read_bytes()[: len(data)] == data
    file.flushed()
    assert file.record and len(ring) == 0
    writer.close()


def test_the_last_full_chunk_goes_with_the_records_last_write(
    tmp_path: Path, ring: aio.Ring
) -> None:
    """Sized like the one before it, a data set's last full chunk waits for its end."""
    spool = _spool(tmp_path)
    writer = DiskWriter()
    for seed in range(3):  # the writer's chunks are reused from one file to the next
        data = _dicomish(2 * CHUNK + 16_000 + seed)
        before = ring.submitted
        file = _aio_file(spool, writer, ring, expected=len(data) - seed)
        for start in range(0, len(data), 131_060):  # as 128 KB PDUs bring it
            file.write(data[start : start + 131_060])
        file.finish()
        file.advance()
        file.flushed()
        assert ring.submitted - before == 2  # the first chunk, then the rest and the trailer
        assert file.record
        assert record.read_data(file.path, record.nonce_of(file.path)) is not None
        assert file.path.read_bytes()[: len(data)] == data
        file.discard()
    writer.close()  # every chunk given back


def test_a_chunk_kept_back_goes_on_its_own_when_more_comes(tmp_path: Path, ring: aio.Ring) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    data = _dicomish(3 * CHUNK + 5000)
    file = _aio_file(spool, writer, ring, expected=CHUNK + 100)  # a wrong guess
    file.write(data)
    file.finish()
    file.flushed()
    assert ring.submitted == 3 + 1  # each full chunk alone, then the last write
    assert record.read_data(file.path, record.nonce_of(file.path)) is not None
    assert file.path.read_bytes()[: len(data)] == data
    file.discard()
    writer.close()


def test_a_chunk_kept_back_is_written_by_the_thread_when_no_record_can_hold_it(
    tmp_path: Path, ring: aio.Ring
) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    data = _dicomish(record.RECORD_BYTES + 5)
    file = _aio_file(spool, writer, ring, expected=3 * CHUNK + 1000)  # the third chunk waits
    file.write(data)
    file.finish()
    file.flushed()
    assert not file.record
    assert ring.submitted == 2  # the first two; the third and the rest by the writer thread
    assert file.path.read_bytes() == data  # cut to its length
    file.discard()
    writer.close()


def test_a_chunk_kept_back_is_dropped_with_its_file(tmp_path: Path, ring: aio.Ring) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    file = _aio_file(spool, writer, ring, expected=2 * CHUNK + 10)
    file.write(_dicomish(2 * CHUNK + 5))  # the second chunk is kept back; the rest never comes
    assert ring.submitted == 1
    file.discard()
    assert not file.path.exists() and len(ring) == 0
    writer.close()  # the kept chunk was given back


def test_available_says_whether_a_context_can_be_had(monkeypatch: pytest.MonkeyPatch) -> None:
    probe = aio.Ring.open(1)
    assert aio.available() is (probe is not None)  # here: whichever it is
    if probe is not None:
        probe.close()
    monkeypatch.setattr(aio, "_loaded", None)  # off Linux, or an unknown machine
    assert aio.Ring.open(8) is None
    assert not aio.available()


def test_a_failed_or_short_completion_is_an_oserror() -> None:
    assert aio.failure(-errno.ENOSPC).errno == errno.ENOSPC
    assert aio.failure(4096).errno == errno.EIO  # fewer bytes than asked


def test_a_data_set_expected_too_large_for_a_record_goes_to_the_writer_thread(
    tmp_path: Path, ring: aio.Ring
) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    data = _dicomish(3 * CHUNK)
    file = _aio_file(spool, writer, ring, expected=10 * 1024 * 1024)  # a radiograph came before
    file.write(data)
    file.finish()
    file.flushed()
    assert ring.submitted == 0  # nothing from this thread: no wait for AIO writes at 1 MB
    assert file.record  # the writer thread's record, as without AIO
    assert file.path.read_bytes()[: len(data)] == data
    file.discard()
    writer.close()
