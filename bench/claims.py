"""Claims per second and p99 claim latency, 16 reviewers on PostgreSQL.

Ours (``db.queue.claim_next``: one UPDATE ... FOR UPDATE SKIP LOCKED statement
that also inserts its audit row, a data-modifying CTE) against the naive way
(SELECT the best row, then UPDATE it if still queued, retrying on a lost race),
in the same run on the same database. Both write the same audit row per claim;
the "audit" column counts the claim rows with outcome "ok" each run wrote, which
must equal its claims. Output carries draft ids and counts only.

    python -m bench.claims [--drafts 5000] [--reviewers 16] [--url URL]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, insert, text, update
from sqlalchemy.orm import Session

from db.audit import Action, Actor, Outcome, record
from db.engine import make_engine
from db.migrate import upgrade
from db.queue import claim_next
from db.tables import Draft, DraftState, Reviewer, Study, StudyState

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
Claim = Callable[[Session, Actor], int | None]

_NAIVE_SELECT = text(
    "SELECT id FROM drafts WHERE state = 'queued' ORDER BY priority DESC, created_at, id LIMIT 1"
)
_NAIVE_UPDATE = text(
    "UPDATE drafts SET state = 'claimed', claimed_by = :rid, claimed_at = :now, "
    "claim_expires_at = :expires, updated_at = :now WHERE id = :id AND state = 'queued'"
)


class _Lost(Exception):
    """Another reviewer updated the selected row first."""


def naive_claim(session: Session, actor: Actor) -> int | None:
    """SELECT the best queued row, then UPDATE it if it is still queued."""
    conn = session.connection()
    draft_id = conn.execute(_NAIVE_SELECT).scalar_one_or_none()
    if draft_id is None:
        record(session, actor, Action.CLAIM, Outcome.EMPTY)
        return None
    now = datetime.now(UTC)
    params = {"rid": actor.reviewer_id, "now": now, "expires": now + timedelta(minutes=15)}
    if conn.execute(_NAIVE_UPDATE, {**params, "id": draft_id}).rowcount != 1:
        raise _Lost()  # rolls the transaction back; the caller retries
    record(session, actor, Action.CLAIM, Outcome.OK, draft_id=draft_id)
    return int(draft_id)


def ours(session: Session, actor: Actor) -> int | None:
    return claim_next(session, actor, ttl_s=900.0)


def seed(engine_url: str, drafts: int, reviewers: int) -> list[Actor]:
    engine = make_engine(engine_url)
    upgrade(engine)
    now = datetime.now(UTC)
    with Session(engine) as session, session.begin():
        session.execute(
            insert(Study),
            [
                {
                    "study_key": f"b{i:08d}",
                    "study_instance_uid": f"2.25.{i}",
                    "modalities": "CR",
                    "priority": i % 3,
                    "state": StudyState.DRAFTED,
                }
                for i in range(drafts)
            ],
        )
        session.execute(
            insert(Draft),
            [
                {
                    "study_id": i + 1,
                    "generation": 1,
                    "state": DraftState.QUEUED,
                    "priority": i % 3,
                    "modality": "CR",
                    "findings": "f",
                    "impression": "i",
                    "raw_text": "",
                    "flags": [],
                    "provenance": {},
                    "images": [],
                    "created_at": now + timedelta(microseconds=i),
                    "updated_at": now,
                }
                for i in range(drafts)
            ],
        )
        actors = []
        for r in range(reviewers):
            rid = session.execute(
                insert(Reviewer)
                .values(name=f"bench{r}", display_name=f"bench{r}", password_hash="-", active=True)
                .returning(Reviewer.id)
            ).scalar_one()
            actors.append(Actor(int(rid), f"bench{r}", "127.0.0.1"))
    engine.dispose()
    return actors


def reset(engine_url: str) -> None:
    engine = create_engine(engine_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(
            update(Draft).values(
                state=DraftState.QUEUED, claimed_by=None, claimed_at=None, claim_expires_at=None
            )
        )
        conn.exec_driver_sql("VACUUM ANALYZE drafts")
    engine.dispose()


_AUDITED_CLAIMS = text(
    "SELECT count(*) FROM audit_events WHERE action = 'claim' AND outcome = 'ok'"
)


def run(engine_url: str, actors: list[Actor], claim: Claim) -> dict[str, float]:
    engine = make_engine(engine_url, pool_size=len(actors), max_overflow=0)
    with engine.connect() as conn:
        audited_before = conn.execute(_AUDITED_CLAIMS).scalar_one()
    claimed: list[list[int]] = [[] for _ in actors]
    latencies: list[list[float]] = [[] for _ in actors]
    retries = [0] * len(actors)
    start = threading.Barrier(len(actors) + 1)

    def reviewer(i: int) -> None:
        # Each reviewer keeps its connection, as a pooled web worker would.
        with engine.connect() as conn:
            conn.commit()
            start.wait()
            while True:
                t = time.perf_counter()
                while True:
                    try:
                        with Session(bind=conn) as session, session.begin():
                            draft_id = claim(session, actors[i])
                        break
                    except _Lost:
                        retries[i] += 1
                latencies[i].append(time.perf_counter() - t)
                if draft_id is None:
                    return
                claimed[i].append(draft_id)

    threads = [threading.Thread(target=reviewer, args=(i,)) for i in range(len(actors))]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    with engine.connect() as conn:
        audited = conn.execute(_AUDITED_CLAIMS).scalar_one() - audited_before
    engine.dispose()
    every = [d for c in claimed for d in c]
    lat = sorted(x for per in latencies for x in per)
    doubles = sum(n - 1 for n in Counter(every).values() if n > 1)
    return {
        "claims": len(every),
        "retries": sum(retries),
        "double": doubles,
        "audit": audited,
        "per_s": len(every) / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[int(0.99 * (len(lat) - 1))] * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drafts", type=int, default=5000)
    parser.add_argument("--reviewers", type=int, default=16)
    parser.add_argument("--url", default=ADMIN_URL, help="admin URL of the PostgreSQL server")
    args = parser.parse_args()
    name = f"prelim_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(args.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = f"{args.url.rsplit('/', 1)[0]}/{name}"
    try:
        actors = seed(url, args.drafts, args.reviewers)
        results = {}
        for label, claim in (("naive SELECT+UPDATE", naive_claim), ("ours SKIP LOCKED", ours)):
            reset(url)
            results[label] = run(url, actors, claim)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    print(f"{args.reviewers} reviewers, {args.drafts} queued drafts, PostgreSQL, durable commits")
    print(
        f"{'way':<22}{'claims':>8}{'audit':>7}{'double':>8}{'retries':>9}{'claims/s':>10}"
        f"{'p50 ms':>9}{'p99 ms':>9}"
    )
    for label, r in results.items():
        print(
            f"{label:<22}{r['claims']:>8.0f}{r['audit']:>7.0f}{r['double']:>8.0f}"
            f"{r['retries']:>9.0f}{r['per_s']:>10.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}"
        )
    naive, mine = results["naive SELECT+UPDATE"], results["ours SKIP LOCKED"]
    print(
        f"ratio ours/naive: {mine['per_s'] / naive['per_s']:.1f}x claims/s, "
        f"p99 {naive['p99_ms'] / mine['p99_ms']:.1f}x lower"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
