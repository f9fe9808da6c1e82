"""Every row of PS3.15 Table E.1-1, planted with a canary of its VR and checked for its action."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

from flows.deid import HANDLED_TAGS, UidMapper, deidentify
from flows.deid_table import ROWS

CANARY_UID_ROOT = "1.2.826.0.1.3680043.9999."
KEY = b"study-key-1"


def exact_rows() -> list[tuple[int, str, str]]:
    rows = []
    for text, name, code in ROWS:
        group, _, element = text.strip("()").partition(",")
        try:
            rows.append(((int(group, 16) << 16) | int(element, 16), name, code))
        except ValueError:
            continue  # repeating groups and the private row: tested below
    return rows


ROW_LIST = exact_rows()


def canary(tag: int) -> tuple[str, object]:
    """A value of the tag's VR that is unique to this tag where the VR allows it."""
    vr = dictionary_VR(tag).split(" ")[0]
    n = f"{tag:08X}"
    text = {
        "AE": f"AE{n}",
        "AS": "042Y",
        "CS": f"CANARY{n}",
        "DA": "20010203",
        "DT": "20010203040506",
        "TM": "040506",
        "DS": "42.5",
        "IS": "42",
        "UI": CANARY_UID_ROOT + str(tag),
        "UR": f"http://canary.example/{n}",
        "PN": f"CANARY{n}^GIVEN",
    }
    if vr in text:
        return vr, text[vr]
    if vr in {"LO", "LT", "SH", "ST", "UC", "UT"}:
        return vr, f"CANARY{n}"
    if vr in {"OB", "OW", "UN"}:
        return vr, f"CANARY{n}".encode()
    if vr in {"US", "SS", "UL", "SL", "FL", "FD"}:
        return vr, 4242
    if vr == "SQ":
        item = Dataset()
        item.PatientName = f"CANARY{n}NESTED"
        item.ReferencedSOPInstanceUID = CANARY_UID_ROOT + f"9{tag}"
        item.CodeValue = "KEEPME"
        item.add_new(0x00110010, "LO", "PRIVATE CREATOR")
        item.add_new(0x00111001, "LO", f"CANARY{n}PRIVATE")
        return vr, Sequence([item])
    raise AssertionError(f"no canary for VR {vr}")


def planted() -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    for tag, _name, _code in ROW_LIST:
        vr, value = canary(tag)
        target = ds.file_meta if tag >> 16 == 0x0002 else ds
        target[tag] = DataElement(tag, vr, value)
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = np.arange(16, dtype=np.uint16).tobytes()
    ds.add_new(0x00090010, "LO", "ACME PRIVATE")
    ds.add_new(0x00091001, "LO", "CANARYPRIVATETOP")
    ds.add_new(0x50000010, "US", 1)  # curve
    ds.add_new(0x60003000, "OW", b"CANARYOVERLAY!")
    ds.add_new(0x60004000, "LT", "CANARYOVERLAYCOMMENT")
    ds.add_new(0x60000010, "US", 4)  # overlay rows: not in the table, kept
    return ds


@pytest.fixture(scope="module")
def cleaned() -> tuple[Dataset, Dataset, UidMapper]:
    original = planted()
    uids = UidMapper(KEY)
    return original, deidentify(original, uids), uids


def test_table_is_complete_and_well_formed() -> None:
    assert len(ROWS) == 621
    assert len({row[0] for row in ROWS}) == len(ROWS)
    codes = Counter(code for _, _, code in ROWS)
    assert set(codes) <= {"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
    assert codes["X"] > 300 and codes["U"] > 50
    assert HANDLED_TAGS == {tag for tag, _, _ in ROW_LIST}
    assert 0x00100010 in HANDLED_TAGS and 0x00080050 in HANDLED_TAGS


def _empty(value: object) -> bool:
    if isinstance(value, Sequence):
        return len(value) == 0
    return value is None or value == "" or value == b""


ROW_IDS = [f"{t:08X}" for t, _, _ in ROW_LIST]


@pytest.mark.parametrize(("tag", "name", "code"), ROW_LIST, ids=ROW_IDS)
def test_row_is_treated_by_its_action(
    cleaned: tuple[Dataset, Dataset, UidMapper], tag: int, name: str, code: str
) -> None:
    original, out, uids = cleaned
    source = original.file_meta if tag >> 16 == 0x0002 else original
    target = out.file_meta if tag >> 16 == 0x0002 else out
    before = source[tag].value
    vr = source[tag].VR
    if code == "X":
        assert tag not in target, name
        return
    assert tag in target, name
    after = target[tag].value
    if code in {"Z", "X/Z"}:  # X/Z resolves to Z: an empty value is conformant for any type
        assert _empty(after), name
    elif code == "U":
        assert after == uids.map(before) and after.startswith("2.25."), name
    elif code == "X/Z/U*":  # reference sequences: kept, every UID inside remapped
        item = after[0]
        assert item.ReferencedSOPInstanceUID == uids.map(before[0].ReferencedSOPInstanceUID)
        assert _empty(item.PatientName) and item.CodeValue == "KEEPME"
    else:  # D, Z/D, X/D, X/Z/D resolve to a dummy; C is cleaned to a dummy
        assert not _empty(after), name
        if vr == "SQ":
            assert _empty(after[0].PatientName) and after[0].CodeValue == "KEEPME"
            assert 0x00111001 not in after[0]
        elif vr == "UI":
            assert after == uids.map(before)
        elif vr not in {"AS", "US", "SS", "UL", "SL", "FL", "FD", "DS", "IS"}:
            assert after != before, name


def test_no_canary_survives_in_the_written_file(
    cleaned: tuple[Dataset, Dataset, UidMapper],
) -> None:
    _, out, _ = cleaned
    # write_dataset, not save_as: the table's command-group rows stay in the dataset (remapped).
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, out)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_dataset(meta, out.file_meta)
    data = meta.getvalue() + body.getvalue()
    assert b"CANARY" not in data
    assert CANARY_UID_ROOT.encode() not in data
    assert b"ACME PRIVATE" not in data and b"PRIVATE CREATOR" not in data


def test_private_curves_and_overlays_removed_rest_kept(
    cleaned: tuple[Dataset, Dataset, UidMapper],
) -> None:
    original, out, _ = cleaned
    assert not any(elem.tag.is_private for elem in out.iterall())
    assert 0x50000010 not in out and 0x60003000 not in out and 0x60004000 not in out
    assert out[0x60000010].value == 4
    assert out.PixelData == original.PixelData and out.Rows == 4
    assert out.pixel_array.tolist() == original.pixel_array.tolist()


def test_deidentification_is_declared(cleaned: tuple[Dataset, Dataset, UidMapper]) -> None:
    _, out, _ = cleaned
    assert out.PatientIdentityRemoved == "YES"
    assert "E.1-1" in out.DeidentificationMethod
    code = out.DeidentificationMethodCodeSequence[0]
    assert (code.CodeValue, code.CodingSchemeDesignator) == ("113100", "DCM")


def test_original_is_left_untouched(cleaned: tuple[Dataset, Dataset, UidMapper]) -> None:
    original, _, _ = cleaned
    assert str(original.PatientName).startswith("CANARY")
    assert 0x00091001 in original
