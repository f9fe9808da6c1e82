"""Read a received file's header values straight from its bytes.

:func:`dicom_listener.header.read_header` runs for every instance received,
and building a pydicom dataset of every element costs about a millisecond per
CT slice. :func:`scan` walks the top-level elements of the ordinary encodings
instead (explicit or implicit VR little endian, encapsulated pixel data),
decodes the few values the header needs, and applies the header's checks. It
answers ``None`` for anything else, for any doubt and for any problem, a
rejection included: the caller then reads the file with pydicom, whose verdict
is the reference. So a scanned file is one on which pydicom 3.0 would succeed
without a warning and give the same values; each rule below says which part of
pydicom's reader it follows.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydicom import config
from pydicom.charset import default_encoding, python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.hooks import hooks, raw_element_value, raw_element_vr
from pydicom.uid import UID, AllTransferSyntaxes, ImplicitVRLittleEndian
from pydicom.valuerep import MAX_VALUE_LEN, STR_VR_REGEXES, VALIDATORS, validate_pn

_FIRST_READ = 16 * 1024  # without a head: the header of a typical instance
_LATER_READ = 16 * 1024  # a window read past the head
_DEFER_BYTES = 64 * 1024  # pydicom defers longer values (the header's defer_size)
_MAX_TEXT = 1024  # longer wanted values are not ordinary: pydicom decides
_MAX_DEPTH = 16  # sequences nested deeper are not ordinary either
_UNDEFINED = 0xFFFFFFFF

_CHARSET = 0x00080005
_PIXEL_DATA = 0x7FE00010
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)
_ROWS, _COLUMNS, _SAMPLES, _BITS, _FRAMES = (
    0x00280010,
    0x00280011,
    0x00280002,
    0x00280100,
    0x00280008,
)
_PIXEL_REPRESENTATION = 0x00280103
_REQUEST_ATTRIBUTES = 0x00400275
_REQUESTED_PRIORITY = 0x00401003
_ITEM = b"\xfe\xff\x00\xe0"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0"

# Text values the header reads: tag -> (keyword, VR). An explicit VR file must say the same VR.
_TEXT: dict[int, tuple[str, bytes]] = {
    0x00080016: ("SOPClassUID", b"UI"),
    0x00080018: ("SOPInstanceUID", b"UI"),
    0x00080020: ("StudyDate", b"DA"),
    0x00080030: ("StudyTime", b"TM"),
    0x00080050: ("AccessionNumber", b"SH"),
    0x00080060: ("Modality", b"CS"),
    0x00080090: ("ReferringPhysicianName", b"PN"),
    0x00081030: ("StudyDescription", b"LO"),
    0x00100010: ("PatientName", b"PN"),
    0x00100020: ("PatientID", b"LO"),
    0x00100030: ("PatientBirthDate", b"DA"),
    0x00100040: ("PatientSex", b"CS"),
    0x0020000D: ("StudyInstanceUID", b"UI"),
    0x0020000E: ("SeriesInstanceUID", b"UI"),
    0x0032000C: ("StudyPriorityID", b"CS"),
    0x00401003: ("RequestedProcedurePriority", b"SH"),
}
_OTHER = (_CHARSET, _ROWS, _COLUMNS, _SAMPLES, _BITS, _FRAMES, _PIXEL_REPRESENTATION)
_WANTED = frozenset(_TEXT) | frozenset(_OTHER) | frozenset(_PIXEL_TAGS) | {_REQUEST_ATTRIBUTES}

# Explicit VR element header size by VR: 12 bytes for those with a 32-bit length.
_LONG_VRS = b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split()
_SHORT_VRS = b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split()
_HEADER_BYTES = {vr: 12 for vr in _LONG_VRS} | {vr: 8 for vr in _SHORT_VRS}
_EXPLICIT = struct.Struct("<HH2sH").unpack_from
_IMPLICIT = struct.Struct("<HHL").unpack_from
_U32 = struct.Struct("<L").unpack_from

# Codecs whose decoded names pydicom's PersonName re-encodes without loss.
_ROUND_TRIP = frozenset({"iso8859", "latin_1", "UTF8"})
# The same codecs by the names CPython decodes without a lookup.
_DIRECT_NAMES = {"iso8859": "latin-1", "latin_1": "latin-1", "UTF8": "utf-8"}
_MAX_LENGTH = MAX_VALUE_LEN
_UI_PATTERN = STR_VR_REGEXES["UI"]


def _syntaxes() -> dict[str, bool]:
    """Transfer syntax -> is compressed, for those pydicom reads as little endian, not deflated."""
    found: dict[str, bool] = {}
    for uid in AllTransferSyntaxes:
        syntax = UID(uid)
        if syntax.is_little_endian and not syntax.is_deflated and "Deflate" not in syntax.name:
            found[str(syntax)] = syntax.is_compressed
    return found


_SYNTAXES = _syntaxes()


# A recorded element: value offset, length, VR (None when implicit).
_Entry = tuple[int, int, bytes | None]
_Found = dict[int, _Entry]


class _Fallback(Exception):
    """The bytes are not the ordinary case read here: pydicom decides."""


@dataclass(frozen=True)
class Scan:
    """What the header needs, as pydicom's ``ds.get`` would give it, of a clean file."""

    transfer_syntax_uid: str
    values: dict[str, str]  # keyword -> decoded text; absent elements are missing
    priorities: list[str | None]  # Requested Procedure Priority, Study Priority ID, then items'


