"""From spooled instances to what the model may see: select, de-identify, preprocess.

Plain functions, no Prefect and no SQL, so they are testable alone. Nothing
returned here carries a patient identifier: images are de-identified pixels and
the context is modality, view, body part, age in years and sex.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

from db.pipeline import StudyInputs
from flows.context import study_context
from flows.deid import UidMapper, burned_in_text_risk, deidentify
from flows.preprocess import ct_slice_image, to_model_image
from flows.select import Candidate, select_images
from prelim.errors import PrelimError

log = logging.getLogger(__name__)


class StudyUnreadable(PrelimError):
    """The study's instances could not be read from the spool."""


@dataclass
class PreparedStudy:
    study_key: str
    generation: int
    task: str  # "cxr" | "ct" | "generic" | "none"
    images: list[Image.Image] = field(default_factory=list)
    image_files: list[str] = field(default_factory=list)  # relative to the images folder
    context: dict[str, str | int | None] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (instance ref, reason)
    skip_reason: str | None = None  # set when the model gets nothing from this study


def _read_headers(inputs: StudyInputs) -> tuple[list[Candidate], list[tuple[str, str]]]:
    candidates: list[Candidate] = []
    unreadable: list[tuple[str, str]] = []
    for inst in inputs.instances:
        try:
            ds = pydicom.dcmread(inst.path, stop_before_pixels=True)
        except (OSError, InvalidDicomError, ValueError) as exc:
            # The message names the file by opaque ref only.
            unreadable.append((inst.ref, f"unreadable instance ({type(exc).__name__})"))
            continue
        candidates.append(Candidate(ref=str(inst.path), dataset=ds))
    return candidates, unreadable


def _opaque(ref: str, refs: dict[str, str]) -> str:
    return refs.get(ref, ref)


def prepare_study(inputs: StudyInputs, images_dir: Path) -> PreparedStudy:
    """Select, de-identify and preprocess a study's images for the model.

    De-identified PNGs of exactly what the model sees are written under
    ``images_dir/<study_key>/`` so reviewers can see them next to the draft.
    """
    prepared = PreparedStudy(inputs.study_key, inputs.generation, task="none")
    if not inputs.instances:
        prepared.skip_reason = "the study has no instances"
        return prepared
    path_to_ref = {str(i.path): i.ref for i in inputs.instances}
    candidates, unreadable = _read_headers(inputs)
    prepared.skipped.extend(unreadable)
    if not candidates:
        raise StudyUnreadable(
            f"none of the study's {len(inputs.instances)} instances could be read from the spool"
        )

    # Images that may carry burned-in text never reach the model.
    safe: list[Candidate] = []
    for cand in candidates:
        risk = burned_in_text_risk(cand.dataset)
        if risk is None:
            safe.append(cand)
        else:
            prepared.skipped.append((_opaque(cand.ref, path_to_ref), risk))
    selection = select_images(safe)
    prepared.skipped.extend((_opaque(r, path_to_ref), why) for r, why in selection.skipped)
    if selection.task == "none" or not selection.chosen:
        reasons = sorted({why for _, why in prepared.skipped}) or ["no image the model can use"]
        prepared.skip_reason = "nothing to draft from: " + "; ".join(reasons)
        return prepared

    prepared.task = selection.task
    prepared.context = study_context(selection.chosen[0].dataset)
    uids = UidMapper(secrets.token_bytes(32))
    out_dir = images_dir / inputs.study_key
    out_dir.mkdir(parents=True, exist_ok=True)
    for n, cand in enumerate(selection.chosen, start=1):
        ds = pydicom.dcmread(cand.ref)
        clean = deidentify(ds, uids)
        image = ct_slice_image(clean) if selection.task == "ct" else to_model_image(clean)
        prepared.images.append(image)
        name = f"g{inputs.generation}-{n:03d}.png"
        _write_png(image, out_dir / name)
        prepared.image_files.append(f"{inputs.study_key}/{name}")
    return prepared


def _write_png(image: Image.Image, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    image.save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)
