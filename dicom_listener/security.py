"""Who may associate: calling AE titles, source networks, TLS with client certificates."""

from __future__ import annotations

import ssl

from prelim.errors import ConfigurationError
from prelim.settings import Settings


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A server TLS 1.2+ context, requiring client certificates when a CA is set; or None."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_ca is not None:
            context.load_verify_locations(cafile=str(settings.tls_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the listener's TLS files: {exc}") from exc
    return context


def allowed_calling_titles(settings: Settings) -> list[str]:
    """The calling AE allowlist; empty means any. pynetdicom rejects others (1, 1, 3)."""
    return [title.strip() for title in settings.allowed_ae_titles if title.strip()]
