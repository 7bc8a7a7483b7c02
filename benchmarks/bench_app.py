"""The benchmark's application: one no-op task on its own queue.

Workers load it with ``pgqueue worker benchmarks.bench_app:queue --dsn DSN``, which
gives the worker its database. The benchmark enqueues through this same Queue, which
finds the database in ``PGQUEUE_DSN`` (``benchmarks/run.py`` sets it). A worker started
with ``PGQUEUE_BENCH_CLAIM_TIMES`` set writes its claims' round trips there
(benchmarks/claim_times.py).
"""

import os

from benchmarks.claim_times import ENV, claim_writer
from pgqueue import Queue

queue = Queue()

if claim_times := os.environ.get(ENV):
    queue.on_claim(claim_writer(claim_times))


@queue.task(name="noop", queue="bench")
async def noop(i: int) -> None:
    """Do nothing (``i`` only tells the jobs apart): the benchmark measures the queue,
    not the work."""
