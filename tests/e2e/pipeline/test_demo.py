"""`prelim demo --exit`: the README's walk-through, as a new user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.pipeline.conftest import free_port


@pytest.mark.slow
def test_demo_sends_studies_and_prints_the_summary(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PRELIM_"))}
    env.update(
        PRELIM_CONFIG=str(tmp_path / "absent.toml"),
        PRELIM_PREFECT_PORT=str(free_port()),
        PRELIM_REVIEW_PORT=str(free_port()),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        COLUMNS="120",
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "prelim.cli",
            "demo",
            "--exit",
            "--data-dir",
            str(tmp_path / "var"),
            "--listener-port",
            str(free_port()),
            "--stable-age-s",
            "1",
            "--timeout",
            "300",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "tiny stand-in model" in text  # said plainly, before starting
    assert text.index("tiny stand-in model") < text.index("sending instances")
    assert text.count("drafted") == 2, text[-3000:]
    assert "review page" in text and "dashboard" in text and "sign in as" in text
