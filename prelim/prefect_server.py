"""The embedded Prefect server that ``prelim run`` starts when no PREFECT_API_URL is set."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from prelim.errors import PrelimError
from prelim.settings import Settings

log = logging.getLogger(__name__)


class PrefectServerError(PrelimError):
    """The embedded Prefect server did not start."""


def prefect_env(home: Path, port: int) -> dict[str, str]:
    """Environment for a Prefect server and its clients kept inside ``home``."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        # Tracebacks and flow results never go to result storage.
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "false",
    }


def activate(env: dict[str, str]) -> None:
    """Point this process's Prefect client at a server, also if prefect is already imported."""
    os.environ.update(env)
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_healthy(
    api_url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise PrefectServerError(f"the Prefect server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise PrefectServerError(
        f"the Prefect server at {api_url} did not answer within {timeout_s:.0f} s"
    )


class EmbeddedPrefectServer:
    """A local Prefect server on SQLite under ``data_dir/prefect``, as a child process."""

    def __init__(self, settings: Settings, port: int | None = None) -> None:
        self.port = port or settings.prefect_port
        self.home = (settings.data_dir / "prefect").resolve()
        self.log_path = (settings.data_dir / "logs" / "prefect-server.log").resolve()
        self.env = prefect_env(self.home, self.port)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api_url(self) -> str:
        return self.env["PREFECT_API_URL"]

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> None:
        if _port_busy(self.port):
            raise PrefectServerError(
                f"port {self.port} is already in use: stop what runs there, set "
                f"PRELIM_PREFECT_PORT to a free port, or set PREFECT_API_URL to use that server"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        cmd = [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        log.info("starting the Prefect server (log: %s)", self.log_path)
        try:
            wait_healthy(self.api_url, timeout_s, self.proc)
        except PrefectServerError:
            self.stop()
            raise PrefectServerError(
                f"the embedded Prefect server did not start; see {self.log_path}"
            ) from None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
