"""The header scanner agrees with pydicom: the same header, or the same status, on every file.

``_read_with_pydicom`` (read_header's pydicom reading) is the reference. Files
are checked with heads of several lengths and without one, with warnings as
errors (the test suite's setting) and with warnings ignored (as outside the tests).
"""

from __future__ import annotations

import os
import random
import tracemalloc
import warnings
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_files
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from dicom_listener import statuses
from dicom_listener.header import (
    InstanceHeader,
    InstanceRejected,
    _read_with_pydicom,
    read_header,
)
from dicom_listener.scan import scan
from prelim.synthetic import make_ct_series, make_cxr_study, write_study

Verdict = InstanceHeader | tuple[int, str]


@pytest.fixture(params=["error", "ignore"])
def warning_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    with warnings.catch_warnings():
        warnings.simplefilter(request.param)
        yield request.param


def _verdict(call: Callable[[], InstanceHeader]) -> Verdict:
    try:
        return call()
    except InstanceRejected as exc:
        return exc.status, str(exc)


def _same(path: Path, sop_class: str, sop_instance: str, every_head: bool = True) -> Verdict:
    """Assert read_header gives pydicom's verdict whatever the head; return that verdict."""
    size = path.stat().st_size
    with path.open("rb") as f:
        data = f.read(1 << 20)  # the whole file but for the large one
    expected = _verdict(lambda: _read_with_pydicom(path, sop_class, sop_instance, size))
    cuts = (None, 0, 200, 4096, len(data)) if every_head else (None, len(data))
    for cut in cuts:
        head = None if cut is None else data[:cut]
        for known in (size, None) if every_head else (size,):
            got = _verdict(partial(read_header, path, sop_class, sop_instance, head, known))
            assert got == expected, (path.name, cut, known)
    if every_head:
        view = memoryview(data)[:300]
        assert _verdict(lambda: read_header(path, sop_class, sop_instance, view)) == expected
    return expected


