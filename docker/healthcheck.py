#!/usr/bin/env python3
"""Container health checks, installed in the images as ``prelim-healthcheck``.

    prelim-healthcheck echo       DICOM C-ECHO to this container's listener
    prelim-healthcheck review     GET /health of this container's review app
    prelim-healthcheck url URL    GET URL (the worker's Prefect runner: /health)

Exit 0 when healthy, 1 when not, with one line saying why. Ports, AE title and
TLS files come from the same settings (PRELIM_* variables) as the service.
"""

from __future__ import annotations

import logging
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

CALLING_AE = "HEALTHCHECK"


def _loopback(host: str) -> str:
    """Where to reach a service bound to ``host`` from inside its own container."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _tls_context(cert: str | None, key: str | None, ca: str | None) -> ssl.SSLContext | None:
    if cert is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The probe checks that the service answers, not who it is.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if ca is not None and key is not None:
        # The listener wants a client certificate: present its own.
        context.load_cert_chain(cert, key)
    return context


def check_echo() -> tuple[bool, str]:
    """C-ECHO the listener. An association rejected by its allowlists also counts as
    healthy: the DICOM service is up and answering."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from prelim.settings import load_settings

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    settings = load_settings()
    host = _loopback(settings.listener_host)
    port = settings.listener_port
    context = _tls_context(
        *(str(p) if p else None for p in (settings.tls_cert, settings.tls_key, settings.tls_ca))
    )
    ae = AE(ae_title=CALLING_AE)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    assoc = ae.associate(
        host,
        port,
        ae_title=settings.ae_title,
        tls_args=(context, host) if context is not None else None,
    )
    where = f"AE {settings.ae_title} at {host}:{port}"
    if assoc.is_rejected:
        return True, f"{where} answered (association rejected by its allowlists)"
    if not assoc.is_established:
        return False, f"no DICOM association with {where}"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code == 0x0000:
        return True, f"C-ECHO to {where}: success"
    return False, f"C-ECHO to {where}: status {code!r}"


def check_url(url: str) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - fixed scheme
            code = response.status
    except urllib.error.HTTPError as exc:
        code = exc.code
    except (urllib.error.URLError, OSError) as exc:
        return False, f"GET {url}: {getattr(exc, 'reason', exc)}"
    return code == 200, f"GET {url}: HTTP {code}"


def check_review() -> tuple[bool, str]:
    from prelim.settings import load_settings

    settings = load_settings()
    host = _loopback(settings.review_host)
    if ":" in host:
        host = f"[{host}]"
    return check_url(f"http://{host}:{settings.review_port}/health")


def main(argv: Sequence[str]) -> int:
    checks = {"echo": check_echo, "review": check_review}
    try:
        if len(argv) == 1 and argv[0] in checks:
            ok, why = checks[argv[0]]()
        elif len(argv) == 2 and argv[0] == "url":
            ok, why = check_url(argv[1])
        else:
            print("usage: prelim-healthcheck echo | review | url URL", file=sys.stderr)
            return 2
    except Exception as exc:  # a probe that cannot run is a failed probe
        print(f"health check failed: {type(exc).__name__}: {exc}")
        return 1
    print(why)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
