"""UID remapping, sequences, burned-in text rules and the file meta."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from flows.deid import UidMapper, burned_in_text_risk, deidentify, new_uid_key
from prelim.synthetic import make_ct_series


def test_uids_consistent_within_a_study_and_different_across_keys() -> None:
    series = make_ct_series(3, slices=3, rows=8, columns=8)
    first = UidMapper(b"key-a")
    out = [deidentify(ds, first) for ds in series]
    assert len({ds.StudyInstanceUID for ds in out}) == 1
    assert len({ds.SeriesInstanceUID for ds in out}) == 1
    assert len({ds.FrameOfReferenceUID for ds in out}) == 1
    assert len({ds.SOPInstanceUID for ds in out}) == 3
    assert out[0].StudyInstanceUID != series[0].StudyInstanceUID
    assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in out)
    again = deidentify(series[0], UidMapper(b"key-a"))
    assert again.SOPInstanceUID == out[0].SOPInstanceUID  # deterministic per key
    other = deidentify(series[0], UidMapper(new_uid_key()))
    assert other.StudyInstanceUID != out[0].StudyInstanceUID
    assert other.SOPInstanceUID != out[0].SOPInstanceUID


def test_mapped_uids_are_valid() -> None:
    uid = UidMapper(b"k").map("1.2.3.4")
    assert uid.startswith("2.25.") and len(uid) <= 64 and uid[5:].isdigit()
    assert pydicom.uid.UID(uid).is_valid
    with pytest.raises(ValueError):
        UidMapper(b"")


def test_nested_sequences_are_recursed() -> None:
    inner = Dataset()
    inner.PersonName = "DEEP^CANARY"  # (0040,A123), D
    inner.ReferencedSOPInstanceUID = "1.2.3.4.5"
    inner.CodeMeaning = "kept"
    middle = Dataset()
    middle.ContentSequence = Sequence([inner])
    middle.add_new(0x00290010, "LO", "VENDOR")
    middle.add_new(0x00291001, "LO", "PRIVATE CANARY")
    ds = Dataset()
    ds.AnatomicRegionSequence = Sequence([middle])  # not in the table: kept, cleaned inside
    ds.PatientName = "TOP^CANARY"
    uids = UidMapper(b"k")
    out = deidentify(ds, uids)
    item = out.AnatomicRegionSequence[0].ContentSequence[0]
    assert str(item.PersonName) == "ANONYMIZED"
    assert item.ReferencedSOPInstanceUID == uids.map("1.2.3.4.5")
    assert item.CodeMeaning == "kept"
    assert 0x00291001 not in out.AnatomicRegionSequence[0]
    assert out.PatientName in (None, "")


def test_bundled_file_keeps_pixels_and_encoding() -> None:
    ds = pydicom.dcmread(get_testdata_file("MR_small_bigendian.dcm"))
    out = deidentify(ds, UidMapper(b"k"))
    assert out.original_encoding == ds.original_encoding
    assert (out.pixel_array == ds.pixel_array).all()
    assert out.PatientID == "ANONYMIZED" and out.PatientName in (None, "")  # Z/D and Z


@pytest.mark.parametrize(
    ("attrs", "risky"),
    [
        ({"Modality": "CT"}, False),
        ({"Modality": "CT", "BurnedInAnnotation": "YES"}, True),
        ({"Modality": "US"}, True),
        ({"Modality": "US", "BurnedInAnnotation": "NO"}, False),
        ({"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, True),
        ({"Modality": "OT", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.7.4"}, True),
        ({"Modality": "DX", "ConversionType": "WSD"}, True),
        ({"Modality": "DX", "BurnedInAnnotation": ""}, False),
        ({"Modality": "SC"}, True),
    ],
)
def test_burned_in_text_rules(attrs: dict[str, str], risky: bool) -> None:
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    reason = burned_in_text_risk(ds)
    assert (reason is not None) == risky
    if reason:
        assert "burned-in text" in reason
