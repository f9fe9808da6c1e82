"""Selection: which of a study's instances the model sees, and why the others not.

Works on header-only datasets (read with ``stop_before_pixels``): Rows, Columns
and the SOP Class tell whether an instance has pixels. Chest radiographs give
one frontal view; CT gives the axial series with the most slices, ordered along
the slice normal (feet to head for a standard axial orientation) and thinned to
evenly spaced slices; anything else gives one representative image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pydicom

_STORAGE = "1.2.840.10008.5.1.4.1.1."
# SOP Class prefixes of objects that are not images, with the reason we give.
_NON_IMAGE_CLASSES: tuple[tuple[str, str], ...] = (
    (_STORAGE + "88.59", "key object selection document (no image)"),
    (_STORAGE + "88.", "structured report (no image)"),
    (_STORAGE + "104.", "encapsulated document (PDF/CDA), not an image"),
    (_STORAGE + "11.", "presentation state (display settings, no image)"),
    (_STORAGE + "9.", "waveform (no image)"),
    (_STORAGE + "66.4", "segmentation object, not an acquired image"),
    (_STORAGE + "66", "raw data or registration object (no image)"),
    (_STORAGE + "481.1", ""),  # RT Image has pixels: let it through the next rule
    (_STORAGE + "481.", "radiotherapy object (no diagnostic image)"),
    (_STORAGE + "4.2", "MR spectroscopy (no image)"),
)
_NON_IMAGE_MODALITIES = {
    "SR": "structured report (no image)",
    "KO": "key object selection document (no image)",
    "PR": "presentation state (display settings, no image)",
    "DOC": "document, not an image",
    "REG": "registration object (no image)",
    "SEG": "segmentation object, not an acquired image",
    "RTSTRUCT": "radiotherapy object (no diagnostic image)",
    "RTPLAN": "radiotherapy object (no diagnostic image)",
    "RTDOSE": "radiotherapy object (no diagnostic image)",
}
_FRONTAL_WORDS = {"PA", "AP", "FRONTAL", "POSTEROANTERIOR", "ANTEROPOSTERIOR", "P-A", "A-P"}
_LATERAL_WORDS = {"LAT", "LATERAL", "LL", "RL", "LLAT", "RLAT"}
_CT_CLASSES = frozenset({_STORAGE + "2", _STORAGE + "2.1", _STORAGE + "2.2"})
_VIEW_TEXT = (
    "ImageType",
    "SeriesDescription",
    "ProtocolName",
    "AcquisitionDeviceProcessingDescription",
)
_NOT_BEST_SERIES = "CT image not in the axial series with the most slices"
_CHEST_WORDS = ("CHEST", "THORAX", "LUNG", "THOR", "CXR", "TORAX", "BRUST")


@dataclass(frozen=True)
class Candidate:
    ref: str  # opaque instance reference (spool path, index): never PHI
    dataset: pydicom.Dataset


@dataclass
class Selection:
    task: str  # "cxr" | "ct" | "generic" | "none"
    chosen: list[Candidate] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (ref, reason)


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        return "\\".join(str(v) for v in value).upper()
    return str(value).strip().upper()


def _int(ds: pydicom.Dataset, keyword: str, default: int = 0) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):
        return default


def not_an_image(ds: pydicom.Dataset) -> str | None:
    """Why this instance cannot be shown to the model, or None when it is an image."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    for prefix, reason in _NON_IMAGE_CLASSES:
        if sop_class.startswith(prefix):
            if reason:
                return reason
            break
    by_modality = _NON_IMAGE_MODALITIES.get(_text(ds, "Modality"))
    if by_modality:
        return by_modality
    if not (_int(ds, "Rows") and _int(ds, "Columns")) and "PixelData" not in ds:
        return "no pixel data"
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return "floating-point pixel data (parametric map), not an acquired image"
    return None


def _is_ct(ds: pydicom.Dataset) -> bool:
    return _text(ds, "Modality") == "CT" or str(ds.get("SOPClassUID", "")) in _CT_CLASSES


