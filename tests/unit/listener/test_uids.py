"""pynetdicom's UID conversion and transfer syntax checks, remembered (``uids.py``)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from pydicom.uid import UID
from pynetdicom import pdu_items, presentation, utils
from pynetdicom.presentation import PresentationContext

from dicom_listener import uids

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
TOO_LONG = "1." + "1" * 70


def _counting() -> tuple[Any, list[Any]]:
    calls: list[Any] = []
    original = getattr(utils.set_uid, "original", utils.set_uid)

    def set_uid(*args: Any) -> Any:
        calls.append(args[0])
        return original(*args)

    return set_uid, calls


def test_a_conversion_is_done_once_per_value_and_gives_the_same_uid() -> None:
    counted, calls = _counting()
    cached = uids.remembering(counted)
    first = cached(CT, "SOP Class UID")
    again = cached(CT.encode("ascii"), "SOP Class UID")
    assert first == CT and isinstance(first, UID)
    assert cached(CT, "SOP Class UID") is first
    assert cached(UID(CT), "SOP Class UID") == first
    assert again == CT
    assert calls == [CT, CT.encode("ascii")]  # the str and the UID share one entry
    assert cached(None, "SOP Class UID") is None


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_failed_conversion_raises_every_time_and_is_not_remembered() -> None:
    counted, calls = _counting()
    cached = uids.remembering(counted)
    for _ in range(2):
        with pytest.raises(ValueError):
            cached(TOO_LONG, "SOP Class UID")
        with pytest.raises(ValueError):
            cached("", "SOP Class UID", allow_empty=False)
    assert len(calls) == 4


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_non_conformant_uid_is_converted_and_warned_about_every_time(
    caplog: pytest.LogCaptureFixture,
) -> None:
    counted, calls = _counting()
    cached = uids.remembering(counted)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            assert cached("1.2.3.04", "SOP Class UID") == "1.2.3.04"
    assert len(calls) == 2
    assert sum("Non-conformant" in r.getMessage() for r in caplog.records) == 2


def test_a_uid_carrying_a_private_encoding_is_not_taken_from_the_cache() -> None:
    counted, calls = _counting()
    cached = uids.remembering(counted)
    private = UID("1.2.3.4")
    private.set_private_encoding(False, True)
    cached("1.2.3.4", "Transfer Syntax Name")
    result = cached(private, "Transfer Syntax Name")
    assert result is not None and result.is_little_endian and not result.is_implicit_VR
    assert calls == ["1.2.3.4", private]


# Clean, repeated, as bytes and as a UID; then what pynetdicom refuses or warns about.
SYNTAXES: list[Any] = [
    EXPLICIT,
    EXPLICIT,
    b"1.2.840.10008.1.2",
    UID("1.2.840.10008.1.2.4.50"),
    "1.2.3.04",  # non-conformant (a leading zero)
    CT,  # not a transfer syntax
    "1.2.3.4.5",  # private, conformant
    None,
]


def _added(add: Any, caplog: pytest.LogCaptureFixture) -> tuple[list[str], list[str]]:
    context = PresentationContext()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pynetdicom"):
        for syntax in SYNTAXES:
            add(context, syntax)
        with pytest.raises(ValueError):
            add(context, TOO_LONG)  # invalid
    return list(context.transfer_syntax), [r.getMessage() for r in caplog.records]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_adding_transfer_syntaxes_does_what_pynetdicom_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    original = getattr(
        PresentationContext.add_transfer_syntax,
        "original",
        PresentationContext.add_transfer_syntax,
    )
    expected, expected_logs = _added(original, caplog)
    remembered = uids.remembering_add(original)
    for _ in range(2):  # the second time from the cache
        assert _added(remembered, caplog) == (expected, expected_logs)
    assert expected_logs  # the non-conformant and the non-transfer syntax were named


def test_install_reaches_every_module_that_imported_set_uid() -> None:
    uids.install()
    uids.install()  # idempotent: not wrapped twice
    for module in (utils, pdu_items, presentation):
        assert module.set_uid.original is not None
        assert not hasattr(module.set_uid.original, "original")
    assert not hasattr(PresentationContext.add_transfer_syntax.original, "original")
    item = pdu_items.AbstractSyntaxSubItem()
    item.abstract_syntax_name = CT
    assert item.abstract_syntax_name == CT