class _Bytes:
    """The file's bytes: the caller's head in memory, the rest read in windows when needed."""

    __slots__ = ("buf", "base", "end", "size", "_head", "_path", "_file", "_ready")

    def __init__(
        self,
        path: Path,
        head: bytes | memoryview | None,
        size: int,
        ready: Callable[[], None] | None = None,
    ) -> None:
        self._path = path
        self._file: BinaryIO | None = None
        self._ready = ready
        self.size = size
        if head is None:
            self._file = self._open()
            data = self._file.read(min(size, _FIRST_READ))
        else:
            data = bytes(head[:size])
        self._head = data
        self.buf, self.base, self.end = data, 0, len(data)

    def window(self, pos: int, n: int) -> None:
        """Make bytes ``[pos, pos + n)`` part of ``buf``; past the file's end is a fallback."""
        if pos < 0 or n < 0 or pos + n > self.size:
            raise _Fallback
        if pos + n <= len(self._head):
            self.buf, self.base, self.end = self._head, 0, len(self._head)
            return
        if self._file is None:
            self._file = self._open()
        self._file.seek(pos)
        data = self._file.read(max(n, _LATER_READ))
        if len(data) < n:
            raise _Fallback  # shorter than its stated size
        self.buf, self.base, self.end = data, pos, pos + len(data)

    def _open(self) -> BinaryIO:
        if self._ready is not None:
            self._ready()
        return self._path.open("rb")

    def take(self, pos: int, n: int) -> bytes:
        if pos < self.base or pos + n > self.end:
            self.window(pos, n)
        i = pos - self.base
        return self.buf[i : i + n]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def scan(
    path: Path,
    head: bytes | memoryview | None,
    size: int,
    ready: Callable[[], None] | None = None,
) -> Scan | None:
    """The header values of a clean, ordinary file, or ``None`` to let pydicom decide.

    ``ready`` is called before the file itself is read, if it must be.
    """
    if not _pydicom_defaults():
        return None
    try:
        source = _Bytes(path, head, size, ready)
    except OSError:
        return None
    try:
        return _scan(source)
    except (_Fallback, OSError):
        return None
    finally:
        source.close()


def _pydicom_defaults() -> bool:
    """The rules here follow pydicom's default reading configuration only."""
    return (
        config.data_element_callback is None
        and not config.datetime_conversion
        and not config.use_IS_numpy
        and hooks.raw_element_vr is raw_element_vr
        and hooks.raw_element_value is raw_element_value
        and not hooks.raw_element_kwargs
    )