def _is_chest_radiograph(ds: pydicom.Dataset) -> bool:
    if _text(ds, "Modality") not in {"CR", "DX"}:
        return False
    body = _text(ds, "BodyPartExamined")
    if not body:
        described = _text(ds, "StudyDescription") + " " + _text(ds, "SeriesDescription")
        return not described.strip() or any(w in described for w in _CHEST_WORDS)
    return any(w in body for w in _CHEST_WORDS)


def _words(ds: pydicom.Dataset, *keywords: str) -> set[str]:
    words: set[str] = set()
    for keyword in keywords:
        words.update(_text(ds, keyword).replace("\\", " ").replace("_", " ").split())
    return words


def cxr_view(ds: pydicom.Dataset) -> tuple[str, int]:
    """("frontal" | "lateral" | "unknown", rank among frontals: PA 0, AP 1, other 2)."""
    position = _text(ds, "ViewPosition")
    if position in {"PA", "AP"}:
        return "frontal", 0 if position == "PA" else 1
    if position in _LATERAL_WORDS or position.endswith("O"):  # LL, RL, obliques (RAO, LPO...)
        return "lateral", 9
    codes = ds.get("ViewCodeSequence")
    if codes:
        meaning = str(codes[0].get("CodeMeaning", "")).lower()
        if "lateral" in meaning or "oblique" in meaning:
            return "lateral", 9
        if "postero-anterior" in meaning or "posteroanterior" in meaning:
            return "frontal", 0
        if "antero-posterior" in meaning or "anteroposterior" in meaning:
            return "frontal", 1
    words = _words(ds, *_VIEW_TEXT)
    if words & _LATERAL_WORDS:
        return "lateral", 9
    if words & _FRONTAL_WORDS:
        return "frontal", 0 if "PA" in words else 1 if "AP" in words else 2
    # Patient Orientation's row direction: left/right on a frontal, anterior/posterior on a lateral.
    orientation = ds.get("PatientOrientation")
    if orientation and len(orientation) >= 1:
        row = str(orientation[0]).upper()[:1]
        if row in {"L", "R"}:
            return "frontal", 2
        if row in {"A", "P"}:
            return "lateral", 9
    return "unknown", 5


def _preference(cand: Candidate, order: int) -> tuple[int, int, int, int]:
    ds = cand.dataset
    derived = 0 if _text(ds, "ImageType").startswith("ORIGINAL") else 1
    return (derived, -_int(ds, "Rows") * _int(ds, "Columns"), _int(ds, "InstanceNumber"), order)


def _select_cxr(images: list[Candidate], out: Selection) -> None:
    views = [cxr_view(c.dataset) for c in images]
    for wanted in ("frontal", "unknown", "lateral"):
        pool = [i for i, (kind, _) in enumerate(views) if kind == wanted]
        if pool:
            break
    best = min(pool, key=lambda i: (views[i][1], *_preference(images[i], i)))
    out.chosen.append(images[best])
    for i, cand in enumerate(images):
        if i == best:
            continue
        kind = views[i][0]
        if kind == "lateral" and wanted != "lateral":
            why = "lateral view; the frontal view was chosen"
        elif kind == "frontal":
            why = "another frontal view was chosen (PA preferred over AP, original over derived)"
        else:
            why = f"{kind} view; one chest radiograph is sent to the model"
        out.skipped.append((cand.ref, why))


def _normal(ds: pydicom.Dataset) -> tuple[float, float, float] | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    r = [float(v) for v in iop[:3]]
    c = [float(v) for v in iop[3:]]
    return (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])


def _ct_problem(ds: pydicom.Dataset) -> str | None:
    image_type = _text(ds, "ImageType")
    if "LOCALIZER" in image_type:
        return "CT localizer (scout) image"
    normal = _normal(ds)
    if normal is not None:
        if abs(normal[2]) < 0.8:  # more than ~37 degrees from axial: a reformat
            return "non-axial CT image (coronal, sagittal or oblique reformat)"
    elif image_type and "AXIAL" not in image_type and "REFORMATTED" in image_type:
        return "non-axial CT image (reformat)"
    return None


