"""The MedGemma draft engine.

Imports only torch, transformers (with its tokenizers), pillow, numpy and the
standard library, so it runs on a bare GPU machine.
"""

from __future__ import annotations

from models.drafts import DraftReport, DraftRequest, StudyContext
from models.engine import ReportDrafter
from models.errors import ModelConfigurationError, ModelUnavailableError
from models.prompts import PROMPT_VERSIONS, sanitize_control_tokens

__all__ = [
    "PROMPT_VERSIONS",
    "DraftReport",
    "DraftRequest",
    "ModelConfigurationError",
    "ModelUnavailableError",
    "ReportDrafter",
    "StudyContext",
    "sanitize_control_tokens",
]
