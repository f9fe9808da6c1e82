"""Loading a Gemma 3 checkpoint once per process, or failing with the fix.

MedGemma is gated: without an accepted licence, a token or a local copy,
``from_pretrained`` fails deep inside the hub client. We turn those failures
into one ``ModelUnavailableError`` that says what to do, and never fall back
to another model.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import transformers
from transformers import AutoModelForImageTextToText, AutoProcessor

from models.errors import ModelConfigurationError, ModelUnavailableError

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
}
_FP16_NAMES = {"float16", "fp16", "half", "torch.float16"}

# Exceptions from huggingface_hub that mean "the files are not reachable from here",
# matched by name so this module needs no import of the hub client.
_UNAVAILABLE_NAMES = {
    "GatedRepoError",
    "RepositoryNotFoundError",
    "RevisionNotFoundError",
    "LocalEntryNotFoundError",
    "EntryNotFoundError",
    "OfflineModeIsEnabled",
    "HfHubHTTPError",
    "HFValidationError",
}

FIX_INSTRUCTIONS = (
    "To fix it, do one of:\n"
    "  1. accept the licence on the model page, https://huggingface.co/{model}, "
    "while signed in to Hugging Face;\n"
    "  2. log in on this machine with `hf auth login`, or set HF_TOKEN to a read token "
    "(and leave HF_HUB_OFFLINE unset so the weights can download once);\n"
    "  3. or set PRELIM_MODEL to a local folder holding the checkpoint "
    "(config.json, *.safetensors and the processor files).\n"
    "No other model is used in its place."
)


@dataclass(frozen=True)
class LoadedModel:
    """A model and its processor on one device, with what identifies the weights."""

    model: Any
    processor: Any
    model_id: str
    revision: str | None
    weights_sha256: str | None
    device: torch.device
    dtype: torch.dtype


_cache: dict[tuple[str, str | None, str, str], LoadedModel] = {}
_lock = threading.Lock()


def resolve_device(device: str) -> torch.device:
    """``auto`` is the first CUDA GPU when there is one, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelConfigurationError(f"device {device!r} asked for, but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """bfloat16 on CUDA, float32 on CPU; float16 is refused."""
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    name = dtype.strip().lower()
    if name in _FP16_NAMES:
        raise ModelConfigurationError(
            "float16 is refused: Gemma 3 models (MedGemma included) overflow in float16 and "
            "produce empty output. Use bfloat16 on a GPU (the default) or float32."
        )
    if name.removeprefix("torch.") not in _DTYPES:
        raise ModelConfigurationError(f"unknown dtype {dtype!r}; use bfloat16 or float32")
    return _DTYPES[name.removeprefix("torch.")]


def _is_unavailable(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ in _UNAVAILABLE_NAMES or isinstance(seen, OSError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def unavailable_error(model: str, reason: str) -> ModelUnavailableError:
    """The error for weights that cannot be loaded, with the fix spelled out."""
    return ModelUnavailableError(
        f"The weights of model {model!r} are not available on this machine ({reason}).\n"
        + FIX_INSTRUCTIONS.format(model=model)
    )


def weights_sha256(folder: Path) -> str:
    """SHA-256 over a local checkpoint's weight files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 24):
                digest.update(chunk)
    return digest.hexdigest()


def _hub_snapshot(model: str, revision: str | None) -> Path | None:
    """The cached snapshot folder of a hub model, found without touching the network."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=True))
    except Exception:  # not cached (or not a hub id): the caller decides
        return None


def _check_hub_reachable(model: str) -> None:
    """Fail in seconds, not after the hub client's minutes of retries, when offline."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return  # transformers then raises its own offline error, which becomes ours
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise unavailable_error(model, f"cannot reach {constants.ENDPOINT}: {exc}") from exc


def _load(
    model: str, revision: str | None, device: torch.device, dtype: torch.dtype
) -> LoadedModel:
    local = Path(model).expanduser()
    if local.exists() and not (local / "config.json").is_file():
        raise unavailable_error(model, f"the folder {local} has no config.json")
    source, snapshot_commit = model, None
    if not local.exists():
        snapshot = _hub_snapshot(model, revision)
        if snapshot is not None:
            # Load the cached files directly: no request to the hub at all.
            source, snapshot_commit = str(snapshot), snapshot.name
        else:
            _check_hub_reachable(model)
    source_revision = revision if source == model else None
    try:
        processor = AutoProcessor.from_pretrained(source, revision=source_revision)
        loaded = AutoModelForImageTextToText.from_pretrained(
            source, revision=source_revision, dtype=dtype
        )
    except Exception as exc:
        if _is_unavailable(exc):
            raise unavailable_error(model, f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
        raise
    loaded = loaded.to(device).eval()  # type: ignore[arg-type]
    tokens_per_image = getattr(loaded.config, "mm_tokens_per_image", None)
    if tokens_per_image is not None and processor.image_seq_length != tokens_per_image:
        raise ModelConfigurationError(
            f"processor image_seq_length {processor.image_seq_length} differs from the "
            f"model's mm_tokens_per_image {tokens_per_image}"
        )
    processor.tokenizer.padding_side = "left"  # decoder-only batching pads on the left
    commit = snapshot_commit or getattr(loaded.config, "_commit_hash", None)
    sha = weights_sha256(local) if local.is_dir() else None
    return LoadedModel(loaded, processor, model, commit or revision, sha, device, dtype)


def load_model(
    model: str, *, revision: str | None = None, device: str = "auto", dtype: str | None = None
) -> LoadedModel:
    """The process's one copy of ``model`` on ``device``, loaded on first use."""
    resolved_device = resolve_device(device)
    resolved_dtype = resolve_dtype(dtype, resolved_device)
    key = (model, revision, str(resolved_device), str(resolved_dtype))
    with _lock:
        cached = _cache.get(key)
        if cached is None:
            cached = _cache[key] = _load(model, revision, resolved_device, resolved_dtype)
        return cached


def library_versions() -> dict[str, str]:
    return {"torch": torch.__version__, "transformers": transformers.__version__}
