"""Rate limits with and without the queue's lock on the claim (issue 9): raw two-process
claim+complete loops of the library's own statements.

``python -m benchmarks.rate_feasibility [--dsn DSN] [--pairs N] [--jobs N]
[--modes unlimited,locked,reserved]``

On a scratch database migrated as the library ships, alternating runs of raw loops,
each in 2 processes of one connection each, on no-op jobs pre-filled into one queue
with a rate limit far above what the loops reach (1,000,000 a second), batches of 100:

- ``unlimited``: claim_jobs + complete_succeeded, as benchmarks/raw_worker.py, with no
  limit on the queue;
- ``locked``: claim_jobs_limited (flow.sql) with no reservation, then
  complete_succeeded: each claim takes the queue's advisory lock and holds it through
  its commit, as a refill or a worker of the previous release does (and as every claim
  of a rate-limited queue did before migration 0022);
- ``reserved``: what a worker does since 0022 for a rate-only queue: reserve_starts (a
  transaction of its own under the lock, committed asynchronously), then
  claim_jobs_limited with the reservation (no lock), then complete_succeeded.

Prints each run's jobs/s, the medians and the paired ratios to unlimited. Written first
(2026-12-01) with a prototype of the reservation, which measured 1.11 of unlimited
against 0.90 for the locked claim; it now measures the library's statements.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.raw_loops import (  # noqa: E402
    BATCH,
    HEAD_PARAMS,
    LOCK_SPACE,
    QUEUE,
    WORKERS,
    argument_parser,
    print_ratios,
    run_children,
)
from pgqueue.sql import query  # noqa: E402

RATE = 1_000_000  # a second: never reached here
MODES = ["unlimited", "locked", "reserved"]


async def _loop(conn: asyncpg.Connection, mode: str, wid: str, go: asyncio.Event) -> int:
    complete = await conn.prepare(query("complete_succeeded"))
    done = 0
    if mode == "unlimited":
        claim = await conn.prepare(query("claim_jobs"))
        await go.wait()
        while rows := [
            r for r in await claim.fetch([QUEUE], BATCH, wid, *HEAD_PARAMS) if r[0] is not None
        ]:
            await complete.fetch([r[0] for r in rows], [None] * len(rows), [r[5] for r in rows])
            done += len(rows)
    elif mode == "locked":
        claim = await conn.prepare(query("claim_jobs_limited"))
        await go.wait()
        while rows := [
            r
            for r in await claim.fetch([QUEUE], BATCH, wid, LOCK_SPACE, [], [], [])
            if r[0] is not None
        ]:
            await complete.fetch([r[0] for r in rows], [None] * len(rows), [r[5] for r in rows])
            done += len(rows)
    else:
        reserve = await conn.prepare(query("reserve_starts"))
        claim = await conn.prepare(query("claim_jobs_limited"))
        await go.wait()
        while True:
            (_, granted, at), *_ = await reserve.fetch([QUEUE], BATCH, LOCK_SPACE)
            rows = [
                r
                for r in await claim.fetch(
                    [QUEUE], BATCH, wid, LOCK_SPACE, [QUEUE], [granted], [at]
                )
                if r[0] is not None
            ]
            if not rows:
                break
            await complete.fetch([r[0] for r in rows], [None] * len(rows), [r[5] for r in rows])
            done += len(rows)
    return done


def child(dsn: str, mode: str) -> None:
    async def run() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            go = asyncio.Event()
            task = asyncio.create_task(_loop(conn, mode, str(uuid.uuid4()), go))
            await asyncio.sleep(0.3)  # the statements prepared
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            go.set()
            return await task
        finally:
            await conn.close()

    print(asyncio.run(run()), flush=True)


async def one_run(admin: asyncpg.Connection, dsn: str, mode: str, jobs: int) -> float:
    await admin.execute("TRUNCATE pgqueue.jobs CASCADE")
    await admin.execute("TRUNCATE pgqueue.job_starts")
    await admin.execute("SELECT pgqueue.clear_queue_limit($1)", QUEUE)
    if mode != "unlimited":
        await admin.execute(
            "SELECT pgqueue.set_queue_limit($1, NULL, $2::integer, interval '1 second')",
            QUEUE,
            RATE,
        )
    await admin.execute(
        "INSERT INTO pgqueue.jobs (queue, task, args) SELECT $1, 'noop', jsonb_build_object('i', i)"
        " FROM generate_series(1, $2) AS i",
        QUEUE,
        jobs,
    )
    await admin.execute("VACUUM ANALYZE pgqueue.jobs")
    await admin.execute("CHECKPOINT")
    outputs, elapsed = await run_children("benchmarks.rate_feasibility", mode, dsn, WORKERS)
    total = sum(int(out.split()[-1]) for out in outputs)
    left = await admin.fetchval("SELECT count(*) FROM pgqueue.jobs WHERE state <> 'succeeded'")
    logged = await admin.fetchval("SELECT COALESCE(sum(starts), 0) FROM pgqueue.job_starts")
    if total != jobs or left:
        print(f"  !! {mode}: {total} done, {left} left")
    if mode == "reserved" and logged > jobs:
        print(f"  !! {mode}: {logged} starts logged for {jobs} jobs")
    return jobs / elapsed


async def bench(dsn: str, pairs: int, jobs: int) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        results: dict[str, list[float]] = {m: [] for m in MODES}
        for i in range(pairs):
            for mode in MODES if i % 2 == 0 else MODES[::-1]:
                results[mode].append(await one_run(admin, dsn, mode, jobs))
            print(
                f"run {i + 1}: "
                + ", ".join(f"{m} {results[m][-1]:,.0f}" for m in MODES)
                + "; "
                + ", ".join(
                    f"{m}/unlimited {results[m][-1] / results['unlimited'][-1]:.2f}"
                    for m in MODES[1:]
                ),
                flush=True,
            )
        print_ratios(results, MODES)
    finally:
        await admin.close()


def main() -> None:
    args = argument_parser(MODES, pairs=7).parse_args()
    MODES[:] = args.modes.split(",")
    if args.child:
        child(args.dsn, args.child)
        return
    from benchmarks.database import scratch_database  # noqa: PLC0415

    with scratch_database(args.dsn) as (dsn, _where):
        asyncio.run(bench(dsn, args.pairs, args.jobs))


if __name__ == "__main__":
    main()
