"""Logging set-up. Our logs carry UIDs and opaque keys, never patient identifiers."""

from __future__ import annotations

import logging
import sys


def quiet_pynetdicom() -> None:
    """Turn off pynetdicom's logging of C-FIND/C-MOVE identifiers and its chatty debug."""
    from pynetdicom import _config

    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def configure_logging(level: str = "INFO") -> None:
    """Log prelim's own messages to stderr at ``level``; keep third parties at WARNING."""
    root = logging.getLogger()
    if not any(getattr(h, "_prelim", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
        handler._prelim = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.WARNING)
    for name in ("prelim", "dicom_listener", "flows", "models", "db", "review"):
        logging.getLogger(name).setLevel(level.upper())
    quiet_pynetdicom()
