"""Review page render times with 10,000 drafts in the queue (in-process, SQLite).

    python -m bench.review [--drafts 10000] [--requests 50]

Times each request end to end through the ASGI app (routing, session cookie,
queries, template); no network. Output carries routes and timings only.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from db.engine import transaction
from prelim.database import open_database
from prelim.settings import load_settings
from review.app import create_app
from tests.integration.review.factories import PASSWORD, add_draft, bulk_drafts, quick_reviewer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drafts", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="prelim-bench-review-"))
    os.environ.setdefault("PRELIM_CONFIG", str(folder / "absent.toml"))
    settings = load_settings(data_dir=folder)
    database = open_database(settings)
    with transaction(database.sessions) as session:
        quick_reviewer(session, "bench")
        bulk_drafts(session, args.drafts - 1, priorities=3)
        draft_id = add_draft(session)
    client = TestClient(create_app(settings, database))
    token = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/signin").text)
    assert token is not None
    client.post(
        "/signin", data={"name": "bench", "password": PASSWORD, "csrf_token": token.group(1)}
    )
    routes = [
        "/",
        "/?state=queued&modality=CT&priority=1&page=20",
        f"/drafts/{draft_id}",
        "/api/queue?limit=50",
        f"/api/drafts/{draft_id}",
    ]
    print(f"{args.drafts} drafts, SQLite, {args.requests} requests per route, in-process")
    print(f"{'route':<50}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for route in routes:
        assert client.get(route).status_code == 200
        times = []
        for _ in range(args.requests):
            t = time.perf_counter()
            r = client.get(route)
            times.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200
        times.sort()
        p99 = times[int(0.99 * (len(times) - 1))]
        print(f"{route:<50}{statistics.median(times):>9.1f}{p99:>9.1f}{times[-1]:>9.1f}")
    database.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