def _slice_key(cand: Candidate, order: int) -> tuple[int, float, int]:
    ds = cand.dataset
    normal = _normal(ds)
    ipp = ds.get("ImagePositionPatient")
    if normal is not None and ipp is not None and len(ipp) == 3:
        return (0, sum(float(p) * n for p, n in zip(ipp, normal, strict=True)), order)
    if ds.get("SliceLocation") is not None:
        return (0, float(ds.SliceLocation), order)
    return (1, float(_int(ds, "InstanceNumber")), order)


def evenly_spaced(count: int, limit: int) -> list[int]:
    """Indices of ``limit`` evenly spaced items out of ``count``, first and last included."""
    if count <= limit:
        return list(range(count))
    if limit <= 1:
        return [count // 2] if limit == 1 else []
    return [round(i * (count - 1) / (limit - 1)) for i in range(limit)]


def _select_ct(images: list[Candidate], out: Selection, max_slices: int) -> None:
    series: dict[str, list[int]] = {}
    for i, cand in enumerate(images):
        problem = _ct_problem(cand.dataset)
        if problem:
            out.skipped.append((cand.ref, problem))
        else:
            series.setdefault(str(cand.dataset.get("SeriesInstanceUID", "")), []).append(i)
    if not series:
        return
    best = max(series, key=lambda uid: (len(series[uid]), -min(series[uid])))
    for uid, members in series.items():
        if uid != best:
            for i in members:
                out.skipped.append((images[i].ref, _NOT_BEST_SERIES))
    ordered = sorted(series[best], key=lambda i: _slice_key(images[i], i))
    keep = set(evenly_spaced(len(ordered), max_slices))
    thinned = f"not among the {max_slices} evenly spaced slices sent to the model"
    for n, i in enumerate(ordered):
        if n in keep:
            out.chosen.append(images[i])
        else:
            out.skipped.append((images[i].ref, thinned))


def _select_generic(images: list[Candidate], out: Selection) -> None:
    series: dict[str, list[int]] = {}
    for i, cand in enumerate(images):
        series.setdefault(str(cand.dataset.get("SeriesInstanceUID", "")), []).append(i)
    best = max(series, key=lambda uid: (len(series[uid]), -min(series[uid])))
    members = sorted(series[best], key=lambda i: (_int(images[i].dataset, "InstanceNumber"), i))
    middle = members[len(members) // 2]
    out.chosen.append(images[middle])
    for i, cand in enumerate(images):
        if i != middle:
            out.skipped.append((cand.ref, "one representative image is sent for this modality"))


def select_images(candidates: Sequence[Candidate], *, max_ct_slices: int = 85) -> Selection:
    """Choose what the model sees; every instance not chosen is listed with a reason."""
    out = Selection(task="none")
    images: list[Candidate] = []
    for cand in candidates:
        reason = not_an_image(cand.dataset)
        if reason:
            out.skipped.append((cand.ref, reason))
        else:
            images.append(cand)
    ct = [c for c in images if _is_ct(c.dataset)]
    cxr = [c for c in images if _is_chest_radiograph(c.dataset)]
    if ct:
        task, pool = "ct", ct
    elif cxr:
        task, pool = "cxr", cxr
    elif images:
        task, pool = "generic", images
    else:
        return out
    for cand in images:
        if not any(cand is p for p in pool):
            modality = _text(cand.dataset, "Modality") or "other"
            label = "CT series" if task == "ct" else "chest radiograph"
            out.skipped.append((cand.ref, f"{modality} image; the model reads the {label}"))
    if task == "ct":
        _select_ct(pool, out, max_ct_slices)
    elif task == "cxr":
        _select_cxr(pool, out)
    else:
        _select_generic(pool, out)
    if out.chosen:
        out.task = task
    return out
