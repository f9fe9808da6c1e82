"""docker/healthcheck.py, the images' `prelim-healthcheck`, against real servers."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.unit.ship.docker_files import HEALTHCHECK, ROOT, clean_env

DCMTK_STORESCP = Path("/usr/bin/storescp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    ready = threading.Event()
    deadline = threading.Timer(timeout_s, ready.set)
    deadline.start()
    try:
        while not ready.is_set():
            assert process.poll() is None, "the server exited"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                ready.wait(0.05)
        pytest.fail(f"nothing listens on {port} after {timeout_s} s")
    finally:
        deadline.cancel()


def _probe(*args: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=clean_env(PRELIM_CONFIG=str(tmp_path / "absent.toml"), PYTHONPATH=str(ROOT), **env),
        check=False,
    )


@pytest.mark.dcmtk
def test_echo_succeeds_against_dcmtk_storescp(tmp_path: Path) -> None:
    if not DCMTK_STORESCP.exists():
        pytest.skip("DCMTK's storescp is not installed")
    port = _free_port()
    scp = subprocess.Popen(
        [str(DCMTK_STORESCP), "-aet", "PRELIMT", "-od", str(tmp_path), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, scp)
        done = _probe(
            "echo",
            tmp_path=tmp_path,
            PRELIM_LISTENER_HOST="0.0.0.0",
            PRELIM_LISTENER_PORT=str(port),
            PRELIM_AE_TITLE="PRELIMT",
        )
    finally:
        scp.terminate()
        scp.wait(10)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "C-ECHO to AE PRELIMT at 127.0.0.1" in done.stdout and "success" in done.stdout


def test_echo_counts_an_allowlist_rejection_as_alive(tmp_path: Path) -> None:
    ae = AE(ae_title="PRELIMT")
    ae.add_supported_context(Verification)
    ae.require_calling_aet = ["PACS1"]
    echoes: list[object] = []
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_ECHO, echoes.append)]
    )
    assert server is not None
    try:
        port = server.server_address[1]
        done = _probe(
            "echo", tmp_path=tmp_path, PRELIM_LISTENER_PORT=str(port), PRELIM_AE_TITLE="PRELIMT"
        )
    finally:
        server.shutdown()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rejected" in done.stdout and echoes == []


def test_echo_fails_when_nothing_listens(tmp_path: Path) -> None:
    done = _probe("echo", tmp_path=tmp_path, PRELIM_LISTENER_PORT=str(_free_port()))
    assert done.returncode == 1
    assert "no DICOM association with AE PRELIM" in done.stdout


class _Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server spelling
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_port() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def test_review_and_url_checks(http_port: int, tmp_path: Path) -> None:
    done = _probe("review", tmp_path=tmp_path, PRELIM_REVIEW_PORT=str(http_port))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"GET http://127.0.0.1:{http_port}/health: HTTP 200" in done.stdout
    done = _probe("url", f"http://127.0.0.1:{http_port}/other", tmp_path=tmp_path)
    assert done.returncode == 1 and "HTTP 503" in done.stdout
    done = _probe("url", f"http://127.0.0.1:{_free_port()}/health", tmp_path=tmp_path)
    assert done.returncode == 1
    assert _probe("nonsense", tmp_path=tmp_path).returncode == 2
