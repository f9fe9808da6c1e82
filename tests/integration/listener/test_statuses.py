"""Every C-STORE status the listener answers, and malformed requests (PS3.4 Annex B)."""

from __future__ import annotations

import copy
import random

import pytest
from sqlalchemy import text

from dicom_listener import statuses
from prelim.database import open_database
from prelim.synthetic import make_ct_series
from tests.integration.listener.conftest import (
    Running,
    StartListener,
    associate,
    encode,
    send_raw,
    store_request,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def _ct(seed: int = 1, size: int = 32):
    return make_ct_series(seed, slices=1, rows=size, columns=size)[0]


def _open(listener: Running):
    assoc = associate(listener.port, [(CT, [EXPLICIT])])
    assert assoc.is_established
    return assoc


def test_disk_full_is_out_of_resources(start: StartListener) -> None:
    listener = start(min_free_disk_mb=10**9)
    assoc = _open(listener)
    assert assoc.send_c_store(_ct()).Status == statuses.OUT_OF_RESOURCES == 0xA700
    assoc.release()
    assert not listener.leftovers()


@pytest.mark.parametrize("way", ["writer thread", "aio"])
def test_failed_disk_write_is_out_of_resources(
    listener: Running, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    """An I/O error while the data set is written (the disk, not the space check) is 0xA700.

    Either way a file is written: by the association's writer thread, or (a
    record, where the kernel has native AIO) submitted from the receiving thread.
    """
    import errno
    import os

    from dicom_listener import aio

    def failing(fd: int, data: object, offset: int, *flags: int) -> int:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "pwritev", failing)
    failed: list[int] = []
    if way == "writer thread":
        monkeypatch.setattr(aio.Ring, "open", classmethod(lambda cls, depth: None))
    else:
        probe = aio.Ring.open(1)
        if probe is None:
            pytest.skip("no native AIO here")
        probe.close()
        real_wait = aio.Ring.wait

        def completions_fail(self: aio.Ring, block: bool = True) -> list[tuple[int, int]]:
            done = real_wait(self, block)
            failed.extend(ticket for ticket, _ in done)
            return [(ticket, -errno.EIO) for ticket, _ in done]

        monkeypatch.setattr(aio.Ring, "wait", completions_fail)
    assoc = _open(listener)
    answer = assoc.send_c_store(_ct(seed=3, size=512))  # more than one chunk
    assert answer.Status == statuses.OUT_OF_RESOURCES
    assert "cannot write the spool" in str(answer.ErrorComment)
    assert (way == "aio") is bool(failed)  # the AIO way was taken, and failed
    monkeypatch.undo()
    assert assoc.send_c_store(_ct(seed=4)).Status == statuses.SUCCESS
    assoc.release()
    assert not listener.leftovers()


@pytest.mark.postgres
def test_database_down_is_out_of_resources(start: StartListener, settings, postgres_url) -> None:
    database = open_database(settings.model_copy(update={"database_url": postgres_url}))
    listener = start(database)
    name = postgres_url.rsplit("/", 1)[1]
    with database.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    admin = database.engine.dialect.name  # noqa: F841 - the same server
    from sqlalchemy import create_engine

    server = create_engine(
        postgres_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT"
    )
    with server.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        conn.execute(
            text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
            {"n": name},
        )
    try:
        assoc = _open(listener)
        assert assoc.send_c_store(_ct()).Status == 0xA700
        assoc.release()
    finally:
        with server.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        server.dispose()
    # Nothing acknowledged, nothing kept: the spool holds no instance.
    assert list(listener.handle.server.incoming.parent.glob("*/*.dcm")) == []
    # And once the database is back, the same instance is stored.
    assoc = _open(listener)
    assert assoc.send_c_store(_ct()).Status == 0x0000
    assoc.release()
    database.dispose()


def test_uid_mismatch_is_a900(listener: Running) -> None:
    assoc = _open(listener)
    ds = _ct()
    status = send_raw(assoc, CT, ds.SOPInstanceUID + ".9", encode(ds))
    other_class = send_raw(assoc, CT, ds.SOPInstanceUID, encode(_with(ds, SOPClassUID="1.2.3")))
    assoc.release()
    assert status == statuses.DATASET_MISMATCH == 0xA900
    assert other_class == 0xA900


def _with(ds, **values):
    changed = copy.deepcopy(ds)
    for key, value in values.items():
        setattr(changed, key, value)
    return changed


def test_missing_uids_and_short_pixels_are_cannot_understand(listener: Running) -> None:
    ds = _ct()
    no_study = copy.deepcopy(ds)
    del no_study.StudyInstanceUID
    no_sop = copy.deepcopy(ds)
    del no_sop.SOPInstanceUID
    short = copy.deepcopy(ds)
    short.PixelData = ds.PixelData[:-2]
    assoc = _open(listener)
    results = [
        send_raw(assoc, CT, ds.SOPInstanceUID, encode(no_study), 1),
        send_raw(assoc, CT, ds.SOPInstanceUID, encode(no_sop), 2),
        send_raw(assoc, CT, ds.SOPInstanceUID, encode(short), 3),
        send_raw(assoc, CT, ds.SOPInstanceUID, b"\xff" * 300, 4),
        send_raw(assoc, CT, ds.SOPInstanceUID, encode(ds), 5),
    ]
    assoc.release()
    assert results == [0xC212, 0xC212, 0xC213, 0xC210, 0x0000]
    assert not listener.leftovers()


def _malformed(ds, rng: random.Random) -> list[tuple[str, bytes]]:
    good = encode(ds)
    pixel_at = good.rfind(b"\xe0\x7f\x10\x00")
    cases = [
        ("empty", b""),
        ("garbage", bytes(rng.randrange(256) for _ in range(4096))),
        ("header only", good[:pixel_at]),
        ("truncated in pixels", good[: pixel_at + 12 + 100]),
        ("truncated pixel header", good[: pixel_at + 6]),
        (
            "pixel length too long",
            good[: pixel_at + 8] + (len(good) * 4).to_bytes(4, "little") + good[pixel_at + 12 :],
        ),
        ("pixel length zero", good[: pixel_at + 8] + b"\x00\x00\x00\x00" + good[pixel_at + 12 :]),
        ("huge element length", good[:8] + b"\xff\xff\xff\x7f" + good[12:]),
    ]
    for cut in (1, 7, 50, 200, len(good) // 2, len(good) - 1):
        cases.append((f"cut at {cut}", good[:cut]))
    for flip in range(12):
        data = bytearray(good[: pixel_at + 12])  # flips in the header, pixels truncated away
        where = rng.randrange(len(data))
        data[where] ^= 1 << rng.randrange(8)
        cases.append((f"bit flip {flip}", bytes(data)))
    return cases


def test_malformed_requests_are_answered_never_success(listener: Running) -> None:
    rng = random.Random(1234)
    ds = _ct(size=16)
    cases = _malformed(ds, rng)
    assoc = _open(listener)
    answered = {}
    for message_id, (name, data) in enumerate(cases, start=1):
        answered[name] = send_raw(assoc, CT, ds.SOPInstanceUID, data, message_id)
    # The association survives all of it: a good instance still stores.
    final = send_raw(assoc, CT, ds.SOPInstanceUID, encode(ds), len(cases) + 1)
    assoc.release()
    assert all(status is not None for status in answered.values()), answered
    assert not [name for name, status in answered.items() if status == 0x0000], answered
    assert all(status >> 12 in (0xA, 0xC) for status in answered.values()), answered
    assert final == 0x0000
    assert not listener.leftovers()


def test_cut_off_transfer_leaves_no_temp_file(listener: Running) -> None:
    ds = _ct(size=512)
    assoc = _open(listener)
    request = store_request(ds)
    cx = assoc.accepted_contexts[0]
    sent = 0
    # Send the command and part of the dataset, then abort mid-transfer.
    for pdata in request_fragments(assoc, request, cx.context_id):
        assoc.dul.send_pdu(pdata)
        sent += 1
        if sent == 3:
            break
    assoc.abort()
    wait_until(lambda: not listener.leftovers() and not listener.handle.ae.active_associations)
    assert not listener.leftovers()


def request_fragments(assoc, request, context_id):
    from pynetdicom.dimse_messages import C_STORE_RQ

    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return message.encode_msg(context_id, 16384)


def wait_until(condition, timeout_s: float = 10.0) -> None:
    import threading

    done = threading.Event()
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        done.wait(0.05)


def test_handler_bug_is_a_failure_never_success(
    start: StartListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault injected into the store step (a bug) answers 0xC211 and leaves no temp file."""
    from dicom_listener.receiver import Receiver

    def broken(self: Receiver, *args: object, **kwargs: object) -> int:
        raise RuntimeError("injected fault")

    listener = start()
    monkeypatch.setattr(Receiver, "store", broken)
    assoc = _open(listener)
    assert assoc.send_c_store(_ct(seed=7)).Status == statuses.HANDLER_FAILED == 0xC211
    monkeypatch.undo()
    # The association and the listener survive the bug: the next instance is stored.
    assert assoc.send_c_store(_ct(seed=8)).Status == statuses.SUCCESS
    assoc.release()
    assert not listener.leftovers()
