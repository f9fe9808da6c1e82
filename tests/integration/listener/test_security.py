"""Calling AE and address allowlists, the association limit, TLS with client certificates."""

from __future__ import annotations

import datetime as dt
import gc
import ipaddress
import ssl
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from prelim.synthetic import make_ct_series
from tests.integration.listener.conftest import StartListener, associate

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"


def _rejection(assoc) -> tuple[int, int, int] | None:
    rsp = assoc.acceptor.primitive
    if not assoc.is_rejected or rsp is None:
        return None
    return (
        rsp.result,
        rsp.result_source,
        rsp.diagnostic.value if hasattr(rsp.diagnostic, "value") else rsp.diagnostic,
    )


def _logged(caplog: pytest.LogCaptureFixture, *parts: str, timeout_s: float = 5.0) -> bool:
    """The server logs right after it sends the rejection: wait for it, briefly."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(all(p in r.getMessage() for p in parts) for r in caplog.records):
            return True
        time.sleep(0.01)
    return False


def test_calling_ae_allowlist(start: StartListener, caplog: pytest.LogCaptureFixture) -> None:
    listener = start(allowed_ae_titles=["PACS1"])
    refused = associate(listener.port, [(CT, [EXPLICIT])], ae_title="STRANGER")
    assert refused.is_rejected
    assert _rejection(refused) == (0x01, 0x01, 0x03)  # permanent, service-user, calling AE
    assert _logged(caplog, "'STRANGER'", "PRELIM_ALLOWED_AE_TITLES")
    allowed = associate(listener.port, [(CT, [EXPLICIT])], ae_title="PACS1")
    assert allowed.is_established
    assert allowed.send_c_store(make_ct_series(1, slices=1, rows=16, columns=16)[0]).Status == 0
    allowed.release()


def test_address_allowlist(start: StartListener) -> None:
    listener = start(allowed_networks=["10.0.0.0/8"])
    refused = associate(listener.port, [(CT, [EXPLICIT])])
    assert _rejection(refused) == (0x01, 0x01, 0x01)  # permanent, service-user, no reason
    open_listener = start(allowed_networks=["127.0.0.0/8"])
    assoc = associate(open_listener.port, [(CT, [EXPLICIT])])
    assert assoc.is_established
    assoc.release()


def test_association_limit(start: StartListener, caplog: pytest.LogCaptureFixture) -> None:
    listener = start(max_associations=1)
    first = associate(listener.port, [(CT, [EXPLICIT])])
    assert first.is_established
    second = associate(listener.port, [(CT, [EXPLICIT])])
    assert _rejection(second) == (0x02, 0x03, 0x02)  # transient, presentation, local limit
    assert _logged(caplog, "PRELIM_MAX_ASSOCIATIONS")
    first.release()


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(folder: Path, cn: str, issuer: tuple | None, ca: bool = False) -> tuple:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer[0].subject if issuer else _name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (folder / f"{cn}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{cn}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def _client_context(folder: Path, cn: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(folder / "ca.pem"))
    if cn is not None:
        context.load_cert_chain(folder / f"{cn}.pem", folder / f"{cn}.key")
    return context


# pynetdicom's requestor leaves its socket to the garbage collector when the
# TLS handshake fails; collect it here rather than in whichever test runs next.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
def test_tls_requires_a_trusted_client_certificate(start: StartListener, tmp_path: Path) -> None:
    ca = _cert(tmp_path, "ca", None, ca=True)
    _cert(tmp_path, "server", ca)
    _cert(tmp_path, "client", ca)
    _cert(tmp_path, "rogue", None)  # self-signed: not from our CA
    listener = start(
        tls_cert=tmp_path / "server.pem",
        tls_key=tmp_path / "server.key",
        tls_ca=tmp_path / "ca.pem",
    )
    good = associate(
        listener.port,
        [(CT, [EXPLICIT])],
        tls_args=(_client_context(tmp_path, "client"), "127.0.0.1"),
    )
    assert good.is_established
    assert good.send_c_store(make_ct_series(2, slices=1, rows=16, columns=16)[0]).Status == 0
    # A data set of many PDUs over TLS (read from the TLS buffer as well as the socket).
    assert good.send_c_store(make_ct_series(3, slices=1, rows=512, columns=512)[0]).Status == 0
    good.release()
    refused = [
        associate(
            listener.port,
            [(CT, [EXPLICIT])],
            tls_args=(_client_context(tmp_path, cn), "127.0.0.1"),
        )
        for cn in ("rogue", None)
    ]
    refused.append(associate(listener.port, [(CT, [EXPLICIT])]))  # no TLS at all
    assert [a.is_established for a in refused] == [False, False, False]
    for assoc in refused:
        for thread in (assoc, assoc.dul):
            if thread.is_alive():
                thread.join(10)
        if assoc.dul.socket is not None:
            assoc.dul.socket.close()
    del refused, assoc
    gc.collect()