def _write(ds: Dataset, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # some cases are invalid on purpose
        ds.save_as(path, enforce_file_format=True)
    return path


def _scanned(path: Path) -> bool:
    data = path.read_bytes()
    return scan(path, data, len(data)) is not None


ABSENT = object()  # an attribute value for _ct: remove the element


def _ct(**attributes: object) -> Dataset:
    ds = make_ct_series(7, slices=1, rows=8, columns=8)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for keyword, value in attributes.items():
            if value is ABSENT:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    return ds


def _implicit(ds: Dataset) -> Dataset:
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _rle(ds: Dataset) -> Dataset:
    ds.compress(RLELossless)
    return ds


def _request_attributes(ds: Dataset, *priorities: str, undefined: bool = False) -> Dataset:
    items = []
    for priority in priorities:
        item = Dataset()
        item.RequestedProcedureID = "RP1"
        item.RequestedProcedurePriority = priority
        item.is_undefined_length_sequence_item = undefined
        items.append(item)
    ds.RequestAttributesSequence = Sequence(items)
    ds["RequestAttributesSequence"].is_undefined_length = undefined
    return ds


def _private_sequence(ds: Dataset) -> Dataset:
    """A private creator and an undefined-length private sequence with a nested one."""
    inner = Dataset()
    inner.CodeValue = "X"
    outer = Dataset()
    outer.add_new(0x00091001, "SQ", Sequence([inner]))
    outer.is_undefined_length_sequence_item = True
    ds.add_new(0x00090010, "LO", "PRELIM TEST")
    ds.add_new(0x00091010, "SQ", Sequence([outer]))
    ds[0x00091010].is_undefined_length = True
    ds[0x00091010].value[0][0x00091001].is_undefined_length = True
    return ds


def test_synthetic_studies_are_scanned_and_agree(tmp_path: Path, warning_mode: str) -> None:
    datasets = make_ct_series(3, slices=2, rows=32, columns=32) + make_cxr_study(4, rows=40)
    for ds in datasets:
        path = write_study([ds], tmp_path)[0]
        assert _scanned(path)
        header = _same(path, ds.SOPClassUID, ds.SOPInstanceUID)
        assert isinstance(header, InstanceHeader) and header.study.patient_id == ds.PatientID
        mismatch = _same(path, ds.SOPClassUID, "1.2.3", every_head=False)
        assert isinstance(mismatch, tuple) and mismatch[0] == statuses.DATASET_MISMATCH
    for recode in (_implicit, _rle):
        ds = recode(make_ct_series(5, slices=1, rows=16, columns=16)[0])
        path = _write(ds, tmp_path / f"{recode.__name__}.dcm")
        assert _scanned(path)
        assert isinstance(_same(path, ds.SOPClassUID, ds.SOPInstanceUID), InstanceHeader)


# Datasets the scanner reads: (name, make, expected priority).
SCANNED: list[tuple[str, Callable[[], Dataset], int]] = [
    ("no charset", lambda: _ct(SpecificCharacterSet=ABSENT), -1),
    ("empty charset", lambda: _ct(SpecificCharacterSet=None), -1),
    ("utf-8", lambda: _ct(SpecificCharacterSet="ISO_IR 192", PatientName="MÜLLER^JÖRG"), -1),
    ("latin-1", lambda: _ct(PatientName="MÜLLER^JÖRG", StudyDescription="Thorax nativ ä"), -1),
    ("empty values", lambda: _ct(AccessionNumber="", StudyDescription="", PatientSex=""), -1),
    ("padded values", lambda: _ct(PatientID=" 12 ", StudyDescription="  CT  "), -1),
    ("priorities", lambda: _ct(StudyPriorityID="ROUTINE", RequestedProcedurePriority="low"), 1),
    ("request attributes", lambda: _request_attributes(_ct(), "STAT"), 3),
    ("undefined items", lambda: _request_attributes(_ct(), "LOW", "HIGH", undefined=True), 2),
    ("implicit items", lambda: _implicit(_request_attributes(_ct(), "HIGH", undefined=True)), 2),
    ("private sequence", lambda: _private_sequence(_ct()), -1),
    ("implicit private", lambda: _implicit(_private_sequence(_ct())), -1),
    ("one frame", lambda: _ct(NumberOfFrames=1), -1),
    ("no samples", lambda: _ct(SamplesPerPixel=ABSENT), -1),
    ("more pixels", lambda: _ct(PixelData=bytes(200)), -1),
    ("rle", lambda: _rle(_ct(NumberOfFrames=1)), -1),
]

# Datasets the scanner leaves to pydicom (or where it decides the same either way).
OTHERS: list[tuple[str, Callable[[], Dataset]]] = [
    ("two modalities", lambda: _ct(Modality=["CT", "MR"])),
    ("ideographic name", lambda: _ct(PatientName="YAMADA^TARO=YAMADA^TARO")),
    ("two charsets", lambda: _ct(SpecificCharacterSet=["ISO_IR 100", "ISO 2022 IR 87"])),
    ("misspelt charset", lambda: _ct(SpecificCharacterSet="ISO-IR 100")),
    ("bad utf-8", lambda: _ct(SpecificCharacterSet="ISO_IR 192", PatientID=b"\xff\xfe")),
    ("long accession", lambda: _ct(AccessionNumber="A" * 17)),
    ("bad uid", lambda: _ct(SeriesInstanceUID="1.02.3")),
    ("uid with a newline", lambda: _ct(SeriesInstanceUID="1.2.3\n")),
    ("bad date", lambda: _ct(StudyDate="2025-01-01")),
    ("bad frames", lambda: _ct(NumberOfFrames="1.0")),
    ("blank frames", lambda: _ct(NumberOfFrames="\t")),
    ("two frames", lambda: _ct(NumberOfFrames=2)),
    ("empty frames", lambda: _ct(NumberOfFrames="")),
    ("no instance uid", lambda: _ct(SOPInstanceUID=ABSENT)),
    ("empty instance uid", lambda: _ct(SOPInstanceUID=None)),
    ("no study uid", lambda: _ct(StudyInstanceUID=ABSENT)),
    ("no pixels", lambda: _ct(PixelData=ABSENT)),
    ("empty pixels", lambda: _ct(PixelData=b"")),
    ("short pixels", lambda: _ct(PixelData=bytes(100))),
    ("no bits allocated", lambda: _no_bits_allocated(_ct())),
    ("empty rows", lambda: _ct(Rows=None)),
    ("item charset", lambda: _item_charset(_request_attributes(_ct(), "STAT"))),
    ("rows as text", lambda: _rows_as_text(_ct())),
    ("escape", lambda: _ct(StudyDescription="\x1b(BCT")),
]


def _item_charset(ds: Dataset) -> Dataset:
    ds.RequestAttributesSequence[0].SpecificCharacterSet = "ISO_IR 100"
    return ds


def _no_bits_allocated(ds: Dataset) -> Dataset:
    ds["PixelData"].VR = "OW"  # pydicom cannot tell OB from OW without it
    del ds.BitsAllocated
    return ds


def _rows_as_text(ds: Dataset) -> Dataset:
    ds.add_new(0x00280010, "IS", "8")
    return ds


@pytest.mark.parametrize(("name", "make", "priority"), SCANNED, ids=[c[0] for c in SCANNED])
def test_cases_the_scanner_reads(
    tmp_path: Path, warning_mode: str, name: str, make: Callable[[], Dataset], priority: int
) -> None:
    ds = make()
    path = _write(ds, tmp_path / "case.dcm")
    assert _scanned(path), name
    header = _same(path, ds.SOPClassUID, ds.SOPInstanceUID)
    assert isinstance(header, InstanceHeader) and header.study.priority == priority


@pytest.mark.parametrize(("name", "make"), OTHERS, ids=[c[0] for c in OTHERS])
def test_cases_left_to_pydicom(
    tmp_path: Path, warning_mode: str, name: str, make: Callable[[], Dataset]
) -> None:
    ds = make()
    uids = (str(ds.get("SOPClassUID", "")), str(ds.get("SOPInstanceUID", "1.2")))
    verdict = _same(_write(ds, tmp_path / "case.dcm"), *uids)
    status = verdict[0] if isinstance(verdict, tuple) else statuses.SUCCESS
    if name in ("no instance uid", "empty instance uid", "no study uid"):
        assert status == statuses.MISSING_UIDS
    if name in ("no pixels", "empty pixels", "short pixels", "two frames"):
        assert status == statuses.PIXEL_DATA_SHORT


def _pydicom_files() -> list[Path]:
    return sorted(Path(name) for name in get_testdata_files() if Path(name).is_file())


def test_pydicom_test_files_agree(tmp_path: Path, warning_mode: str) -> None:
    """Every file pydicom's test data has, as it is (when Part 10) and as pydicom rewrites it."""
    checked = scanned = 0
    for source in _pydicom_files():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = dcmread(source, force=True)
                request = str(ds.SOPClassUID), str(ds.SOPInstanceUID)
            except Exception:
                continue  # not a dataset with SOP UIDs
            variants = [source] if source.read_bytes()[128:132] == b"DICM" else []
            rewritten = tmp_path / f"{source.name}.dcm"
            try:
                ds.save_as(rewritten, enforce_file_format=True)
                variants.append(rewritten)
            except Exception:
                pass  # pydicom cannot write it back
        for path in variants:
            _same(path, *request, every_head=path.stat().st_size < 1 << 20)
            checked += 1
            scanned += _scanned(path)
    print(f"pydicom test files: {scanned} of {checked} scanned")
    assert checked > 100 and scanned > checked // 2


def test_unusual_encodings_are_left_to_pydicom(tmp_path: Path) -> None:
    for syntax in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian):
        ds = _ct()
        ds.file_meta.TransferSyntaxUID = syntax
        path = _write(ds, tmp_path / "case.dcm")
        assert not _scanned(path)
        assert isinstance(_same(path, ds.SOPClassUID, ds.SOPInstanceUID), InstanceHeader)


