"""`prelim run`: everything starts, answers, and stops cleanly on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.pipeline.conftest import free_port


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_run_serves_everything_and_stops_on_ctrl_c(tmp_path: Path, tiny_model_dir: Path) -> None:
    ports = {"dicom": free_port(), "review": free_port(), "prefect": free_port()}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "PRELIM_"))}
    env.update(
        PRELIM_CONFIG=str(tmp_path / "absent.toml"),
        PRELIM_MODEL=str(tiny_model_dir),
        PRELIM_PREFECT_PORT=str(ports["prefect"]),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prelim.cli",
            "run",
            "--data-dir",
            str(tmp_path / "var"),
            "--listener-host",
            "127.0.0.1",
            "--listener-port",
            str(ports["dicom"]),
            "--review-port",
            str(ports["review"]),
        ],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        banner = "".join(lines)
        assert "prelim is running" in banner, banner[-3000:]
        assert _listening(ports["dicom"]) and _listening(ports["review"])
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['review']}/health") as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['prefect']}/api/health") as r:
            assert r.status == 200
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - started < 60
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    for name, port in ports.items():
        assert not _listening(port), f"{name} port still open after Ctrl-C"
