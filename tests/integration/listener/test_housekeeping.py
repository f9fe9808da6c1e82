"""The accept loop's garbage collection, start-up freezing, the read-ahead buffer's release."""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

import pytest

from dicom_listener import transport
from tests.integration.listener.conftest import Running, associate, wait_until

VERIFICATION = "1.2.840.10008.1.1"


def _acceptors(listener: Running) -> list[Any]:
    return [a for a in listener.handle.ae.active_associations if not a.is_requestor]


def test_full_collection_waits_until_no_association_is_active(
    listener: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    collections: list[int] = []
    monkeypatch.setattr(transport, "gc", SimpleNamespace(collect=lambda: collections.append(1)))
    server = listener.handle.server
    assoc = associate(listener.port, [(VERIFICATION, ["1.2.840.10008.1.2"])])
    assert assoc.is_established
    try:
        assert wait_until(lambda: bool(_acceptors(listener)))
        # pynetdicom's loop would collect on this turn, and on every later one it counts.
        for _ in range(5):
            server._gc[0] = server._gc[1]
            server.service_actions()
        assert collections == []
        assert int(assoc.send_c_echo().Status) == 0x0000  # the association still serves
    finally:
        assoc.release()
    assert wait_until(lambda: not _acceptors(listener))
    server._gc[0] = server._gc[1]
    server.service_actions()
    assert collections
    assert server._gc[0] < server._gc[1]  # counted again from the start


def test_start_up_objects_are_frozen_out_of_collections() -> None:
    before = gc.get_freeze_count()
    kept = [[] for _ in range(1000)]  # alive now: frozen
    try:
        transport.freeze_start_up()
        assert gc.get_freeze_count() >= before + len(kept)
        # A collection walks the three generations only: the frozen objects are not in them.
        walked = {id(o) for o in gc.get_objects()}
        assert not any(id(o) in walked for o in kept)
        assert id(kept) not in walked
    finally:
        gc.unfreeze()


def test_read_ahead_buffer_is_released_when_the_association_ends(listener: Running) -> None:
    assoc = associate(listener.port, [(VERIFICATION, ["1.2.840.10008.1.2"])])
    assert assoc.is_established
    try:
        assert wait_until(lambda: bool(_acceptors(listener)))
        sock = _acceptors(listener)[0].dul.socket
        assert int(assoc.send_c_echo().Status) == 0x0000
        assert sock._rx is not None  # the echo was read through it
    finally:
        assoc.release()
    assert wait_until(lambda: sock.socket is None or sock.socket.fileno() < 0)
    assert wait_until(lambda: sock._rx is None)
    assert sock._rx_view is None
