"""C-STORE and C-ECHO served on the DUL thread: answers, error comments, what it hands on."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.pdu_primitives import P_DATA
from sqlalchemy import func, select

from db.tables import Instance
from dicom_listener import fingerprint, handlers, incoming, record
from dicom_listener.spool import recorded_digest
from prelim.synthetic import make_ct_series
from tests.integration.listener.conftest import (
    Running,
    associate,
    encode,
    send_raw,
    store_request,
)
from tests.integration.listener.test_statuses import request_fragments, wait_until

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
EXPLICIT = str(ExplicitVRLittleEndian)


def _ct(seed: int):
    return make_ct_series(seed, slices=1, rows=64, columns=64)[0]


def _count(listener: Running) -> int:
    with listener.database.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


def test_answers_carry_message_ids_and_the_reason_for_a_failure(
    listener: Running, monkeypatch
) -> None:
    stock = []
    monkeypatch.setattr(handlers, "handle_store", lambda *a: stock.append(a) or 0xC211)
    assoc = associate(listener.port, [(CT, [EXPLICIT]), (VERIFICATION, [EXPLICIT])])
    good, short = _ct(1), _ct(2)
    short.PixelData = short.PixelData[:-2]
    answers = [assoc.send_c_store(good, msg_id=41), assoc.send_c_store(short, msg_id=42)]
    echo = assoc.send_c_echo(msg_id=43)
    assoc.release()
    assert [int(a.Status) for a in answers] == [0x0000, 0xC213]
    # The sender's log says what to fix (storescu prints the Error Comment).
    assert "ErrorComment" not in answers[0]
    assert answers[1].ErrorComment == f"pixel data has {64 * 64 * 2 - 2} of {64 * 64 * 2} bytes"
    assert int(echo.Status) == 0x0000
    assert _count(listener) == 1
    assert stock == []  # served on the DUL thread, not by pynetdicom's dispatch


def test_store_on_the_verification_context_is_left_to_pynetdicom(listener: Running) -> None:
    """pynetdicom dispatches by message type: its EVT_C_STORE handler stores it."""
    assoc = associate(listener.port, [(CT, [EXPLICIT]), (VERIFICATION, [EXPLICIT])])
    verification = next(c for c in assoc.accepted_contexts if c.abstract_syntax == VERIFICATION)
    assoc.dimse.send_msg(store_request(_ct(3), 5), verification.context_id)
    wait_until(lambda: _count(listener) == 1)
    assoc.release()
    assert _count(listener) == 1
    assert not listener.leftovers()


def test_data_before_its_command_aborts_and_leaves_nothing(listener: Running) -> None:
    assoc = associate(listener.port, [(CT, [EXPLICIT])])
    cx = assoc.accepted_contexts[0].context_id
    aborted = threading.Event()
    assoc.bind(evt.EVT_ABORTED, lambda event: aborted.set())
    fragment = P_DATA()
    fragment.presentation_data_value_list = [[cx, b"\x00" + encode(_ct(5))[:200]]]
    assoc.dul.send_pdu(fragment)
    assert aborted.wait(10)
    wait_until(lambda: not listener.handle.ae.active_associations)
    assert not listener.handle.ae.active_associations
    assert not listener.leftovers()
    assert _count(listener) == 0


def test_raw_pdu_watchers_get_pynetdicoms_own_path(listener: Running) -> None:
    """With EVT_PDU_RECV bound, the stock DT-2 and EVT_C_STORE handler serve the store."""
    assoc = associate(listener.port, [(CT, [EXPLICIT])])
    wait_until(lambda: bool(listener.handle.ae.active_associations))
    server_side = listener.handle.ae.active_associations[0]
    seen: list[object] = []
    server_side.bind(evt.EVT_PDU_RECV, lambda event: seen.append(event.pdu))
    short = _ct(6)
    short.PixelData = short.PixelData[:-2]
    good_status = assoc.send_c_store(_ct(7))
    short_status = send_raw(assoc, CT, short.SOPInstanceUID, encode(short), 2)
    assoc.release()
    assert int(good_status.Status) == 0 and short_status == 0xC213
    assert len(seen) >= 4
    assert _count(listener) == 1
    assert not listener.leftovers()


def test_cut_off_data_set_leaves_no_temp_file(listener: Running) -> None:
    ds = make_ct_series(8, slices=1, rows=256, columns=256)[0]
    assoc = associate(listener.port, [(CT, [EXPLICIT])])
    request = store_request(ds)
    fragments = list(request_fragments(assoc, request, assoc.accepted_contexts[0].context_id))
    for pdata in fragments[:2]:  # the command and the first data fragment
        assoc.dul.send_pdu(pdata)
    wait_until(lambda: listener.leftovers())
    assoc.release()  # a release in the middle of a data set ends the association
    wait_until(lambda: not listener.leftovers() and not listener.handle.ae.active_associations)
    assert not listener.leftovers()
    assert _count(listener) == 0


def test_garbage_p_data_aborts_and_the_listener_carries_on(listener: Running) -> None:
    """Random P-DATA-TF bodies (bad PDV lengths, unknown contexts, stray fragments)."""
    import random
    import struct

    rng = random.Random(7)
    for _ in range(12):
        assoc = associate(listener.port, [(CT, [EXPLICIT])])
        cx = assoc.accepted_contexts[0].context_id
        aborted = threading.Event()
        assoc.bind(evt.EVT_ABORTED, lambda event, done=aborted: done.set())
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 600)))
        if rng.random() < 0.5:  # a well-formed PDV around garbage, on our context
            body = struct.pack(">LBB", len(body) + 2, cx, rng.choice([0, 2])) + body
        assoc.dul.socket.send(struct.pack(">BBL", 0x04, 0, len(body)) + body)
        assert aborted.wait(10)
    wait_until(lambda: not listener.handle.ae.active_associations)
    assert not listener.leftovers()
    assert _count(listener) == 0
    good = associate(listener.port, [(CT, [EXPLICIT])])
    assert int(good.send_c_store(_ct(9)).Status) == 0
    good.release()


def test_a_header_longer_than_the_kept_head_is_read_from_the_finished_file(
    listener: Running, monkeypatch
) -> None:
    """The header check reads past the 64 KB kept in memory only once every byte is written."""
    from pydicom import dcmread

    from dicom_listener import incoming

    read_early = []
    real_open = incoming.IncomingFile.readable

    def watched(self: incoming.IncomingFile) -> None:
        read_early.append(not self._readable.is_set())
        real_open(self)

    monkeypatch.setattr(incoming.IncomingFile, "readable", watched)
    ds = _ct(5)
    ds.ImageComments = "x" * 9000  # long text elements before the pixel data
    ds.add_new(0x00091010, "LO", "PRIVATE")
    ds.add_new(0x00091011, "OB", bytes(300_000))  # a private blob: the header passes 64 KB
    assoc = associate(listener.port, [(CT, [EXPLICIT])])
    assert int(assoc.send_c_store(ds).Status) == 0x0000
    assoc.release()
    assert read_early  # the check did need the file
    stored = next(listener.spool_dir().rglob("*.dcm"))
    back = dcmread(stored)
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back[0x00091011].value == bytes(300_000)


def test_instances_go_into_files_made_ahead_then_into_new_ones(listener: Running) -> None:
    """The listener's files made ahead are used first; past them, and in place of one
    removed or spoiled behind its back, a data set gets a new file; quiet again, the
    stock is made."""
    temp_files = listener.handle.server.receiver.temp_files
    ahead = temp_files.ready()
    assert len(ahead) == 4  # listener_settings: files_ahead=4
    gone, spoiled = sorted(ahead)[:2]
    gone.unlink()  # an operator cleaning the folder, say
    spoiled.unlink()
    spoiled.mkdir()  # something that cannot be opened as a file
    created: list[str] = []
    real_init = incoming.IncomingFile.__init__

    def watched(self: incoming.IncomingFile, folder, writer=None, made=None, **kw) -> None:
        real_init(self, folder, writer, made, **kw)
        created.append("made ahead" if made is not None else "new")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(incoming.IncomingFile, "__init__", watched)
        assoc = associate(listener.port, [(CT, [EXPLICIT])])
        statuses = [int(assoc.send_c_store(_ct(100 + i)).Status) for i in range(6)]
        assoc.release()
    assert statuses == [0] * 6 and _count(listener) == 6
    assert "made ahead" in created and "new" in created
    stored = {path.name for path in listener.spool_dir().glob("*/*.dcm")}
    assert len(stored) == 6
    assert listener.leftovers() == [spoiled]  # not ours to remove
    spoiled.rmdir()
    wait_until(lambda: len(temp_files) == 4)  # made again once nothing arrives
    # Empty, or on ext4 record files (record.py): zeros of the record size.
    sizes = {0, record.RECORD_BYTES} if temp_files.prepared else {0}
    assert all(path.stat().st_size in sizes for path in temp_files.ready())
    assert not ahead & temp_files.ready()


def test_a_series_slices_are_expected_at_the_size_of_the_one_before(listener: Running) -> None:
    """Each data set's temp file is told the size of the last one on the association
    (so that a record's last full chunk can wait for its last write); a slice of
    another size is stored all the same."""
    expected: list[int | None] = []
    real_init = incoming.IncomingFile.__init__

    def watched(self: incoming.IncomingFile, *args, **kw) -> None:
        if kw.get("made") is not None:  # not the spare made once those ran out
            expected.append(kw.get("expected"))
        real_init(self, *args, **kw)

    series = [*make_ct_series(8, slices=3, rows=512, columns=512), _ct(9)]  # 4 made ahead
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(incoming.IncomingFile, "__init__", watched)
        assoc = associate(listener.port, [(CT, [EXPLICIT])])
        answers = [int(assoc.send_c_store(ds).Status) for ds in series]
        assoc.release()
    assert answers == [0] * 4 and _count(listener) == 4
    assert not listener.leftovers()  # named, each at its length
    sizes = []
    for ds in series:
        (path,) = listener.spool_dir().glob(f"*/{ds.SOPInstanceUID}.dcm")
        assert dcmread(path).SOPInstanceUID == ds.SOPInstanceUID  # whole
        sizes.append(path.stat().st_size)
    # (A fifth file, for the data set that would come next, may be open already.)
    assert expected[:4] == [None, *sizes[:3]]
    assert sizes[0] > 512 * 1024 > sizes[3]


def _stored(listener: Running) -> dict[str, tuple[str, str]]:
    """Each indexed instance's spool path and digest."""
    with listener.database.sessions() as session:
        return {
            row.sop_instance_uid: (row.path, row.digest)
            for row in session.scalars(select(Instance))
        }


@pytest.mark.parametrize("order", ["record", "linked_first", "portable"])
def test_each_instance_is_made_durable_in_the_order_its_file_system_allows(
    listener: Running, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    """On ext4 an instance that fits a record file is made durable by the record's one
    write, then named by the settler (a link, its folder fsynced); one that does not fit
    is sealed (its fingerprint on it), linked, then fsynced once, and no folder fsynced;
    elsewhere it is fsynced, linked, and its folder fsynced."""
    receiver = listener.handle.server.receiver
    spool = receiver.spool
    if order != "portable" and not spool.names_durable_with_file:
        pytest.skip("the spool is not on ext4")
    if order == "record" and not receiver.temp_files.prepared:
        pytest.skip("no record files here")
    if order != "record":
        monkeypatch.setattr(record, "fits", lambda size: False)
    monkeypatch.setattr(spool, "names_durable_with_file", order != "portable")
    calls: list[str] = []
    for name in ("link", "place", "sync_folder", "settle_folder"):
        real = getattr(spool, name)
        monkeypatch.setattr(
            spool,
            name,
            lambda *a, _real=real, _name=name, **kw: calls.append(_name) or _real(*a, **kw),
        )
    assoc = associate(listener.port, [(CT, [EXPLICIT])])  # after the patch: a new DataPath
    sent = [_ct(300 + i) for i in range(3)]
    assert [int(assoc.send_c_store(ds).Status) for ds in sent] == [0, 0, 0]
    assoc.release()
    listener.settle()
    # (``place`` is the fsync, then ``link``.)
    each = {
        "record": ["link"],  # by the settler, which fsyncs the folders itself
        "linked_first": ["link", "settle_folder"],
        "portable": ["place", "link", "sync_folder"],
    }[order]
    assert calls == each * 3
    linked_first = order != "portable"
    stored = _stored(listener)
    for ds in sent:
        path, digest = stored[ds.SOPInstanceUID]
        file = spool.root / path
        assert fingerprint.of_file(file) == digest
        assert recorded_digest(file) == (digest if linked_first else None)
    assert listener.leftovers() == []


def test_the_file_opened_for_a_data_set_that_never_comes_goes_back(listener: Running) -> None:
    """One instance per association, as many PACS send: the file opened after each
    answer for a next data set is given back at the release, not thrown away."""
    temp_files = listener.handle.server.receiver.temp_files
    before = temp_files.ready()
    for seed in range(3):
        assoc = associate(listener.port, [(CT, [EXPLICIT])])
        assert int(assoc.send_c_store(_ct(200 + seed)).Status) == 0
        assoc.release()
        wait_until(lambda: not listener.handle.ae.active_associations)
    assert _count(listener) == 3
    left = temp_files.ready()
    assert len(before - left) == 3  # one file used per instance, no more
    assert all(path.exists() and not any(path.read_bytes()) for path in left & before)
    assert not listener.leftovers()


def test_an_empty_stock_is_asked_once_per_data_set(listener: Running) -> None:
    """With no file made ahead left, only a data set's command asks for one: asking
    again after each answer as well would keep the listener from ever being quiet
    long enough to make more while a slow sender trickles instances in."""
    temp_files = listener.handle.server.receiver.temp_files
    asked_empty: list[int] = []
    real_take = incoming.TempFiles.take

    def take(self: incoming.TempFiles) -> Path | None:
        got = real_take(self)
        if got is None:
            asked_empty.append(1)
        return got

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(incoming.TempFiles, "take", take)
        patch.setattr(incoming.TempFiles, "_make", lambda self, count: 0)  # none made again
        while (made := real_take(temp_files)) is not None:  # the stock used up
            made.unlink()
        assoc = associate(listener.port, [(CT, [EXPLICIT])])
        answers = [int(assoc.send_c_store(_ct(300 + i)).Status) for i in range(5)]
        assoc.release()
    assert answers == [0] * 5 and _count(listener) == 5
    assert 0 < len(asked_empty) <= 5
    assert not listener.leftovers()