def _bases(tmp_path: Path) -> list[tuple[Path, str, str]]:
    made = [
        _ct(),
        _implicit(_ct()),
        _rle(_ct()),
        _implicit(_private_sequence(_request_attributes(_ct(), "STAT", undefined=True))),
        _private_sequence(_request_attributes(_ct(), "HIGH")),
    ]
    bases = []
    for number, ds in enumerate(made):
        path = _write(ds, tmp_path / f"base{number}.dcm")
        assert _scanned(path)
        bases.append((path, ds.SOPClassUID, ds.SOPInstanceUID))
    return bases


def _mutants(data: bytes, rng: random.Random, every_cut: bool) -> Iterator[bytes]:
    """Truncations, bit flips and overwritten words in the header, and trailing bytes."""
    header = len(data) - 128  # the synthetic 8x8 pixels are the last 128 bytes
    yield from (data[:cut] for cut in range(0, header, 1 if every_cut else 5))
    yield from (data[:cut] for cut in range(header, len(data), 1 if every_cut else 16))
    for _ in range(120):
        flipped = bytearray(data)
        flipped[rng.randrange(128, header)] ^= 1 << rng.randrange(8)
        yield bytes(flipped)
    for _ in range(60):
        patched = bytearray(data)
        at = rng.randrange(128, header - 4)
        patched[at : at + 4] = rng.choice(
            [b"\xff\xff\xff\xff", b"\xf0\xff\xff\x7f", b"\x00\x00\x00\x00", b"\x01\x00\x00\x00"]
            + [b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0", b"\xfe\xff\x0d\xe0", b"SQ\x00\x00"]
        )
        yield bytes(patched)
    for extra in (b"\x00", b"\x00" * 7, b"\xfc\xff\xfc\xff", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"):
        yield data + extra
    yield data + b"\xfc\xff\xfc\xffOB\x00\x00\x02\x00\x00\x00\x00\x00"


def test_malformed_files_get_pydicoms_verdict(tmp_path: Path, warning_mode: str) -> None:
    rng = random.Random(20240611)
    target = tmp_path / "mutant.dcm"
    for number, (base, sop_class, sop_instance) in enumerate(_bases(tmp_path)):
        every_cut = number == 0 and warning_mode == "error"
        for count, mutant in enumerate(_mutants(base.read_bytes(), rng, every_cut)):
            target.write_bytes(mutant)
            _same(target, sop_class, sop_instance, every_head=count % 16 == 0)


def _length_fields(path: Path) -> Iterator[tuple[int, int]]:
    """(offset, width) of each top-level element's length field in an explicit VR file."""
    ds = dcmread(path, defer_size=0)
    for elem in ds._dict.values():  # type: ignore[attr-defined]
        tell = elem.value_tell if isinstance(elem, RawDataElement) else elem.file_tell
        assert tell is not None
        width = 4 if elem.VR in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UN", "UT") else 2
        yield tell - width, width


def test_huge_lengths(tmp_path: Path, warning_mode: str) -> None:
    """Each element's length made huge, odd or a little too long, pixel data's included."""
    target = tmp_path / "huge.dcm"
    for base, sop_class, sop_instance in _bases(tmp_path)[::4]:  # the explicit VR ones
        data = base.read_bytes()
        for at, width in _length_fields(base):
            length = int.from_bytes(data[at : at + width], "little")
            for new in (1 << 8 * width) - 2, (1 << 8 * width) - 1, length + 1, length + 2, 0:
                new &= (1 << 8 * width) - 1
                patched = data[:at] + new.to_bytes(width, "little") + data[at + width :]
                target.write_bytes(patched)
                _same(target, sop_class, sop_instance, every_head=False)
        pixel_length = data.rindex(b"\xe0\x7f\x10\x00OW") + 8
        for new in (0xFFFFFFF0, 0x7FFFFFFE, len(data), 130, 126, 0, 0xFFFFFFFF):
            patched = data[:pixel_length] + new.to_bytes(4, "little") + data[pixel_length + 4 :]
            target.write_bytes(patched)
            _same(target, sop_class, sop_instance)


def test_a_large_instance_is_not_read(tmp_path: Path) -> None:
    """1 GB of (sparse) pixel data: the header is checked in a few kilobytes."""
    ds = _ct(Rows=16384, Columns=32768, PixelData=b"")
    path = _write(ds, tmp_path / "large.dcm")
    data = path.read_bytes()
    assert data.endswith(b"\xe0\x7f\x10\x00OW\x00\x00\x00\x00\x00\x00")
    pixels = 16384 * 32768 * 2
    with path.open("r+b") as f:
        f.seek(len(data) - 4)
        f.write(pixels.to_bytes(4, "little"))
    os.truncate(path, len(data) + pixels)
    tracemalloc.start()
    try:
        found = scan(path, None, len(data) + pixels)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert found is not None and peak < 1 << 20
    assert isinstance(
        _same(path, ds.SOPClassUID, ds.SOPInstanceUID, every_head=False), InstanceHeader
    )


def _nested(levels: int) -> bytes:
    """An undefined-length private sequence nested ``levels`` deep (explicit VR)."""
    element = b"\x09\x00\x10\x10SQ\x00\x00\xff\xff\xff\xff"
    item, item_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    return (element + item) * levels + b"\x08\x00\x00\x01SH\x02\x00X " + (item_end + end) * levels


@pytest.mark.parametrize("levels", [1, 15, 16, 17, 400])
def test_deeply_nested_sequences(tmp_path: Path, warning_mode: str, levels: int) -> None:
    ds = _ct()
    ds.add_new(0x00090010, "LO", "PRELIM TEST")
    ds.add_new(0x00091010, "LO", "PLACEHOLDER")
    path = _write(ds, tmp_path / "nested.dcm")
    placeholder = b"\x09\x00\x10\x10LO\x0c\x00PLACEHOLDER "
    data = path.read_bytes()
    assert data.count(placeholder) == 1
    path.write_bytes(data.replace(placeholder, _nested(levels)))
    assert _scanned(path) == (levels <= 16)
    _same(path, ds.SOPClassUID, ds.SOPInstanceUID)


def test_values_a_series_repeats_are_decoded_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dicom_listener import scan as scanner

    monkeypatch.setattr(scanner, "_decoded_before", {})
    names: list[bytes] = []
    real_person = scanner._person

    def person(raw: bytes, codec: str) -> str:
        names.append(raw)
        return real_person(raw, codec)

    monkeypatch.setattr(scanner, "_person", person)
    first, second = make_ct_series(11, slices=2, rows=8, columns=8)
    found = [
        scan(path, path.read_bytes(), path.stat().st_size)
        for path in write_study([first, second], tmp_path)
    ]
    assert found[0] is not None and found[1] is not None
    assert found[0].values == {
        **found[1].values,
        "SOPInstanceUID": found[0].values["SOPInstanceUID"],
    }
    assert found[0].values["SOPInstanceUID"] == first.SOPInstanceUID  # each slice its own
    assert found[1].values["SOPInstanceUID"] == second.SOPInstanceUID
    assert len(names) == len(set(names))  # each person name decoded once for both slices
    # A refused value is refused again each time, never remembered.
    bad = _write(_ct(PatientName="A=B"), tmp_path / "bad.dcm")
    assert not _scanned(bad) and not _scanned(bad)
    assert all(not key[0].startswith(b"A=B") for key in scanner._decoded_before)


def test_the_decoded_values_kept_are_bounded(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from dicom_listener import scan as scanner

    monkeypatch.setattr(scanner, "_decoded_before", {})
    monkeypatch.setattr(scanner, "_DECODED_KEPT", 8)
    for seed in range(6):
        path = write_study(
            make_ct_series(20 + seed, slices=1, rows=8, columns=8), tmp_path / str(seed)
        )[0]
        assert _scanned(path)
        assert len(scanner._decoded_before) <= 8
