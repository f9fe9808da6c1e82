"""A real browser (Debian's chromium via Playwright): sign in, claim, edit, approve."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from PIL import Image
from sqlalchemy import select

from db.engine import transaction
from db.tables import Review
from prelim.database import Database, open_database
from prelim.settings import Settings
from review.app import create_app
from tests.integration.review.factories import PASSWORD, add_draft, bulk_drafts, quick_reviewer

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[3] / "test-artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chest_png(path: Path) -> None:
    # A synthetic radiograph-like picture: dark field, two bright lung-shaped blobs.
    y, x = np.mgrid[0:512, 0:512]
    field = np.exp(-(((x - 170) / 80) ** 2 + ((y - 260) / 150) ** 2))
    field += np.exp(-(((x - 342) / 80) ** 2 + ((y - 260) / 150) ** 2))
    spine = np.exp(-(((x - 256) / 18) ** 2)) * 0.9
    img = np.clip(255 * (0.15 + 0.5 * (1 - field) * (y > 60) + spine * 0.5), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img.astype(np.uint8)).save(path)


@pytest.fixture
def server(settings: Settings) -> Iterator[tuple[str, Database, int]]:
    settings = settings.model_copy(update={"review_port": _free_port()})
    _chest_png(settings.resolved_images_dir / "s1" / "0.png")
    database = open_database(settings)
    with transaction(database.sessions) as session:
        quick_reviewer(session, "alice", "Dr Alice Example")
        bulk_drafts(session, 40, priorities=1)
        draft_id = add_draft(
            session,
            priority=2,
            modality="DX",
            images=["s1/0.png"],
            flags=["laterality-unverified", "low-confidence"],
            findings="Heart size is normal. The lungs are clear. No pleural effusion or "
            "pneumothorax. No acute osseous abnormality.",
            impression="No acute cardiopulmonary abnormality.",
            provenance={
                "model_id": "google/medgemma-4b-it",
                "prompt_version": "cxr-v3",
                "generation_s": 2.41,
                "images": 1,
            },
            model_id="google/medgemma-4b-it",
            prompt_version="cxr-v3",
        )
    app = create_app(settings, database)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=settings.review_port, log_level="warning", lifespan="off"
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started and thread.is_alive():
        # Poll until uvicorn reports it is listening.
        thread.join(0.02)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{settings.review_port}", database, draft_id
    finally:
        srv.should_exit = True
        thread.join(10)
        database.dispose()


def test_sign_in_claim_edit_approve(server: tuple[str, Database, int]) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, database, draft_id = server
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(url + "/")
        assert "/signin" in page.url
        page.fill("input[name=name]", "alice")
        page.fill("input[name=password]", PASSWORD)
        page.click("button[type=submit]")
        expect(page.locator("table.worklist")).to_be_visible()
        expect(page.locator(".tabs")).to_contain_text("Queued 41")
        page.keyboard.press("n")  # the claim-next shortcut: the STAT draft comes first
        page.wait_for_url(f"**/drafts/{draft_id}")
        expect(page.locator(".pt-name")).to_contain_text("DOE, Jane")
        expect(page.locator(".status")).to_contain_text("claimed by you")
        assert page.locator(".images img").evaluate("img => img.naturalWidth") == 512
        page.screenshot(path=str(ARTIFACTS / "review-draft-page.png"), full_page=True)
        page.fill("#impression", "No acute cardiopulmonary abnormality. <b>Clear</b>.")
        page.focus("#impression")
        page.keyboard.press("Control+Enter")  # approve from the editor
        page.wait_for_url(url + "/")
        expect(page.locator(".flash")).to_contain_text(f"Draft {draft_id} signed.")
        page.goto(f"{url}/drafts/{draft_id}")
        expect(page.locator(".report")).to_contain_text("<b>Clear</b>")
        page.screenshot(path=str(ARTIFACTS / "review-signed-page.png"), full_page=True)
        browser.close()
    with database.sessions() as session:
        review = session.scalar(select(Review).where(Review.draft_id == draft_id))
    assert review is not None and review.outcome == "edited"
    assert review.sections_changed == ["impression"] and review.edit_distance == 1
