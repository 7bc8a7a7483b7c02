"""The bound for processing: pgqueue's claim and completion statements, bare, in a loop.

``python -m benchmarks.raw_worker DSN QUEUE BATCH_SIZE``: connect, prepare both
statements, print ``ready``, wait for a line on stdin, then claim a batch and mark it
succeeded, again and again, until a claim comes back empty; print how many jobs it did
and the CPU seconds they took.
One connection, no pool, no task to run, no JSON decoding: what is left is the cost of
the SQL itself.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import asyncpg

from pgqueue.claim_cursor import claim_starts, start_params
from pgqueue.sql import query


async def work(dsn: str, queue: str, batch_size: int) -> tuple[int, float]:
    conn = await asyncpg.connect(dsn)
    try:
        claim = await conn.prepare(query("claim_jobs"))
        complete = await conn.prepare(query("complete_succeeded"))
        # Claims name a worker and completions the attempt, as pgqueue's own do; this
        # loop never registers or heartbeats, as nothing rescues within a benchmark.
        worker_id = str(uuid.uuid4())
        head = start_params(claim_starts([queue], None))  # every claim from the head
        # The queue is still empty: a warm-up.
        await claim.fetch([queue], batch_size, worker_id, *head)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        cpu_start = time.process_time()
        done = 0
        while rows := await claim.fetch([queue], batch_size, worker_id, *head):
            ids = [row[0] for row in rows]
            await complete.fetch(ids, [None] * len(ids), [row[5] for row in rows])
            done += len(ids)
        return done, time.process_time() - cpu_start
    finally:
        await conn.close()


def main() -> None:
    dsn, queue, batch_size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    done, cpu_seconds = asyncio.run(work(dsn, queue, batch_size))
    print(done, cpu_seconds, flush=True)


if __name__ == "__main__":
    main()
