"""The benchmark's application: one no-op task on its own queue.

Workers load it with ``pgqueue worker benchmarks.bench_app:queue --dsn DSN``, which
gives the worker its database. The benchmark enqueues through this same Queue, which
finds the database in ``PGQUEUE_DSN`` (``benchmarks/run.py`` sets it).
"""

from pgqueue import Queue

queue = Queue()


@queue.task(name="noop", queue="bench")
async def noop(i: int) -> None:
    """Do nothing (``i`` only tells the jobs apart): the benchmark measures the queue,
    not the work."""
