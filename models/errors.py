"""Errors of the draft engine.

They derive from ``RuntimeError`` rather than ``prelim.errors.PrelimError`` because
``models`` must import with only torch, transformers, pillow and numpy installed;
callers in ``flows`` translate them.
"""

from __future__ import annotations


class ModelUnavailableError(RuntimeError):
    """The weights cannot be loaded here; the message says how to make them available."""


class ModelConfigurationError(RuntimeError):
    """The engine was asked for a setting it refuses (for example float16)."""
