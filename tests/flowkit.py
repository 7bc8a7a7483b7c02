"""Helpers of the flow-control tests (test_flow_claim, test_flow_reservations): claims
as a worker makes them, one statement at a time on a real database."""

from __future__ import annotations

import uuid
from collections import Counter

from pgqueue import driver_sync
from pgqueue.executors import PsycopgExecutor

WORKER = str(uuid.uuid4())


def claim(conn, queues: list[str], want: int) -> list:
    """A claim as a worker serving a limited queue makes it (claim_jobs_limited)."""
    return driver_sync.claim_flow(PsycopgExecutor(conn), queues, want, WORKER, limited=True).jobs


def finish(conn, ids: list[int]) -> None:
    conn.execute(
        "UPDATE pgqueue.jobs SET state = 'succeeded', finished_at = now() WHERE id = ANY(%s)",
        (ids,),
    )


def enqueue(q, queue: str, n: int, key: str | None = None) -> list[int]:
    specs = [q.build("t", {"n": i}, queue=queue, concurrency_key=key) for i in range(n)]
    return [r.id for r in q.enqueue_many_sync(specs)]


def key_of(conn, ids) -> Counter:
    rows = conn.execute(
        "SELECT concurrency_key FROM pgqueue.jobs WHERE id = ANY(%s)", ([j.id for j in ids],)
    )
    return Counter(r[0] for r in rows)
