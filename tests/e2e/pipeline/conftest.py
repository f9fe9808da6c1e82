"""A Prefect server for the session and the embedded prelim stack on the tiny model."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prelim.prefect_server import EmbeddedPrefectServer, activate
from prelim.settings import Settings, load_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flow_runs(names: list[str], timeout_s: float = 60.0) -> list[Any]:
    """The Prefect flow runs with these names, once each has reached a final state.

    A run's draft is committed inside the run, so its final state reaches the
    server a moment after the draft is visible in the queue.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            runs = list(
                client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=names)),
                    sort=FlowRunSort.NAME_ASC,
                    limit=len(names) + 10,
                )
            )
            if len(runs) >= len(names) and all(r.state and r.state.is_final() for r in runs):
                return runs
            if time.monotonic() > deadline:
                return runs  # the caller's assertions say what is missing
            time.sleep(0.2)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPrefectServer]:
    """A real Prefect server (SQLite) that this test process's flows report to."""
    data = tmp_path_factory.mktemp("prefect")
    server = EmbeddedPrefectServer(load_settings(data_dir=data), port=free_port())
    server.start()
    activate(server.env)
    try:
        yield server
    finally:
        from prelim.runner import drain_prefect_clients

        drain_prefect_clients()
        server.stop()


@pytest.fixture
def stack_settings(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    monkeypatch.setenv("PRELIM_CONFIG", str(tmp_path / "absent.toml"))
    return load_settings(
        data_dir=tmp_path / "var",
        model=str(tiny_model_dir),
        device="cpu",
        max_new_tokens=16,
        listener_host="127.0.0.1",
        listener_port=free_port(),
        review_port=free_port(),
        stable_age_s=1.0,
    )


@pytest.fixture
def stack(
    stack_settings: Settings, prefect_server: EmbeddedPrefectServer
) -> Iterator[dict[str, Any]]:
    from prelim.runner import embedded_stack

    with embedded_stack(stack_settings, review=False) as info:
        yield info
