"""Pure helpers of the review app and queue."""

from __future__ import annotations

import pytest

from db.reviews import word_edit_distance
from review.app import is_loopback
from review.auth import _safe_next
from review.schemas import priority_label
from review.templating import _dicom_date, _person


@pytest.mark.parametrize(
    ("a", "b", "distance"),
    [
        ("", "", 0),
        ("lungs are clear", "lungs are clear", 0),
        ("lungs are clear", "lungs  are\nclear", 0),
        ("lungs are clear", "lungs are not clear", 1),
        ("small left effusion", "small right effusion", 1),
        ("a b c", "", 3),
    ],
)
def test_word_edit_distance(a: str, b: str, distance: int) -> None:
    assert word_edit_distance(a, b) == distance == word_edit_distance(b, a)


def test_loopback_and_redirect_targets() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5")
    assert _safe_next("/drafts/3") == "/drafts/3"
    for bad in ("https://evil.example", "//evil.example", "/\\evil", None, ""):
        assert _safe_next(bad) == "/"


def test_labels_and_formats() -> None:
    assert [priority_label(p) for p in (3, 2, 1, 0, -1)] == [
        "STAT",
        "STAT",
        "Urgent",
        "Routine",
        "Low",
    ]
    assert _dicom_date("19700131") == "1970-01-31" and _dicom_date(None) == "—"
    assert _person("Doe^Jane^^Dr") == "DOE, Jane" and _person("Smith") == "SMITH"
