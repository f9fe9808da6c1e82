"""Reading a draft's sections and flagging drafts a reviewer should distrust.

Flags do not block a draft: they travel with it to the review queue, where a
radiologist sees why it looks wrong.
"""

from __future__ import annotations

import re

EMPTY = "empty"
REPETITION = "repetition"
MODALITY_MISMATCH = "modality_mismatch"
TRUNCATED = "truncated"
UNSTRUCTURED = "unstructured"

# A heading on its own line ("**Findings**", "## IMPRESSION:") or inline with a colon.
_HEADING = r"(?:(?:^|\n)[ \t#*_]*{name}[*_ \t]*:?[*_ \t]*(?=\n|$)|\b{name}[*_ \t]*:[*_]*)"
_FINDINGS = re.compile(_HEADING.format(name=r"findings"), re.IGNORECASE)
_IMPRESSION = re.compile(_HEADING.format(name=r"(?:impressions?|conclusions?)"), re.IGNORECASE)

# Words that place a report in one imaging family.
_FAMILY_TERMS = {
    "xray": (
        r"x-?ray|radiograph\w*|\bcxr\b|\b(?:pa|ap)\s+(?:and\s+lateral\s+)?views?\b|frontal view"
    ),
    "ct": r"\bct\b|computed tomograph\w*|hounsfield|\bhu\b",
    "mr": r"\bmri?\b|magnetic resonance|t[12]-weighted|\bflair\b|diffusion-weighted",
    "us": r"ultrasound|sonograph\w*|\bdoppler\b|echogenic\w*",
}
_MODALITY_FAMILY = {
    "CR": "xray",
    "DX": "xray",
    "RG": "xray",
    "CT": "ct",
    "MR": "mr",
    "US": "us",
}
# Sentences that name another modality legitimately (a recommendation, a prior).
_HEDGE = re.compile(
    r"recommend|suggest|consider|correlat|comparison|compared|prior|previous|follow-?up|further",
    re.IGNORECASE,
)


def split_sections(text: str) -> tuple[str, str]:
    """(findings, impression) from a draft; all text is findings when there are no headings."""
    impression_at = _IMPRESSION.search(text)
    findings_at = _FINDINGS.search(text)
    if impression_at is None:
        body = text[findings_at.end() :] if findings_at else text
        return body.strip(), ""
    impression = text[impression_at.end() :].strip()
    if findings_at and findings_at.start() < impression_at.start():
        findings = text[findings_at.end() : impression_at.start()]
    else:
        findings = text[: impression_at.start()]
    return findings.strip(), impression


def has_repetition(text: str, *, min_repeats: int = 4, max_span: int = 16) -> bool:
    """True when a run of 1..``max_span`` words repeats back to back (a decoding loop).

    Single words need twice as many repeats: "no, no" is prose, ten in a row is not.
    """
    words = text.split()
    n = len(words)
    for span in range(1, max_span + 1):
        needed = min_repeats * 2 if span == 1 else min_repeats
        if span * needed > n:
            break
        for offset in range(span):  # loops need not start on a multiple of the span
            run = 1
            for start in range(offset + span, n - span + 1, span):
                if words[start : start + span] == words[start - span : start]:
                    run += 1
                    if run >= needed:
                        return True
                else:
                    run = 1
    lines = [line.strip().lower() for line in text.splitlines() if len(line.strip()) > 8]
    return any(lines.count(line) >= 3 for line in set(lines))


def _family_mentions(text: str) -> dict[str, int]:
    plain = " ".join(s for s in re.split(r"(?<=[.!?\n])\s+", text) if not _HEDGE.search(s))
    return {
        family: len(re.findall(pattern, plain, re.IGNORECASE))
        for family, pattern in _FAMILY_TERMS.items()
    }


def names_other_modality(text: str, modality: str) -> bool:
    """True when the draft reads as another imaging family's report than its input's."""
    own = _MODALITY_FAMILY.get(modality.strip().upper())
    if own is None:
        return False
    mentions = _family_mentions(text)
    others = max(count for family, count in mentions.items() if family != own)
    return others > 0 and others > mentions[own]


def check_draft(
    raw_text: str, *, modality: str, hit_token_limit: bool, structured: bool = True
) -> list[str]:
    """The guardrail flags for one draft, in a fixed order."""
    flags: list[str] = []
    text = raw_text.strip()
    if not text:
        return [EMPTY, TRUNCATED] if hit_token_limit else [EMPTY]
    if has_repetition(text):
        flags.append(REPETITION)
    if names_other_modality(text, modality):
        flags.append(MODALITY_MISMATCH)
    if hit_token_limit:
        flags.append(TRUNCATED)
    if structured and _IMPRESSION.search(text) is None:
        flags.append(UNSTRUCTURED)
    return flags
