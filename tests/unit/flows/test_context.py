"""The prompt's context: age, sex, view, body part, and nothing identifying."""

from __future__ import annotations

from pydicom import config
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from flows.context import age_years, sanitise, study_context
from prelim.synthetic import make_cxr_study


def test_context_of_a_synthetic_cxr_carries_no_identifier() -> None:
    ds = make_cxr_study(7, rows=8, columns=8, views=("PA",))[0]
    ctx = study_context(ds)
    assert ctx["modality"] == "DX" and ctx["view"] == "PA" and ctx["body_part"] == "CHEST"
    assert ctx["sex"] == ds.PatientSex
    assert ctx["age_years"] == int(ds.PatientAge[:3])
    rendered = repr(ctx)
    for identifier in (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.AccessionNumber):
        assert identifier not in rendered


def test_age_from_birth_date_and_study_date() -> None:
    ds = Dataset()
    ds.PatientBirthDate, ds.StudyDate = "19800615", "20250614"
    assert age_years(ds) == 44
    ds.StudyDate = "20250615"
    assert age_years(ds) == 45
    ds.StudyDate = ""
    ds.AcquisitionDate = "20000101"
    assert age_years(ds) == 19


def test_age_units_and_the_oldest() -> None:
    ds = Dataset()
    for age, years in (("045Y", 45), ("018M", 1), ("003W", 0), ("010D", 0), ("097Y", 90)):
        ds.PatientAge = age
        assert age_years(ds) == years
    assert age_years(Dataset()) is None


def test_values_are_sanitised() -> None:
    ds = Dataset()
    ds.Modality = "CT"
    with config.disable_value_validation():
        ds.BodyPartExamined = "CHEST\x07<script>" + "X" * 80
    ds.PatientSex = "Q"
    code = Dataset()
    code.CodeMeaning = "postero-anterior"
    ds.ViewCodeSequence = Sequence([code])
    ctx = study_context(ds)
    assert ctx["sex"] is None and ctx["view"] == "postero-anterior"
    body = ctx["body_part"]
    assert isinstance(body, str) and len(body) <= 32 and "<" not in body and "\x07" not in body
    assert sanitise("   ") is None
