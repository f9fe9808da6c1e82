"""Record files (record.py) and their settling (settle.py): one durable write, named later."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from dicom_listener import aio, record
from dicom_listener.incoming import CHUNK, DiskWriter, IncomingFile, TempFiles, records_possible
from dicom_listener.settle import Settler, Waiting, settle
from dicom_listener.spool import DIGEST_XATTR, Spool


def _dicomish(size: int) -> bytes:
    """``size`` random bytes that start as a DICOM file does (preamble, "DICM")."""
    assert size >= 132
    return bytes(128) + b"DICM" + os.urandom(size - 132)


def _digest(data: bytes) -> str:
    return "xxh128:" + xxhash.xxh3_128(data).hexdigest()


def _spool(tmp_path: Path) -> Spool:
    spool = Spool(tmp_path / "spool")
    if not records_possible(spool):
        pytest.skip("records need ext4 with direct I/O")
    return spool


def _made(spool: Spool) -> Path:
    made = TempFiles(spool.incoming, ahead=1, prepared=True)
    assert made.fill() == 1
    path = made.take()
    assert path is not None
    return path


def _record(
    spool: Spool, data: bytes, writer: DiskWriter, ring: aio.Ring | None = None
) -> IncomingFile:
    file = IncomingFile(spool.incoming, writer, made=_made(spool), seal=True, ring=ring)
    for start in range(0, len(data), 70_001):
        file.write(data[start : start + 70_001])
    file.finish()
    file.flushed()
    return file


def test_a_trailer_is_read_back_only_whole_and_only_for_its_file(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    path = _made(spool)
    nonce = record.nonce_of(path)
    assert nonce is not None and len(nonce) == 16
    assert record.read(path, nonce) is None  # zeros: no record yet
    data = _dicomish(10_000)
    page = record.trailer(len(data), nonce, _digest(data))
    with path.open("r+b") as file:
        file.write(data)
        file.seek(3 * record.PAGE)  # the page after the last byte's
        file.write(page)
    assert record.read(path, nonce) == (len(data), _digest(data))
    assert record.read(path, bytes(16)) is None  # another file's nonce
    with path.open("r+b") as file:
        file.seek(5)
        file.write(b"X")  # the bytes no longer match the fingerprint
    assert record.read(path, nonce) is None


def test_what_fits_leaves_a_page_for_the_trailer() -> None:
    assert record.fits(0) and record.fits(1)
    assert record.fits(record.RECORD_BYTES - 2 * record.PAGE + 1)
    assert record.fits(record.RECORD_BYTES - record.PAGE)
    assert not record.fits(record.RECORD_BYTES - record.PAGE + 1)
    assert not record.fits(record.RECORD_BYTES)
    assert record.nonce_of(Path("rx-" + "ab" * 16 + ".rec")) == bytes.fromhex("ab" * 16)
    assert record.nonce_of(Path("rx-" + "ab" * 16 + ".part")) is None
    assert record.nonce_of(Path("rx-zz.rec")) is None


def test_record_files_made_ahead_are_zeros_of_the_record_size(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    made = TempFiles(spool.incoming, ahead=3, prepared=True)
    assert made.fill() == 3
    names = made.ready()
    assert len(names) == 3
    for path in names:
        assert path.name.endswith(record.SUFFIX)
        assert path.stat().st_size == record.RECORD_BYTES
        assert not any(path.read_bytes())
    made.close()
    assert not any(spool.incoming.iterdir())


@pytest.fixture(params=["writer thread", "aio"])
def ring(request: pytest.FixtureRequest) -> Iterator[aio.Ring | None]:
    """No ring (the writer thread writes), or an AIO ring (this thread submits)."""
    if request.param == "writer thread":
        yield None
        return
    opened = aio.Ring.open(8)
    if opened is None:
        pytest.skip("no native AIO here")
    yield opened
    assert len(opened) == 0  # nothing left in flight
    opened.close()


@pytest.mark.parametrize(
    "size",
    [200, 4095, 4096, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345, record.RECORD_BYTES - 4096],
)
def test_an_instance_that_fits_is_finished_as_a_record(
    tmp_path: Path, size: int, ring: aio.Ring | None
) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    data = _dicomish(size)
    file = _record(spool, data, writer, ring)
    # Every write from this thread: each full chunk, then the last one.
    assert ring is None or ring.submitted == size // CHUNK + 1
    assert file.record
    assert record.read(file.path, record.nonce_of(file.path)) == (size, _digest(data))
    assert file.path.read_bytes()[:size] == data
    assert file.digest() == _digest(data)
    writer.close()


@pytest.mark.parametrize(
    "size", [record.RECORD_BYTES - 4095, record.RECORD_BYTES, record.RECORD_BYTES + 5]
)
def test_one_that_does_not_fit_is_written_the_ordinary_way_at_its_length(
    tmp_path: Path, size: int, ring: aio.Ring | None
) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    data = os.urandom(size)
    file = _record(spool, data, writer, ring)
    assert not file.record
    assert file.path.read_bytes() == data  # cut to its length: no zeros after it
    writer.close()


def _settled(spool: Spool, data: bytes, relative: str) -> None:
    dest = spool.root / relative
    assert dest.read_bytes() == data
    assert os.getxattr(dest, DIGEST_XATTR).decode() == _digest(data)


def test_settling_names_the_record_and_only_then_drops_its_record_name(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    data = os.urandom(300_000)
    file = _record(spool, data, writer)
    relative = spool.relative_path("1.2.3", "1.2.3.4")
    assert settle(spool, [Waiting(file.path, relative, len(data), _digest(data))]) == 1
    _settled(spool, data, relative)
    assert not file.path.exists()
    writer.close()


def test_a_file_already_at_the_name_stays_and_the_record_goes(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    relative = spool.relative_path("1.2.3", "1.2.3.4")
    first = spool.root / relative
    first.parent.mkdir(parents=True)
    first.write_bytes(b"the first copy")
    data = os.urandom(5000)
    file = _record(spool, data, writer)
    assert settle(spool, [Waiting(file.path, relative, len(data), _digest(data))]) == 0
    assert first.read_bytes() == b"the first copy"
    assert not file.path.exists()
    writer.close()


def test_a_record_linked_before_a_crash_is_settled_again(tmp_path: Path) -> None:
    """Step 1 done (both names), step 3 not: settling it again finishes it."""
    spool = _spool(tmp_path)
    writer = DiskWriter()
    data = os.urandom(70_000)
    file = _record(spool, data, writer)
    relative = spool.relative_path("1.2.3", "1.2.3.5")
    assert spool.link(file.path, relative, keep_temp=True) is not None
    assert settle(spool, [Waiting(file.path, relative, len(data), _digest(data))]) == 1
    _settled(spool, data, relative)
    assert not file.path.exists()
    writer.close()


def test_the_settler_names_records_once_quiet_and_drain_names_the_rest(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    settler = Settler(spool, quiet_s=0.05, batch=1000, max_wait_s=60)
    items = []
    for index in range(3):
        data = os.urandom(20_000 + index)
        file = _record(spool, data, writer)
        relative = spool.relative_path("1.2.3", f"1.2.3.{index}")
        settler.add(file.path, relative, len(data), _digest(data))
        items.append((data, relative))
    assert settler.waiting(items[0][1])
    deadline = time.monotonic() + 10
    while len(settler) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(settler) == 0
    time.sleep(0.05)  # the batch taken is being settled
    settler.drain()  # waits for it
    for data, relative in items:
        _settled(spool, data, relative)
        assert not settler.waiting(relative)
    # A busy listener (never quiet): drain names what waits at once.
    busy = Settler(spool, quiet_s=60, batch=1000, max_wait_s=60)
    data = os.urandom(999)
    file = _record(spool, data, writer)
    relative = spool.relative_path("1.2.3", "1.2.3.9")
    busy.add(file.path, relative, len(data), _digest(data))
    time.sleep(0.1)
    assert not (spool.root / relative).exists()
    busy.drain()
    _settled(spool, data, relative)
    busy.close()
    settler.close()
    writer.close()
    assert not [p for p in spool.incoming.iterdir() if p.name.endswith(record.SUFFIX)]


def test_close_settles_what_waits(tmp_path: Path) -> None:
    spool = _spool(tmp_path)
    writer = DiskWriter()
    settler = Settler(spool, quiet_s=60, batch=1000, max_wait_s=60)
    data = os.urandom(4096)
    file = _record(spool, data, writer)
    relative = spool.relative_path("1.2.3", "1.2.3.7")
    settler.add(file.path, relative, len(data), _digest(data))
    closer = threading.Thread(target=settler.close)
    closer.start()
    closer.join(10)
    assert not closer.is_alive()
    _settled(spool, data, relative)
    writer.close()


def test_a_record_that_cannot_be_named_is_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed step (a full disk, say) leaves the record waiting; a later batch names it."""
    spool = _spool(tmp_path)
    writer = DiskWriter()
    data = os.urandom(10_000)
    file = _record(spool, data, writer)
    relative = spool.relative_path("1.2.3", "1.2.3.8")
    real_link = spool.link
    failures = []

    def link(*args: object, **kwargs: object) -> object:
        if not failures:
            failures.append(1)
            raise OSError(28, "No space left on device")
        return real_link(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(spool, "link", link)
    settler = Settler(spool, quiet_s=0.01, batch=1000, max_wait_s=60)
    settler.add(file.path, relative, len(data), _digest(data))
    deadline = time.monotonic() + 10
    while not (spool.root / relative).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    settler.drain()
    assert failures == [1]
    _settled(spool, data, relative)
    assert not settler.waiting(relative) and len(settler) == 0
    settler.close()
    writer.close()


def test_a_record_that_does_not_start_as_a_dicom_file_is_none(tmp_path: Path) -> None:
    """A file made ahead and never used is told by its first page (no "DICM" at 128)."""
    spool = _spool(tmp_path)
    writer = DiskWriter()
    data = os.urandom(5000)
    file = _record(spool, data, writer)
    assert file.record
    assert record.read(file.path, record.nonce_of(file.path)) is None
    writer.close()
