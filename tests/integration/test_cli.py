"""The `prelim` command as an operator types it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def prelim(
    *args: str,
    tmp_path: Path,
    db_url: str | None = None,
    stdin: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRELIM_", "PREFECT_"))}
    env["PRELIM_CONFIG"] = str(tmp_path / "absent.toml")
    env["PRELIM_DATA_DIR"] = str(tmp_path / "var")
    if db_url:
        env["PRELIM_DATABASE_URL"] = db_url
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", "prelim.cli", *args],
        env=env,
        input=stdin,
        text=True,
        capture_output=True,
        timeout=120,
        check=False,
    )


def test_db_upgrade_user_add_and_queue(tmp_path: Path, db_url: str) -> None:
    up = prelim("db", "upgrade", tmp_path=tmp_path, db_url=db_url)
    assert up.returncode == 0, up.stderr
    assert "revision" in up.stdout
    add = prelim(
        "user",
        "add",
        "alice",
        "--password-stdin",
        tmp_path=tmp_path,
        db_url=db_url,
        stdin="correct horse battery staple\n",
    )
    assert add.returncode == 0, add.stderr
    again = prelim(
        "user",
        "add",
        "alice",
        "--password-stdin",
        tmp_path=tmp_path,
        db_url=db_url,
        stdin="correct horse battery staple\n",
    )
    assert again.returncode == 1 and "alice" in again.stderr
    queue = prelim("queue", tmp_path=tmp_path, db_url=db_url)
    assert queue.returncode == 0, queue.stderr
    assert "Studies" in queue.stdout and "Drafts" in queue.stdout


def test_unreachable_database_says_what_to_fix(tmp_path: Path) -> None:
    out = prelim(
        "db", "upgrade", tmp_path=tmp_path, db_url="postgresql+psycopg://nobody@127.0.0.1:1/none"
    )
    assert out.returncode == 1
    assert "PRELIM_DATABASE_URL" in out.stderr
    assert "Traceback" not in out.stderr


def test_build_test_model(tmp_path: Path) -> None:
    out = prelim("build-test-model", str(tmp_path / "tiny"), tmp_path=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "tiny" / "config.json").exists()


@pytest.mark.parametrize(
    "command",
    [
        "run",
        "listen",
        "worker",
        "review",
        "demo",
        "db",
        "user",
        "queue",
        "build-test-model",
        "config",
    ],
)
def test_every_command_has_help(command: str, tmp_path: Path) -> None:
    out = prelim(command, "--help", tmp_path=tmp_path)
    assert out.returncode == 0
    assert "usage: prelim" in out.stdout


def test_worker_without_prefect_server_says_what_to_do(tmp_path: Path) -> None:
    env_out = prelim("worker", tmp_path=tmp_path)
    assert env_out.returncode == 1
    assert "PREFECT_API_URL" in env_out.stderr


def test_run_without_weights_stops_at_once_with_the_fix(tmp_path: Path) -> None:
    """No hub and no local weights: stop before starting anything, and say what to do."""
    import time

    env_model = str(tmp_path / "no-such-model")
    started = time.monotonic()
    out = prelim(
        "run",
        "--model",
        "google/medgemma-4b-it",
        tmp_path=tmp_path,
        extra_env={"HF_ENDPOINT": "https://hub.invalid", "HF_HOME": env_model},
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert "hf auth login" in out.stderr and "PRELIM_MODEL" in out.stderr
    assert "--stand-in-if-missing" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "var" / "prefect").exists(), "nothing slow was started first"
    assert time.monotonic() - started < 90
