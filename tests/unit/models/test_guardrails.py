from __future__ import annotations

import pytest

from models.guardrails import check_draft, has_repetition, names_other_modality, split_sections

CLEAN_CXR = (
    "FINDINGS:\nThe lungs are clear. No pleural effusion or pneumothorax. "
    "Heart size is normal.\n\nIMPRESSION:\nNo acute cardiopulmonary process."
)


def test_clean_report_has_no_flags() -> None:
    assert check_draft(CLEAN_CXR, modality="CR", hit_token_limit=False) == []


def test_sections_are_split() -> None:
    findings, impression = split_sections(CLEAN_CXR)
    assert findings.startswith("The lungs are clear.")
    assert impression == "No acute cardiopulmonary process."


@pytest.mark.parametrize(
    "text",
    [
        "**Findings:**\nClear lungs.\n\n**Impression:**\nNormal.",
        "## FINDINGS\nClear lungs.\n## IMPRESSION\nNormal.",
        "Findings: Clear lungs. Impression: Normal.",
    ],
)
def test_heading_styles(text: str) -> None:
    assert split_sections(text) == ("Clear lungs.", "Normal.")


def test_without_headings_everything_is_findings() -> None:
    assert split_sections("just text") == ("just text", "")


def test_empty_flag() -> None:
    assert check_draft("  \n ", modality="CR", hit_token_limit=False) == ["empty"]


def test_repetition_flag() -> None:
    looped = "FINDINGS: " + "the heart is normal " * 6 + "IMPRESSION: normal."
    assert "repetition" in check_draft(looped, modality="CR", hit_token_limit=False)
    assert has_repetition("no no no no no no no no no")
    assert not has_repetition("No effusion. No effusion. No pneumothorax.")


def test_repeated_lines_are_flagged() -> None:
    text = "\n".join(["Stable appearance of the chest."] * 3)
    assert has_repetition(text)


def test_modality_mismatch_flag_for_cxr_style_report_on_ct() -> None:
    text = (
        "FINDINGS: PA and lateral views of the chest. The lungs are clear.\n"
        "IMPRESSION: Normal chest radiograph."
    )
    assert "modality_mismatch" in check_draft(text, modality="CT", hit_token_limit=False)
    assert "modality_mismatch" not in check_draft(text, modality="DX", hit_token_limit=False)


def test_recommending_another_modality_is_not_a_mismatch() -> None:
    text = CLEAN_CXR + " Recommend CT of the chest for further evaluation."
    assert not names_other_modality(text, "CR")


def test_truncated_flag() -> None:
    text = "FINDINGS: The lungs are clear.\nIMPRESSION: No acute"
    assert check_draft(text, modality="CR", hit_token_limit=True) == ["truncated"]


def test_unstructured_flag() -> None:
    assert check_draft("The lungs are clear.", modality="CR", hit_token_limit=False) == [
        "unstructured"
    ]
