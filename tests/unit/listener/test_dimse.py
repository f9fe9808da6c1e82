"""The hand-encoded DIMSE pieces agree with pydicom's and pynetdicom's encoders."""

from __future__ import annotations

import io

import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, decode

from dicom_listener.dimse import (
    ProtocolError,
    command_pdus,
    decode_command,
    encode_response,
)
from dicom_listener.incoming import file_meta

CT = "1.2.840.10008.5.1.4.1.1.2"
INSTANCE = "1.2.826.0.1.3680043.8.498.12345"  # odd length: padded


def test_store_response_decodes_as_pynetdicom_would() -> None:
    encoded = encode_response(0x8001, 7, 0xC213, CT, INSTANCE, "pixel data has 10 of 20 bytes")
    ds = decode(io.BytesIO(encoded), True, True)
    assert ds.CommandGroupLength == len(encoded) - 12
    assert ds.CommandField == 0x8001
    assert ds.MessageIDBeingRespondedTo == 7
    assert ds.CommandDataSetType == 0x0101
    assert ds.Status == 0xC213
    assert ds.AffectedSOPClassUID == CT
    assert ds.AffectedSOPInstanceUID == INSTANCE
    assert ds.ErrorComment == "pixel data has 10 of 20 bytes"
    # Tags in ascending order, as PS3.5 requires of a data set.
    tags = [elem.tag for elem in ds]
    assert tags == sorted(tags)


def test_success_carries_no_error_comment_and_echo_has_no_instance() -> None:
    ok = decode(io.BytesIO(encode_response(0x8001, 1, 0, CT, INSTANCE, "ignored")), True, True)
    assert "ErrorComment" not in ok and ok.Status == 0
    echo = decode(io.BytesIO(encode_response(0x8030, 2, 0, "1.2.840.10008.1.1", None)), True, True)
    assert echo.CommandField == 0x8030 and "AffectedSOPInstanceUID" not in echo


def test_decode_command_reads_what_pynetdicom_encodes() -> None:
    request = C_STORE()
    request.MessageID = 12
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = INSTANCE
    request.Priority = 1
    request.DataSet = io.BytesIO(b"\x08\x00\x16\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    command = b"".join(
        data[1:]
        for pdata in message.encode_msg(1, 16384)
        for _cx, data in pdata.presentation_data_value_list
        if data[0] & 1
    )
    elements = decode_command(command)
    assert int.from_bytes(elements[0x0100], "little") == 0x0001
    assert int.from_bytes(elements[0x0110], "little") == 12
    assert int.from_bytes(elements[0x0700], "little") == 1
    assert elements[0x1000].rstrip(b"\0") == INSTANCE.encode()


@pytest.mark.parametrize(
    "garbage",
    [b"\x00\x00\x00", b"\x00\x00\x00\x01\x04\x00\x00\x00", b"\x08\x00\x16\x00\x02\x00\x00\x00xx"],
    ids=["short header", "value past the end", "outside group 0000"],
)
def test_broken_command_sets_are_protocol_errors(garbage: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_command(garbage)


def test_command_pdus_fit_the_peers_maximum() -> None:
    command = encode_response(0x8001, 1, 0, CT, INSTANCE)
    whole = command_pdus(3, command, 0)
    assert len(whole) == 1 and whole[0][0] == 0x04 and whole[0][10] == 3 and whole[0][11] == 0x03
    pieces = command_pdus(3, command, 32)
    assert all(len(pdu) <= 32 + 6 for pdu in pieces)
    assert [pdu[11] for pdu in pieces] == [0x01] * (len(pieces) - 1) + [0x03]
    assert b"".join(pdu[12:] for pdu in pieces) == command


def test_file_meta_is_what_pynetdicom_writes() -> None:
    for ts in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50"):
        expected = DicomBytesIO()
        expected.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(
            expected,
            create_file_meta(
                sop_class_uid=UID(CT), sop_instance_uid=UID(INSTANCE), transfer_syntax=UID(ts)
            ),
        )
        assert file_meta(CT, INSTANCE, ts) == expected.getvalue()
