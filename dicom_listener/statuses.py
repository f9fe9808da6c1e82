"""C-STORE response statuses (PS3.4 Annex B.2.3) and C-ECHO's."""

from __future__ import annotations

SUCCESS = 0x0000
# Refused: out of resources. Disk full and database down alike: the sender
# should retry later, and nothing was acknowledged.
OUT_OF_RESOURCES = 0xA700
# Error: data set does not match SOP Class (its UIDs differ from the request's).
DATASET_MISMATCH = 0xA900
# Error: cannot understand (0xCxxx). The low byte says why, for the sender's log.
UNDECODABLE = 0xC210
HANDLER_FAILED = 0xC211
MISSING_UIDS = 0xC212
PIXEL_DATA_SHORT = 0xC213

CANNOT_UNDERSTAND = range(0xC000, 0xD000)


def error_comment(text: str) -> str:
    """``text`` as an Error Comment (0000,0902): LO, 64 ASCII characters, no backslash."""
    return text.replace("\\", "/").encode("ascii", "replace").decode("ascii")[:64]