def _scan(source: _Bytes) -> Scan:
    pos, syntax = _file_meta(source)
    compressed = _SYNTAXES.get(syntax)
    if compressed is None:
        raise _Fallback  # big endian, deflated, private or unknown
    implicit = syntax == ImplicitVRLittleEndian
    items: list[_Found] = []
    found = _dataset(source, pos, implicit, items)
    _check_image(source, found, compressed)
    codec = _charset(source, found[_CHARSET]) if _CHARSET in found else default_encoding
    if _REQUEST_ATTRIBUTES in found:
        _request_attributes(source, found, implicit, items)
    values = {}
    for tag, entry in found.items():
        text = _TEXT.get(tag)
        if text is not None:
            values[text[0]] = _decode(source, entry, text[1], codec)
    priorities = [values.get("RequestedProcedurePriority"), values.get("StudyPriorityID")]
    for item in items:
        priority = item.get(_REQUESTED_PRIORITY)
        priorities.append(None if priority is None else _decode(source, priority, b"SH", codec))
    return Scan(syntax, values, priorities)


def _file_meta(source: _Bytes) -> tuple[int, str]:
    """Where the dataset starts and its transfer syntax, from a file meta pydicom reads alike.

    pydicom reads group 0002 as explicit VR up to the first other tag, whatever
    the group length says; it converts the first element (here required to be
    that UL group length) and the Transfer Syntax UID.
    """
    start = source.take(0, 144)
    if start[128:140] != b"DICM\x02\x00\x00\x00UL\x04\x00":
        raise _Fallback
    pos, previous, syntax = 132, 0, ""
    while True:
        if pos < source.base or pos + 12 > source.end:
            _need_header(source, pos)
        buf, i = source.buf, pos - source.base
        group, element, vr, length = _EXPLICIT(buf, i)
        if group != 2:
            break
        n = _HEADER_BYTES.get(vr)
        if n is None:
            raise _Fallback
        if n == 12:
            if pos + 12 > source.end:
                raise _Fallback
            length = _U32(buf, i + 8)[0]
        tag = group << 16 | element
        if tag <= previous or length == _UNDEFINED or length & 1:
            raise _Fallback
        previous, pos = tag, pos + n + length
        if pos > source.size:
            raise _Fallback
        if tag == 0x00020010:
            if vr != b"UI" or length > _MAX_TEXT:
                raise _Fallback
            syntax = _uid(source.take(pos - length, length))
    if not syntax:
        raise _Fallback
    return pos, syntax


