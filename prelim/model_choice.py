"""Which model a run uses: the configured one, or (only when asked) the tiny stand-in."""

from __future__ import annotations

import logging
from pathlib import Path

from prelim.settings import Settings

log = logging.getLogger(__name__)

STAND_IN_MAX_NEW_TOKENS = 64
STAND_IN_NOTICE = (
    "MedGemma's weights are not available on this machine ({why}).\n"
    "Using the tiny stand-in model instead: its drafts are random, meaningless text.\n"
    "For real drafts accept the licence at https://huggingface.co/google/medgemma-4b-it, "
    "log in (`hf auth login`), or set PRELIM_MODEL to a local folder with the weights."
)


def weights_available(settings: Settings) -> tuple[bool, str]:
    """Whether the configured model can load without a download, and why not."""
    if Path(settings.model).is_dir():
        return True, ""
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(
            settings.model,
            revision=settings.model_revision,
            local_files_only=True,
            allow_patterns=["config.json", "*.safetensors"],
        )
    except Exception as exc:  # not cached, or a malformed id: either way not here
        return False, f"{settings.model} is not in the local model cache: {type(exc).__name__}"
    return True, ""


def stand_in_model_dir(settings: Settings) -> Path:
    """The tiny stand-in model under the data folder, built on first use."""
    from models.testmodel import build_test_model

    target = (settings.data_dir / "models" / "tiny-gemma3").resolve()
    if not (target / "config.json").exists():
        build_test_model(target)
    return target


def choose_model(settings: Settings, *, allow_stand_in: bool) -> tuple[Settings, bool]:
    """Settings with a loadable model; the flag says whether it is the stand-in.

    Without ``allow_stand_in`` the settings come back unchanged and a missing
    model fails when the engine loads, with the engine's instructions.
    """
    if not allow_stand_in:
        return settings, False
    ok, why = weights_available(settings)
    if ok:
        return settings, False
    print(STAND_IN_NOTICE.format(why=why), flush=True)
    # Its text is noise either way: a short draft keeps a CPU-only machine responsive.
    update = {
        "model": str(stand_in_model_dir(settings)),
        "max_new_tokens": min(settings.max_new_tokens, STAND_IN_MAX_NEW_TOKENS),
    }
    return settings.model_copy(update=update), True
