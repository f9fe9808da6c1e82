"""docker/compose.yaml and compose.worker.yaml: structure, secrets, and Compose's own
validation of the stack, a GPU node and the README's overrides."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.unit.ship.docker_files import (
    COMPOSE,
    COMPOSE_WORKER,
    DOCKER,
    README,
    REQUIRED_SECRETS,
    SECRET_NAME,
    TEST_SECRETS,
    VARIABLE,
    WORKER_NODE_VARS,
    clean_env,
    compose_command,
    env_example,
    load_yaml,
    settings_from,
)

ONE_SHOT = {"migrate"}
PRELIM_SERVICES = {"migrate", "listener", "worker", "review"}


def _services(path: Path = COMPOSE) -> dict[str, dict[str, Any]]:
    return load_yaml(path)["services"]


# -- compose files: structure, read without Docker ----------------------------------


def test_compose_services_health_and_order() -> None:
    services = _services()
    assert set(services) == {"postgres", "prefect", "migrate", "listener", "worker", "review"}
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no"
            continue
        test = service.get("healthcheck", {}).get("test")
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name} has no health check"
    assert services["migrate"]["command"] == ["prelim", "db", "upgrade"]
    for name in PRELIM_SERVICES - ONE_SHOT:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    for name in ("migrate", "prefect"):
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
    prefect = services["prefect"]
    assert prefect["image"] == "prefecthq/prefect:3.8.8-python3.11"
    assert prefect["environment"]["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert prefect["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith(
        "postgresql+asyncpg://"
    )
    for name in PRELIM_SERVICES:
        env = services[name]["environment"]
        assert env["PRELIM_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert env["PREFECT_API_URL"] == "http://prefect:4200/api", name
        assert services[name]["build"]["target"] in ("listener", "worker", "review")


def test_worker_reserves_a_gpu_and_volumes_are_named() -> None:
    for path in (COMPOSE, COMPOSE_WORKER):
        worker = _services(path)["worker"]
        devices = worker["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
        assert worker["build"]["target"] == "worker"
        assert worker["environment"]["PRELIM_DEVICE"] == "cuda"
    compose = load_yaml(COMPOSE)
    assert {"postgres-data", "spool", "images", "hf-cache"} <= set(compose["volumes"])
    services = compose["services"]
    assert "spool:/var/lib/prelim/spool" in services["listener"]["volumes"]
    assert "spool:/var/lib/prelim/spool:ro" in services["worker"]["volumes"]
    assert "images:/var/lib/prelim/images:ro" in services["review"]["volumes"]
    init = services["postgres"]["volumes"][1].split(":")[0]
    assert (DOCKER / init).is_file()


def test_no_secret_is_written_into_the_compose_files() -> None:
    for path in (COMPOSE, COMPOSE_WORKER):
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("#"):
                continue
            key, sep, value = line.partition(":")
            if sep and SECRET_NAME.search(key) and value.strip():
                assert value.strip().startswith("${"), f"{path.name}: {line}"
            if "://" in line and "@" in line:
                assert re.search(r"://\w+:\$\{POSTGRES_PASSWORD:\?[^}]+\}@", line), line
    for name in REQUIRED_SECRETS:
        assert re.search(rf"\${{{name}:\?[^}}]+}}", COMPOSE.read_text()), name
    assert "HF_TOKEN: ${HF_TOKEN" in COMPOSE.read_text()
    for name, value in env_example().items():
        if SECRET_NAME.search(name):
            assert value == "", f".env.example must leave {name} empty"


def test_every_variable_is_in_env_example() -> None:
    documented = set(env_example())
    for path in (COMPOSE, COMPOSE_WORKER):
        used = {name for name, _, _ in VARIABLE.findall(path.read_text())}
        assert used - documented == set(), f"{path.name}: {sorted(used - documented)}"


# -- compose files: validated by Compose itself -------------------------------------


@pytest.fixture(scope="module")
def compose() -> list[str]:
    command = compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2 client (docker compose / docker-compose) here")
    return command


def _config(compose: list[str], files: list[Path], env: dict[str, str], cwd: Path) -> Any:
    argv = [*compose, "--project-directory", str(cwd)]
    for path in files:
        argv += ["-f", str(path)]
    argv += ["--env-file", str(DOCKER / ".env.example"), "config", "--format", "json"]
    return subprocess.run(argv, capture_output=True, text=True, env=clean_env(**env), check=False)


def test_compose_config_accepts_the_stack(
    compose: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    done = _config(compose, [COMPOSE], TEST_SECRETS, DOCKER)
    assert done.returncode == 0, done.stderr
    services = json.loads(done.stdout)["services"]
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == (
        "nvidia"
    )
    # What each prelim container gets is a valid Settings.
    for name in PRELIM_SERVICES:
        env = services[name]["environment"]
        settings = settings_from(env, monkeypatch, tmp_path)
        assert settings.database_url.endswith("@postgres:5432/prelim"), name
    review = settings_from(services["review"]["environment"], monkeypatch, tmp_path)
    assert review.secret_key is not None and review.review_host == "0.0.0.0"


def test_compose_config_refuses_missing_secrets(compose: list[str]) -> None:
    done = _config(compose, [COMPOSE], {}, DOCKER)
    assert done.returncode != 0
    for name in REQUIRED_SECRETS:
        assert name in done.stderr, name


def test_compose_config_accepts_a_gpu_node(compose: list[str]) -> None:
    done = _config(compose, [COMPOSE_WORKER], {**TEST_SECRETS, **WORKER_NODE_VARS}, DOCKER)
    assert done.returncode == 0, done.stderr
    env = json.loads(done.stdout)["services"]["worker"]["environment"]
    assert env["PREFECT_API_URL"] == "http://main.example:4200/api"
    assert "@main.example:5432/prelim" in env["PRELIM_DATABASE_URL"]


def test_readme_overrides_validate(compose: list[str], tmp_path: Path) -> None:
    """Each compose snippet of docker/README.md, used as compose.override.yaml."""
    snippets = [
        s
        for s in re.findall(r"```yaml\n(.*?)```", README.read_text(), flags=re.S)
        if "services:" in s
    ]
    assert len(snippets) >= 3
    copy = tmp_path / "docker"
    shutil.copytree(DOCKER, copy, ignore=shutil.ignore_patterns(".env"))
    for snippet in snippets:
        override = copy / "compose.override.yaml"
        override.write_text(textwrap.dedent(snippet))
        done = _config(compose, [copy / "compose.yaml", override], TEST_SECRETS, copy)
        assert done.returncode == 0, f"{snippet}\n{done.stderr}"
        for name, service in json.loads(done.stdout)["services"].items():
            if name.startswith("worker"):
                devices = service["deploy"]["resources"]["reservations"]["devices"]
                assert len(devices) == 1, f"{name} reserves {devices}"
