"""Versioned prompt templates, one per task, built as Gemma 3 chat messages.

The model sees de-identified pixels and the non-identifying context of
``StudyContext`` only. Context strings come from DICOM headers written by
other systems, so control tokens in them are neutralised before they reach
the chat template (a header value must not be able to open a new turn).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from PIL import Image

from models.drafts import DraftRequest, StudyContext

SYSTEM_PROMPT = "You are an expert radiologist."
MAX_CT_SLICES = 85
_MAX_FIELD_CHARS = 48

# Bump a version whenever its template's wording changes: drafts record it.
PROMPT_VERSIONS: dict[str, str] = {"cxr": "cxr-v1", "ct": "ct-v1", "generic": "generic-v1"}

_REPORT_ASK = (
    "Write a draft radiology report with two sections, FINDINGS and IMPRESSION. "
    "Describe only what is visible in the images."
)

# Anything shaped like a Gemma control token (<start_of_turn>, </s>, <image_soft_token>,
# <unused12>...) plus the bare turn markers' words when bracketed by other means.
_CONTROL_TOKEN = re.compile(r"<\s*/?\s*[A-Za-z_][A-Za-z0-9_|:\-]*\s*>")
_BRACKETS = str.maketrans({"<": "‹", ">": "›"})


@dataclass(frozen=True)
class Prompt:
    """A request rendered for the processor: chat messages and the images they reference."""

    messages: list[dict[str, Any]]
    images: list[Image.Image]
    template: str
    version: str


def sanitize_control_tokens(text: str) -> str:
    """Neutralise control tokens and control characters in untrusted context text.

    ``<start_of_turn>`` becomes ``‹start_of_turn›``: still readable, no longer a token.
    Newlines and other control characters become spaces, so a value cannot fake a turn.
    """
    text = _CONTROL_TOKEN.sub(lambda m: m.group(0).translate(_BRACKETS), text)
    text = text.translate(_BRACKETS)
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    return " ".join(text.split())


def _field(value: str | None) -> str | None:
    if value is None:
        return None
    cleaned = sanitize_control_tokens(str(value))[:_MAX_FIELD_CHARS].strip()
    return cleaned or None


def describe_context(context: StudyContext) -> str:
    """The context as one line of plain text, e.g. ``Modality: CR. View: PA. Age: 64 years.``"""
    parts = [f"Modality: {_field(context.modality) or 'unknown'}."]
    view = _field(context.view)
    if view:
        parts.append(f"View: {view}.")
    body_part = _field(context.body_part)
    if body_part:
        parts.append(f"Body part: {body_part}.")
    if isinstance(context.age_years, int) and 0 <= context.age_years <= 130:
        parts.append(f"Patient age: {context.age_years} years.")
    sex = {"M": "male", "F": "female", "O": "other"}.get((context.sex or "").strip().upper())
    if sex:
        parts.append(f"Patient sex: {sex}.")
    return "Study context: " + " ".join(parts)


def sample_slices(images: list[Image.Image], limit: int = MAX_CT_SLICES) -> list[Image.Image]:
    """At most ``limit`` evenly spaced slices, first and last included, order kept."""
    n = len(images)
    if n <= limit:
        return list(images)
    picks = sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})
    return [images[i] for i in picks]


def _image(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def _system() -> dict[str, Any]:
    return {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}


def _cxr(request: DraftRequest) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    images = [_image(im) for im in request.images]
    text = f"{describe_context(request.context)}\nThis is a chest X-ray. {_REPORT_ASK}"
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content += [{"type": "image"} for _ in images]
    return [_system(), {"role": "user", "content": content}], images


def _ct(request: DraftRequest) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    # The multi-slice form of Google's CT notebook: instruction, then each slice
    # image followed by its "SLICE n" label, then the question.
    images = [_image(im) for im in sample_slices(request.images)]
    content: list[dict[str, Any]] = [
        {
            "type": "text",
            "text": (
                f"{describe_context(request.context)}\nYou are reviewing {len(images)} "
                "CT slices of one series, in order. Please review the slices provided "
                "below carefully."
            ),
        }
    ]
    for number, _ in enumerate(images, 1):
        content.append({"type": "image"})
        content.append({"type": "text", "text": f"SLICE {number}"})
    content.append(
        {
            "type": "text",
            "text": f"\n\nBased on the visual evidence in the slices provided above: {_REPORT_ASK}",
        }
    )
    return [_system(), {"role": "user", "content": content}], images


def _generic(request: DraftRequest) -> tuple[list[dict[str, Any]], list[Image.Image]]:
    images = [_image(im) for im in request.images]
    modality = _field(request.context.modality) or "medical"
    text = f"{describe_context(request.context)}\nThis is a {modality} image. {_REPORT_ASK}"
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content += [{"type": "image"} for _ in images]
    return [_system(), {"role": "user", "content": content}], images


_BUILDERS = {"cxr": _cxr, "ct": _ct, "generic": _generic}


def build_prompt(request: DraftRequest) -> Prompt:
    """The chat messages and images for one request; raises ValueError on a bad request."""
    builder = _BUILDERS.get(request.task)
    if builder is None:
        raise ValueError(f"unknown task {request.task!r}; expected one of {sorted(_BUILDERS)}")
    if not request.images:
        raise ValueError(f"request {request.request_id} has no images")
    messages, images = builder(request)
    return Prompt(messages, images, request.task, PROMPT_VERSIONS[request.task])
