"""De-identification: PS3.15 Annex E, Basic Application Level Confidentiality Profile.

Every attribute of Table E.1-1 (``flows.deid_table``) is treated by its action
code, private attributes, curves and overlays are removed, and sequences are
cleaned item by item. The dataset's tags are walked once against a dict of
actions; elements that are kept are carried over still undecoded (pixel data
included), which is what makes this fast.

Where the table allows a choice (``Z/D``, ``X/Z``, ``X/D``, ``X/Z/D``,
``X/Z/U*``) we cannot know per IOD whether the attribute is Type 1, 2 or 3, so
we take the choice that keeps every IOD conformant: ``D`` over ``Z``, ``Z``
over ``X``, and for ``X/Z/U*`` (reference sequences) the sequence is kept with
every UID inside remapped. ``C`` (clean) is treated as ``D``: we have no
dictionary of "similar meaning" values, and a dummy carries no identity.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from flows.deid_table import EDITION, ROWS

# Composite codes resolved to the action that keeps any IOD conformant.
_RESOLVE = {"Z/D": "D", "X/Z": "Z", "X/D": "D", "X/Z/D": "D", "X/Z/U*": "U*", "C": "D"}

# SOP Classes whose pixels are typically screen captures or annotated frames.
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_ULTRASOUND_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.6.1",  # US Image Storage
        "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume Storage
        "1.2.840.10008.5.1.4.1.1.3.1",  # US Multi-frame Image Storage
        "1.2.840.10008.5.1.4.1.1.6",  # US Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.3",  # US Multi-frame Image Storage (Retired)
    }
)
_RISKY_MODALITIES = frozenset({"US", "SC", "IVUS"})

# Private Information Creator UID and Private Information: free content in the file meta.
_META_PRIVATE = (0x00020100, 0x00020102)

_TEXT = "ANONYMIZED"
_DUMMY_BY_VR: dict[str, object] = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "CS": _TEXT,
    "LO": _TEXT,
    "LT": _TEXT,
    "PN": _TEXT,
    "SH": _TEXT,
    "ST": _TEXT,
    "UC": _TEXT,
    "UT": _TEXT,
    "UR": "urn:anonymized",
    "TM": "000000",
    "DS": "0",
    "IS": "0",
    "US": 0,
    "SS": 0,
    "UL": 0,
    "SL": 0,
    "UV": 0,
    "SV": 0,
    "FL": 0.0,
    "FD": 0.0,
    "AT": 0,
    "OB": b"\x00\x00",
    "OW": b"\x00\x00",
    "OD": b"\x00" * 8,
    "OF": b"\x00" * 4,
    "OL": b"\x00" * 4,
    "OV": b"\x00" * 8,
    "UN": b"\x00\x00",
}


def _parse_tag(text: str) -> int | None:
    """``(0008,0050)`` -> 0x00080050; None for repeating-group or private rows."""
    group, _, element = text.strip("()").partition(",")
    try:
        return (int(group, 16) << 16) | int(element, 16)
    except ValueError:
        return None


def _build_actions() -> dict[int, str]:
    actions: dict[int, str] = {}
    for tag_text, _name, code in ROWS:
        tag = _parse_tag(tag_text)
        if tag is not None:
            actions[tag] = _RESOLVE.get(code, code)
    return actions


ACTIONS: dict[int, str] = _build_actions()
"""Resolved action per exact tag of Table E.1-1: one of D, Z, X, K, U, U*."""

HANDLED_TAGS: frozenset[int] = frozenset(ACTIONS)
"""Every exact tag of Table E.1-1 (repeating groups and private tags are handled by rule)."""

METHOD = f"PS3.15 E.1-1 Basic Profile {EDITION}, private tags removed"


def action_for(tag: int) -> str | None:
    """The resolved action for ``tag``: a table code, ``X`` by rule, or None to keep."""
    action = ACTIONS.get(tag)
    if action is not None:
        return action
    group, element = tag >> 16, tag & 0xFFFF
    if group & 1 or element == 0:
        return "X"  # private attributes; group lengths would be stale after removals
    if 0x5000 <= group <= 0x501E:
        return "X"  # (50xx,xxxx) curve data
    if 0x6000 <= group <= 0x601E and element in (0x3000, 0x4000):
        return "X"  # (60xx,3000) overlay data, (60xx,4000) overlay comments
    return None


def burned_in_text_risk(ds: Dataset) -> str | None:
    """Why the image may carry burned-in text, or None when it is safe to show the model."""
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        return "may carry burned-in text: Burned In Annotation is YES"
    if burned == "NO":
        return None
    sop_class = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if sop_class.startswith(_SECONDARY_CAPTURE_PREFIX) or "ConversionType" in ds:
        return "may carry burned-in text: secondary capture without Burned In Annotation NO"
    if sop_class in _ULTRASOUND_CLASSES or modality in _RISKY_MODALITIES:
        return f"may carry burned-in text: {modality or 'US'} image without Burned In Annotation NO"
    return None


class UidMapper:
    """Maps UIDs to ``2.25.<uuid>`` UIDs: the same within one key, unrelated across keys."""

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("UidMapper needs a non-empty key")
        self._key = key
        self._cache: dict[str, str] = {}

    def map(self, uid: str) -> str:
        uid = str(uid).strip(" \x00")
        mapped = self._cache.get(uid)
        if mapped is None:
            digest = hmac.new(self._key, uid.encode("ascii", "replace"), hashlib.sha256).digest()
            mapped = f"2.25.{uuid.UUID(bytes=digest[:16], version=4).int}"
            self._cache[uid] = mapped
        return mapped


def _vr_of(tag: int, elem: DataElement | RawDataElement) -> str:
    vr = elem.VR
    if vr is None:  # implicit VR, still raw
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            return "UN"
    return str(vr)


class _Cleaner:
    def __init__(self, uids: UidMapper, dummy_date: str) -> None:
        self.uids = uids
        self.dummy_date = dummy_date
        self._by_action: dict[str, Callable[[Dataset, Dataset, int, str], None]] = {
            "D": self._dummy,
            "Z": self._zero,
            "U": self._uid,
            "U*": self._keep,
            "K": self._keep,
        }

    def dataset(self, src: Dataset) -> Dataset:
        out = Dataset()
        for tag in src.keys():
            elem = src.get_item(tag)
            if elem is None:
                continue
            action = action_for(tag)
            if action == "X":
                continue
            vr = _vr_of(tag, elem)
            if action is None:
                if vr == "SQ":
                    self._keep(src, out, tag, vr)
                else:
                    out[tag] = elem  # undecoded, not copied: values are immutable bytes
                continue
            self._by_action[action](src, out, tag, vr)
        return out

    def _sequence(self, src: Dataset, tag: int) -> Sequence:
        return Sequence([self.dataset(item) for item in (src[tag].value or [])])

    def _keep(self, src: Dataset, out: Dataset, tag: int, vr: str) -> None:
        if vr == "SQ":
            out[tag] = DataElement(tag, "SQ", self._sequence(src, tag))
        else:
            out[tag] = src.get_item(tag)  # type: ignore[assignment]

    def _zero(self, src: Dataset, out: Dataset, tag: int, vr: str) -> None:
        if vr == "SQ":
            out[tag] = DataElement(tag, "SQ", Sequence())
        else:
            out[tag] = DataElement(tag, vr.split(" ")[0], None)

    def _dummy(self, src: Dataset, out: Dataset, tag: int, vr: str) -> None:
        if vr == "SQ":
            # A dummy sequence is the original's items, each cleaned by the same table.
            out[tag] = DataElement(tag, "SQ", self._sequence(src, tag))
            return
        if vr == "UI":
            self._uid(src, out, tag, vr)
            return
        vr = vr.split(" ")[0]
        if vr == "DA":
            value: object = self.dummy_date
        elif vr == "DT":
            value = self.dummy_date + "000000"
        else:
            value = _DUMMY_BY_VR.get(vr, _TEXT)
        out[tag] = DataElement(tag, vr, value)

    def _uid(self, src: Dataset, out: Dataset, tag: int, vr: str) -> None:
        if vr == "SQ":
            self._keep(src, out, tag, vr)
            return
        value = src[tag].value
        if value is None or value == "":
            out[tag] = DataElement(tag, "UI", value)
        elif isinstance(value, str):
            out[tag] = DataElement(tag, "UI", self.uids.map(value))
        else:
            out[tag] = DataElement(tag, "UI", [self.uids.map(v) for v in value])


def deidentify(ds: Dataset, uids: UidMapper, *, dummy_date: str = "19000101") -> Dataset:
    """A de-identified copy of ``ds``; ``ds`` itself is left as it was.

    Pixel data is carried over undecoded. The file meta is cleaned too (its Media
    Storage SOP Instance UID follows the remapped SOP Instance UID).
    """
    cleaner = _Cleaner(uids, dummy_date)
    out = cleaner.dataset(ds)
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        clean_meta = cleaner.dataset(meta)
        for tag in _META_PRIVATE:
            clean_meta.pop(tag, None)
        out.file_meta = FileMetaDataset(clean_meta)
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = METHOD
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    out.DeidentificationMethodCodeSequence = Sequence([code])
    out.LongitudinalTemporalInformationModified = "REMOVED"
    original = ds.original_encoding
    if original[0] is not None:
        out.set_original_encoding(original[0], original[1], ds.original_character_set)
    return out


def new_uid_key() -> bytes:
    """A fresh per-study secret for :class:`UidMapper`."""
    return secrets.token_bytes(32)