def _header(source: _Bytes, pos: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """Tag, VR (None when implicit), length and value offset of the element at ``pos``.

    Items and delimiters (group FFFE) carry no VR, as pydicom reads them.
    """
    if pos < source.base or pos + 12 > source.end:
        source.window(pos, min(12, source.size - pos))
    buf, i = source.buf, pos - source.base
    if pos + 8 > source.end:
        raise _Fallback  # a partial element header
    if implicit:
        group, element, length = _IMPLICIT(buf, i)
        return group << 16 | element, None, length, pos + 8
    group, element, vr, length = _EXPLICIT(buf, i)
    if group == 0xFFFE:
        return group << 16 | element, None, _U32(buf, i + 4)[0], pos + 8
    n = _HEADER_BYTES.get(vr)
    if n is None:
        raise _Fallback  # pydicom guesses: implicit VR, or a 2-byte length
    if n == 12:
        if pos + 12 > source.end:
            raise _Fallback
        length = _U32(buf, i + 8)[0]
    return group << 16 | element, vr, length, pos + n


def _dataset(source: _Bytes, pos: int, implicit: bool, items: list[_Found]) -> _Found:
    """The wanted top-level elements (value offset, length, VR), having checked every element.

    The last element must end where the file ends (pydicom stops quietly at a
    partial header; the header's end check catches that). Tags ascend strictly:
    a repeated tag would replace a value in pydicom's dataset.
    """
    size = source.size
    if pos >= size:
        raise _Fallback  # no data elements
    first = source.take(pos, 6)
    if implicit and 0x40 < first[4] < 0x5B and 0x40 < first[5] < 0x5B:
        raise _Fallback  # looks explicit: pydicom would switch, with a warning
    found: _Found = {}
    previous = 0x0002FFFF  # group 0000 is read apart (command set), 0002 is the file meta
    header_bytes, wanted = _HEADER_BYTES, _WANTED
    buf, base, end = source.buf, source.base, source.end
    while pos < size:
        if pos < base or pos + 12 > end:
            _need_header(source, pos)
            buf, base, end = source.buf, source.base, source.end
        i = pos - base
        if implicit:
            group, element, length = _IMPLICIT(buf, i)
            vr = None
            value = pos + 8
        else:
            group, element, vr, length = _EXPLICIT(buf, i)
            n = header_bytes.get(vr)
            if n is None:
                raise _Fallback
            if n == 12:
                if pos + 12 > end:
                    raise _Fallback
                length = _U32(buf, i + 8)[0]
            value = pos + n
        tag = group << 16 | element
        if tag <= previous or group == 0xFFFE:
            raise _Fallback
        previous = tag
        if length == _UNDEFINED:
            collect = items if tag == _REQUEST_ATTRIBUTES else None
            pos = _undefined(source, tag, vr, value, implicit, collect, 0)
            buf, base, end = source.buf, source.base, source.end
        elif length & 1:
            raise _Fallback
        else:
            pos = value + length
        if tag in wanted:
            found[tag] = (value, length, vr)
    if pos != size:
        raise _Fallback  # the last value runs past the end
    return found


def _need_header(source: _Bytes, pos: int) -> None:
    if source.size - pos < 8:
        raise _Fallback  # a partial element header
    source.window(pos, min(12, source.size - pos))


def _undefined(
    source: _Bytes,
    tag: int,
    vr: bytes | None,
    pos: int,
    implicit: bool,
    collect: list[_Found] | None,
    depth: int,
) -> int:
    """End of an undefined-length value, found the way pydicom's reader finds it.

    Sequences are parsed item by item; other values (encapsulated pixel data)
    are walked fragment by fragment. An implicit VR tag missing from the
    dictionary is a sequence when an item follows.
    """
    if implicit:
        try:
            sequence = dictionary_VR(tag) == "SQ"
        except KeyError:
            sequence = source.take(pos, 4) == _ITEM
    elif vr == b"SQ":
        sequence = True
    elif vr in (b"OB", b"OW"):
        sequence = False
    else:
        raise _Fallback  # UN: a sequence of implicit VR items inside; others: unusual
    if sequence:
        if depth >= _MAX_DEPTH:
            raise _Fallback
        return _sequence(source, pos, None, implicit, collect, depth + 1)
    if collect is not None:
        raise _Fallback
    return _fragments(source, pos)


def _fragments(source: _Bytes, pos: int) -> int:
    """End of an encapsulated value: items up to the sequence delimiter (pydicom's first try)."""
    while True:
        header = source.take(pos, 8)
        if header[:4] == _SEQUENCE_DELIMITER:
            if header[4:] != b"\x00\x00\x00\x00":
                raise _Fallback
            return pos + 8
        if header[:4] != _ITEM:
            raise _Fallback  # pydicom would scan the bytes for a delimiter instead
        length = _U32(header, 4)[0]
        if length & 1:
            raise _Fallback
        pos += 8 + length
        if pos > source.size:
            raise _Fallback


def _sequence(
    source: _Bytes,
    pos: int,
    end: int | None,
    implicit: bool,
    collect: list[_Found] | None,
    depth: int,
) -> int:
    """End of a sequence value (``end`` for a defined length), item by item as pydicom reads it.

    With ``collect``, each item's own elements of interest are recorded there.
    """
    while True:
        if end is not None and pos >= end:
            if pos != end:
                raise _Fallback
            return pos
        group, element, length = _IMPLICIT(source.take(pos, 8), 0)
        pos += 8
        if group != 0xFFFE:
            raise _Fallback
        if element == 0xE0DD:  # sequence delimiter
            if end is not None or length:
                raise _Fallback
            return pos
        if element != 0xE000:
            raise _Fallback
        found: _Found | None = None
        if collect is not None:
            found = {}
            collect.append(found)
        if length == _UNDEFINED:
            pos = _item(source, pos, None, implicit, found, depth)
        elif length & 1:
            raise _Fallback
        else:
            pos = _item(source, pos, pos + length, implicit, found, depth)


def _item(
    source: _Bytes,
    pos: int,
    end: int | None,
    implicit: bool,
    found: _Found | None,
    depth: int,
) -> int:
    """End of a sequence item's dataset (``end`` for a defined length).

    pydicom reads items whole: their values are not deferred, and a Specific
    Character Set among them is decoded at once, so it must be an ordinary one.
    """
    while True:
        if end is not None:
            if pos == end:
                return pos
            if pos > end:
                raise _Fallback
        tag, vr, length, value = _header(source, pos, implicit)
        if tag >> 16 == 0xFFFE:
            if tag != 0xFFFEE00D or end is not None or length:
                raise _Fallback
            return value
        if tag == _CHARSET:  # decoded as it is read
            _charset(source, (value, length, vr))
        if length == _UNDEFINED:
            pos = _undefined(source, tag, vr, value, implicit, None, depth)
        elif length & 1:
            raise _Fallback
        else:
            pos = value + length
            if pos > source.size:
                raise _Fallback
        if found is not None:
            if tag == _CHARSET or (tag == _REQUESTED_PRIORITY and tag in found):
                raise _Fallback  # an item's own character set, or a repeated value
            if tag == _REQUESTED_PRIORITY:
                found[tag] = (value, length, vr)


def _request_attributes(
    source: _Bytes,
    found: _Found,
    implicit: bool,
    items: list[_Found],
) -> None:
    """Parse a defined-length Request Attributes Sequence as pydicom does when it is read.

    pydicom then also converts the dataset's Pixel Representation (to pass it
    on to the items), so that must convert cleanly too.
    """
    value, length, vr = found[_REQUEST_ATTRIBUTES]
    if vr not in (None, b"SQ"):
        raise _Fallback
    if length != _UNDEFINED:
        if length > _DEFER_BYTES:
            raise _Fallback  # deferred by pydicom: not ordinary
        _sequence(source, value, value + length, implicit, items, 1)
        if _PIXEL_REPRESENTATION in found:
            _, rep_length, rep_vr = found[_PIXEL_REPRESENTATION]
            if rep_vr not in (None, b"US") or rep_length & 1 or rep_length > _MAX_TEXT:
                raise _Fallback


def _check_image(source: _Bytes, found: _Found, compressed: bool) -> None:
    """The header's image and pixel data checks; any failure leaves the verdict to pydicom."""
    has_pixels = any(tag in found for tag in _PIXEL_TAGS)
    if _ROWS in found and _COLUMNS in found and not has_pixels:
        raise _Fallback
    pixels = found.get(_PIXEL_DATA)
    if pixels is None:
        return
    _, length, vr = pixels
    if vr == b"SQ":
        raise _Fallback  # pydicom makes it a sequence
    if length == _UNDEFINED or compressed:
        return
    if _ROWS not in found or _COLUMNS not in found or _BITS not in found:
        raise _Fallback
    rows, columns, bits = (_us(source, found[tag]) for tag in (_ROWS, _COLUMNS, _BITS))
    samples = _us(source, found[_SAMPLES]) if _SAMPLES in found else 0
    frames = _frames(source, found[_FRAMES]) if _FRAMES in found else 0
    expected = (rows * columns * (samples or 1) * (frames or 1) * bits + 7) // 8
    if length < expected:
        raise _Fallback


def _us(source: _Bytes, entry: _Entry) -> int:
    value, length, vr = entry
    if length != 2 or vr not in (None, b"US"):
        raise _Fallback
    return int.from_bytes(source.take(value, 2), "little")


def _frames(source: _Bytes, entry: _Entry) -> int:
    """Number of Frames (IS) as pydicom's IS gives it; 0 stands for empty."""
    value, length, vr = entry
    if vr not in (None, b"IS") or length > _MAX_TEXT:
        raise _Fallback
    text = _plain(source.take(value, length))
    if not text:
        return 0
    if not VALIDATORS["IS"]("IS", text)[0]:
        raise _Fallback
    number = int(text)
    if not -(2**31) <= number < 2**31:
        raise _Fallback
    return number


def _charset(source: _Bytes, entry: _Entry) -> str:
    """The Python codec for a single, known Specific Character Set (as pydicom maps it)."""
    value, length, vr = entry
    if vr not in (None, b"CS") or length > _MAX_TEXT:
        raise _Fallback
    codec = python_encoding.get(_plain(source.take(value, length)))
    if codec is None:
        raise _Fallback  # misspelt: pydicom corrects it with a warning
    return codec


# Values decoded lately, by (raw bytes, VR, codec): a series' slices repeat
# most of them (patient, study, series), so each is decoded and validated
# once per series, not per slice. Only values that decoded cleanly are kept
# (a refusal raises each time); bounded, and started again when full.
_DECODED_KEPT = 4096
_decoded_before: dict[tuple[bytes, bytes, str], str] = {}


def _decode(source: _Bytes, entry: _Entry, vr: bytes, codec: str) -> str:
    """A wanted text value, decoded as pydicom's converter for ``vr`` does it."""
    value, length, actual = entry
    if actual not in (None, vr) or length == _UNDEFINED or length > _MAX_TEXT:
        raise _Fallback
    raw = source.take(value, length)
    key = (raw, vr, codec)
    text = _decoded_before.get(key)
    if text is not None:
        return text
    if vr == b"UI":
        text = _uid(raw)
    elif vr == b"PN":
        text = _person(raw, codec)
    elif vr in (b"SH", b"LO"):
        text = _text(raw, codec, vr.decode())
    else:
        text = _plain(raw)  # CS, DA, TM: Latin-1, not validated
    if len(_decoded_before) >= _DECODED_KEPT:
        _decoded_before.clear()
    _decoded_before[key] = text
    return text


def _plain(raw: bytes) -> str:
    """CS, DA, TM, IS and UI values: pydicom decodes them as Latin-1 whatever the character set."""
    # "latin-1" is pydicom's default_encoding, by the name CPython decodes directly.
    text = raw.decode("latin-1").rstrip(" \x00")
    if "\\" in text:
        raise _Fallback  # several values: pydicom gives a list
    return text


def _uid(raw: bytes) -> str:
    """UI, with pydicom's UI validation (length, then its pattern) inlined."""
    text = _plain(raw)
    if len(text) > _MAX_LENGTH["UI"] or (
        text and (_UI_PATTERN.match(text) is None or text[-1] == "\n")
    ):
        raise _Fallback
    return text


def _text(raw: bytes, codec: str, vr: str) -> str:
    """SH and LO: decoded in the character set, length-checked before the padding goes."""
    text = _decoded(raw, codec)
    if "\\" in text or len(text) > _MAX_LENGTH[vr]:
        raise _Fallback
    return text.rstrip("\x00 ")


def _person(raw: bytes, codec: str) -> str:
    """PN as str(PersonName): one alphabetic group, decoded in the character set."""
    text = _decoded(raw.rstrip(b"\x00 "), codec)
    if "\\" in text or "=" in text or not validate_pn("PN", text)[0]:
        raise _Fallback
    if not text.isascii() and codec not in _ROUND_TRIP:
        raise _Fallback
    return text


def _decoded(raw: bytes, codec: str) -> str:
    if b"\x1b" in raw:
        raise _Fallback  # ISO 2022 escape sequences
    try:
        return raw.decode(_DIRECT_NAMES.get(codec, codec))
    except (UnicodeError, LookupError):
        raise _Fallback from None  # pydicom warns and replaces
