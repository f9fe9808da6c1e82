from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from models import ModelConfigurationError, ReportDrafter
from models.loading import resolve_dtype

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("name", ["float16", "fp16", "half", "torch.float16"])
def test_float16_is_refused_with_the_reason(name: str) -> None:
    with pytest.raises(ModelConfigurationError, match="float16 is refused.*empty output"):
        ReportDrafter.load("google/medgemma-4b-it", device="cpu", dtype=name)


def test_default_dtypes() -> None:
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ModelConfigurationError, match="unknown dtype"):
        resolve_dtype("int8", torch.device("cpu"))


_PROBE = """
import sys
from models import ModelUnavailableError, ReportDrafter
try:
    ReportDrafter.load(sys.argv[1], device="cpu")
except ModelUnavailableError as exc:
    print(exc)
    sys.exit(3)
sys.exit(0)
"""


def _probe(model: str, **extra_env: str) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter: the hub client reads HF_HUB_OFFLINE when it is imported.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), **extra_env}
    return subprocess.run(
        [sys.executable, "-c", _PROBE, model],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )


def test_missing_weights_fail_at_once_with_the_fix(tmp_path: Path) -> None:
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    for model in ("google/medgemma-does-not-exist-4b", str(empty)):
        result = _probe(model)
        assert result.returncode == 3, result.stderr[-2000:]
        message = result.stdout
        assert model in message
        assert "accept the licence" in message
        assert "hf auth login" in message and "HF_TOKEN" in message
        assert "PRELIM_MODEL" in message
        assert "No other model is used" in message


def test_unreachable_hub_fails_in_seconds_not_after_retries(tmp_path: Path) -> None:
    """Not offline-flagged, but no route to the hub: no minutes of download retries."""
    started = time.monotonic()
    result = _probe(
        "google/medgemma-4b-it",
        HF_HUB_OFFLINE="0",
        HF_ENDPOINT="https://hub.invalid",
        HF_HOME=str(tmp_path / "hf"),
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 3, result.stderr[-2000:]
    assert "cannot reach https://hub.invalid" in result.stdout
    assert "PRELIM_MODEL" in result.stdout
    assert elapsed < 60  # the hub client alone retries for minutes
