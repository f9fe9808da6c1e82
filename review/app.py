"""The review app: FastAPI with server-rendered pages and a JSON API."""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prelim import __version__
from prelim.database import Database
from prelim.errors import ConfigurationError
from prelim.settings import Settings
from review import api, auth, pages
from review.deps import SignInRequired

STATIC = Path(__file__).with_name("static")
SESSION_HOURS = 12
MIN_SECRET_LENGTH = 32

_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def session_secret(settings: Settings) -> str:
    """The configured secret, or a per-process one when only this machine can connect."""
    if settings.secret_key is not None:
        secret = settings.secret_key.get_secret_value()
        if len(secret) < MIN_SECRET_LENGTH:
            raise ConfigurationError(
                f"PRELIM_SECRET_KEY must have at least {MIN_SECRET_LENGTH} characters"
            )
        return secret
    if not is_loopback(settings.review_host):
        raise ConfigurationError(
            f"the review app would listen on {settings.review_host}, which is not a loopback "
            "address, without a session secret: set PRELIM_SECRET_KEY (at least "
            f"{MIN_SECRET_LENGTH} random characters)"
        )
    # Sessions then end when the process does, which is fine on one machine.
    return secrets.token_urlsafe(32)


class SecurityHeaders:
    """Adds CSP and friends; pages carry patient identifiers, so nothing is cached."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(_SECURITY_HEADERS)
                if not static and not any(k == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, with_headers)


def create_app(settings: Settings, database: Database) -> FastAPI:
    """The app for ``settings``; raises ConfigurationError if it may not start."""
    secret = session_secret(settings)
    app = FastAPI(
        title="prelim review",
        version=__version__,
        description="Radiologists claim, edit and sign AI draft reports. Every route but "
        "sign-in and /health needs a signed-in session; writes need the X-CSRF-Token header "
        "from GET /api/me.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.database = database
    app.add_middleware(
        SessionMiddleware,
        secret_key=secret,
        session_cookie="prelim_session",
        max_age=SESSION_HOURS * 3600,
        same_site="strict",
        https_only=not is_loopback(settings.review_host),
    )
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.include_router(auth.router)
    app.include_router(pages.router)
    app.include_router(api.router)

    @app.exception_handler(SignInRequired)
    async def _to_signin(request: Request, exc: SignInRequired) -> Response:
        target = request.url.path if request.method == "GET" else "/"
        return RedirectResponse(f"/signin?next={target}", status_code=303)

    return app
