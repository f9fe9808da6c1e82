"""``prelim review``: the review app alone, served by uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from prelim.database import open_database
from prelim.settings import Settings
from review.app import create_app

log = logging.getLogger(__name__)


def serve(settings: Settings) -> int:
    """Serve until interrupted; refuses a non-loopback address without a secret."""
    database = open_database(settings)
    try:
        app = create_app(settings, database)
        log.info("review app on http://%s:%d", settings.review_host, settings.review_port)
        uvicorn.run(
            app,
            host=settings.review_host,
            port=settings.review_port,
            log_level="warning",
            access_log=False,
            proxy_headers=False,
        )
    finally:
        database.dispose()
    return 0
