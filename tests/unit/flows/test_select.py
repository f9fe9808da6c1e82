"""Selection on header-only datasets: frontal CXR, the axial CT series, skips with reasons."""

from __future__ import annotations

import io

import pydicom
from pydicom.dataset import Dataset

from flows.select import Candidate, cxr_view, evenly_spaced, select_images
from prelim.synthetic import make_ct_series, make_cxr_study


def header_only(ds: Dataset) -> Dataset:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return pydicom.dcmread(buffer, stop_before_pixels=True)


def cands(datasets: list[Dataset], prefix: str = "i") -> list[Candidate]:
    return [Candidate(f"{prefix}{n}", header_only(ds)) for n, ds in enumerate(datasets)]


def non_image(modality: str, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.Modality, ds.SOPClassUID = modality, sop_class
    return ds


def test_cxr_frontal_chosen_lateral_skipped() -> None:
    study = cands(make_cxr_study(1, rows=16, columns=16, views=("LL", "PA")))
    sel = select_images(study)
    assert sel.task == "cxr" and [c.ref for c in sel.chosen] == ["i1"]
    assert sel.skipped == [("i0", "lateral view; the frontal view was chosen")]


def test_pa_preferred_over_ap() -> None:
    study = cands(make_cxr_study(2, rows=16, columns=16, views=("AP", "PA")))
    assert [c.ref for c in select_images(study).chosen] == ["i1"]


def test_frontal_found_without_view_position() -> None:
    datasets = make_cxr_study(3, rows=16, columns=16, views=("LL", "PA"))
    for ds in datasets:
        del ds.ViewPosition  # left: Patient Orientation (A\F lateral, L\F frontal)
    sel = select_images(cands(datasets))
    assert [c.ref for c in sel.chosen] == ["i1"]
    assert "lateral" in sel.skipped[0][1]


def test_view_heuristics() -> None:
    ds = Dataset()
    ds.SeriesDescription = "CHEST LAT"
    assert cxr_view(ds)[0] == "lateral"
    ds.SeriesDescription = "CHEST PA"
    assert cxr_view(ds) == ("frontal", 0)
    assert cxr_view(Dataset())[0] == "unknown"


def test_only_a_lateral_is_still_sent() -> None:
    sel = select_images(cands(make_cxr_study(4, rows=16, columns=16, views=("LL",))))
    assert sel.task == "cxr" and len(sel.chosen) == 1 and sel.skipped == []


def test_ct_axial_series_with_most_slices_sorted_and_thinned() -> None:
    main = make_ct_series(5, slices=120, rows=4, columns=4)
    main.reverse()  # arrival order must not matter
    small = make_ct_series(6, slices=10, rows=4, columns=4)
    for ds in small:
        ds.StudyInstanceUID = main[0].StudyInstanceUID
    scout = make_ct_series(7, slices=1, rows=4, columns=4)[0]
    scout.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    coronal = make_ct_series(8, slices=1, rows=4, columns=4)[0]
    coronal.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    sr = non_image("SR", "1.2.840.10008.5.1.4.1.1.88.22")
    pr = non_image("PR", "1.2.840.10008.5.1.4.1.1.11.1")
    pdf = non_image("DOC", "1.2.840.10008.5.1.4.1.1.104.1")
    study = cands(main, "m") + cands(small, "s") + cands([scout, coronal], "x")
    study += [Candidate(r, ds) for r, ds in (("sr", sr), ("pr", pr), ("pdf", pdf))]
    sel = select_images(study, max_ct_slices=85)
    assert sel.task == "ct" and len(sel.chosen) == 85
    z = [float(c.dataset.ImagePositionPatient[2]) for c in sel.chosen]
    assert z == sorted(z) and z[0] == -300.0 and z[-1] == -300.0 + 2.5 * 119
    assert {c.ref[0] for c in sel.chosen} == {"m"}
    reasons = dict(sel.skipped)
    assert len(sel.skipped) == len(study) - 85
    assert "structured report" in reasons["sr"] and "presentation state" in reasons["pr"]
    assert "document" in reasons["pdf"]
    assert "localizer" in reasons["x0"] and "non-axial" in reasons["x1"]
    assert reasons["s0"] == "CT image not in the axial series with the most slices"
    assert sum("evenly spaced" in why for why in reasons.values()) == 120 - 85


def test_evenly_spaced() -> None:
    assert evenly_spaced(5, 85) == [0, 1, 2, 3, 4]
    picked = evenly_spaced(300, 85)
    assert len(set(picked)) == 85 and picked[0] == 0 and picked[-1] == 299
    gaps = {b - a for a, b in zip(picked, picked[1:], strict=False)}
    assert gaps <= {3, 4}


def test_nothing_usable() -> None:
    sel = select_images([Candidate("a", non_image("SR", "1.2.840.10008.5.1.4.1.1.88.11"))])
    assert sel.task == "none" and sel.chosen == [] and sel.skipped[0][0] == "a"
    no_pixels = Dataset()
    no_pixels.Modality = "MR"
    sel = select_images([Candidate("b", no_pixels)])
    assert sel.task == "none" and sel.skipped == [("b", "no pixel data")]


def test_generic_takes_one_middle_image() -> None:
    series = make_ct_series(9, slices=5, rows=4, columns=4)
    for ds in series:
        ds.Modality = "MR"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    sel = select_images(cands(series))
    assert sel.task == "generic" and [c.ref for c in sel.chosen] == ["i2"]
    assert len(sel.skipped) == 4
