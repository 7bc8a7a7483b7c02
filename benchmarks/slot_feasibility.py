"""Feasibility of concurrency slots (issue 9): raw two-process claim+complete loops.

``python -m benchmarks.slot_feasibility [--dsn DSN] [--pairs N] [--jobs N]
[--without-counters] [--modes unlimited,slots2,locked]``

On a scratch database (migrated as the library ships, plus the slot prototype below,
created in that database only), alternating runs of raw loops, each in 2 processes of
one connection each, on no-op jobs pre-filled into one queue:

- ``unlimited``: claim_jobs + complete_succeeded, as benchmarks/raw_worker.py (batch 100);
- ``locked``: the current limited path, complete_and_claim_limited (flow.sql) in one
  statement, with a concurrency limit of 50 on the queue;
- ``slots``: the prototype as one SQL statement: a queue's ``limit`` slot rows; a claim
  locks free slot rows (FOR UPDATE SKIP LOCKED, condition on the slot row itself), takes
  as many jobs and writes each job's slot; the completion in the same statement frees the
  finished jobs' slots and the claim after it refills them (still locked by this
  transaction, so no other worker can take them in between);
- ``slots2``: the same in one plpgsql function, each slot row written once per cycle (a
  finished job's slot goes straight to its replacement, or back to free).

Each slot worker takes at most limit / 2 (its fair share). Prints each run's jobs/s and
CPU per job (both client processes and their server backends, from /proc: the server
must be on this machine), the medians, and the paired ratios to unlimited.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
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

LIMIT = 50
MODES = ["unlimited", "slots", "slots2", "locked"]

PROTOTYPE = """
ALTER TABLE pgqueue.jobs ADD COLUMN slot integer;
CREATE TABLE pgqueue.queue_slots (
    queue text NOT NULL, slot integer NOT NULL, job_id bigint,
    PRIMARY KEY (queue, slot)
) WITH (fillfactor = 50);
-- Any other way out of running (the completion below clears slot itself) frees the slot.
CREATE FUNCTION pgqueue.free_slot() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pgqueue.queue_slots SET job_id = NULL
    WHERE queue = OLD.queue AND slot = OLD.slot AND job_id = OLD.id;
    RETURN NULL;
END $$;
CREATE TRIGGER jobs_free_slot AFTER UPDATE OF state ON pgqueue.jobs FOR EACH ROW
WHEN (OLD.slot IS NOT NULL AND NEW.slot IS NOT NULL AND OLD.state = 'running'
      AND NEW.state <> 'running')
EXECUTE FUNCTION pgqueue.free_slot();
CREATE FUNCTION pgqueue.claim_slots(queue_name text, want integer, worker uuid)
RETURNS SETOF pgqueue.jobs LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    slots integer[];
    ids bigint[];
    t timestamptz := clock_timestamp();
BEGIN
    slots := ARRAY(SELECT s.slot FROM pgqueue.queue_slots s
                   WHERE s.queue = queue_name AND s.job_id IS NULL
                   ORDER BY s.slot LIMIT want FOR UPDATE SKIP LOCKED);
    IF cardinality(slots) = 0 THEN RETURN; END IF;
    ids := ARRAY(SELECT j.id FROM pgqueue.jobs j
                 WHERE j.state = 'queued' AND j.queue = queue_name AND j.run_at <= t
                 ORDER BY j.priority DESC, j.run_at, j.id
                 LIMIT cardinality(slots) FOR UPDATE SKIP LOCKED);
    IF cardinality(ids) = 0 THEN RETURN; END IF;
    UPDATE pgqueue.queue_slots s SET job_id = p.id
    FROM unnest(ids, slots[1:cardinality(ids)]) AS p(id, slot)
    WHERE s.queue = queue_name AND s.slot = p.slot;
    RETURN QUERY
    UPDATE pgqueue.jobs j
    SET state = 'running', attempts = j.attempts + 1, started_at = t, worker_id = worker,
        progress = NULL, slot = p.slot
    FROM unnest(ids, slots[1:cardinality(ids)]) AS p(id, slot)
    WHERE j.id = p.id AND j.state::text = 'queued'
    RETURNING j.*;
END $$;
-- The same in one function: each slot row written once per cycle (a finished job's slot
-- goes straight to its replacement, or back to free).
CREATE FUNCTION pgqueue.complete_and_claim_slots(
    done_ids bigint[], done_results text[], done_attempts integer[], done_slots integer[],
    queue_name text, want integer, worker uuid
) RETURNS TABLE (id bigint, attempt integer, slot integer)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    mine integer[];
    avail integer[];
    ids bigint[];
    n integer;
    t timestamptz := clock_timestamp();
BEGIN
    IF cardinality(done_ids) > 0 THEN
        WITH done AS (
            UPDATE pgqueue.jobs AS j
            SET state = 'succeeded', result = d.result::jsonb, finished_at = now(), slot = NULL
            FROM unnest(done_ids, done_results, done_attempts, done_slots)
                 AS d(id, result, attempt, slot)
            WHERE j.id = d.id AND j.state = 'running' AND j.attempts = d.attempt
            RETURNING j.id, d.slot
        )
        SELECT array_agg(done.slot), pgqueue.notify_finished(array_agg(done.id))
        INTO mine FROM done;
    END IF;
    mine := COALESCE(mine, '{}');
    avail := mine || ARRAY(
        SELECT s.slot FROM pgqueue.queue_slots s
        WHERE s.queue = queue_name AND s.job_id IS NULL
        ORDER BY s.slot LIMIT GREATEST(want - cardinality(mine), 0) FOR UPDATE SKIP LOCKED);
    ids := ARRAY(SELECT j.id FROM pgqueue.jobs j
                 WHERE j.state = 'queued' AND j.queue = queue_name AND j.run_at <= t
                 ORDER BY j.priority DESC, j.run_at, j.id
                 LIMIT LEAST(cardinality(avail), want) FOR UPDATE SKIP LOCKED);
    n := cardinality(ids);
    -- Each slot once: to its new job, or (a finished job's slot left over) back to free.
    UPDATE pgqueue.queue_slots s SET job_id = p.id
    FROM unnest(avail, ids) AS p(slot, id)
    WHERE s.queue = queue_name AND s.slot = p.slot AND (p.id IS NOT NULL OR s.job_id IS NOT NULL);
    IF n = 0 THEN RETURN; END IF;
    RETURN QUERY
    UPDATE pgqueue.jobs j
    SET state = 'running', attempts = j.attempts + 1, started_at = t, worker_id = worker,
        progress = NULL, slot = p.slot
    FROM unnest(ids, avail[1:n]) AS p(id, slot)
    WHERE j.id = p.id AND j.state::text = 'queued'
    RETURNING j.id, j.attempts, j.slot;
END $$;
"""

COMPLETE_AND_CLAIM_SLOTS2 = """
SELECT id, attempt, slot
FROM pgqueue.complete_and_claim_slots($1::bigint[], $2::text[], $3::integer[], $4::integer[],
                                      $5::text, $6::integer, $7::uuid)
"""

COMPLETE_AND_CLAIM_SLOTS = """
WITH done AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'succeeded', result = d.result::jsonb, finished_at = now(), slot = NULL
    FROM unnest($1::bigint[], $2::text[], $3::integer[], $4::integer[])
         AS d(id, result, attempt, slot)
    WHERE j.id = d.id AND j.state = 'running' AND j.attempts = d.attempt
    RETURNING j.id, j.queue, d.slot
), freed AS (
    UPDATE pgqueue.queue_slots AS s SET job_id = NULL
    FROM done
    WHERE s.queue = done.queue AND s.slot = done.slot AND s.job_id = done.id
    RETURNING 1
), told AS (
    SELECT (SELECT count(*) FROM freed) AS n,
           (SELECT pgqueue.notify_finished(array_agg(id)) FROM done HAVING count(*) > 0)
)
SELECT c.id, c.attempts, c.slot
FROM told CROSS JOIN LATERAL pgqueue.claim_slots($5::text, $6::integer + 0 * told.n::integer,
                                                 $7::uuid) AS c
"""


def _backend_cpu(pid: int) -> float:
    """CPU seconds of a server backend on this machine (/proc), user + system."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CPU: list[float] = []


async def worker(  # noqa: PLR0912 - three loops side by side, on purpose
    dsn: str, mode: str, go: asyncio.Event, ready: asyncio.Queue[None]
) -> int:
    conn = await asyncpg.connect(dsn)
    backend = conn.get_server_pid()
    go_wait = go.wait

    async def wait_go() -> None:
        await go_wait()
        CPU.append(time.process_time() + _backend_cpu(backend))

    go.wait = wait_go  # type: ignore[method-assign]
    try:
        wid = str(uuid.uuid4())
        done = 0
        if mode == "unlimited":
            claim = await conn.prepare(query("claim_jobs"))
            complete = await conn.prepare(query("complete_succeeded"))
            await claim.fetch(["warmup"], BATCH, wid, *HEAD_PARAMS)
            ready.put_nowait(None)
            await go.wait()
            while rows := [
                r for r in await claim.fetch([QUEUE], BATCH, wid, *HEAD_PARAMS) if r[0] is not None
            ]:
                ids = [r[0] for r in rows]
                await complete.fetch(ids, [None] * len(ids), [r[5] for r in rows])
                done += len(ids)
        elif mode == "locked":
            claim = await conn.prepare(query("complete_and_claim_limited"))
            ready.put_nowait(None)
            await go.wait()
            ids: list[int] = []
            attempts: list[int] = []
            empty = 0
            while True:
                rows = [
                    r
                    for r in await claim.fetch(
                        ids, [None] * len(ids), attempts, [QUEUE], BATCH, wid, LOCK_SPACE
                    )
                    if r[0] is not None
                ]
                done += len(ids)
                ids, attempts = [r[0] for r in rows], [r[5] for r in rows]
                if not rows:
                    empty += 1
                    if await conn.fetchval(
                        "SELECT NOT EXISTS (SELECT FROM pgqueue.jobs WHERE state = 'queued')"
                    ):
                        break
                    if empty > 5:
                        await asyncio.sleep(0.0005)
                else:
                    empty = 0
        else:
            stmt = await conn.prepare(
                COMPLETE_AND_CLAIM_SLOTS if mode == "slots" else COMPLETE_AND_CLAIM_SLOTS2
            )
            share = LIMIT // WORKERS
            ready.put_nowait(None)
            await go.wait()
            ids = []
            attempts = []
            slots: list[int] = []
            empty = 0
            while True:
                rows = await stmt.fetch(ids, [None] * len(ids), attempts, slots, QUEUE, share, wid)
                done += len(ids)
                ids = [r[0] for r in rows]
                attempts = [r[1] for r in rows]
                slots = [r[2] for r in rows]
                if not rows:
                    empty += 1
                    if await conn.fetchval(
                        "SELECT NOT EXISTS (SELECT FROM pgqueue.jobs WHERE state = 'queued')"
                    ):
                        break
                    if empty > 5:
                        await asyncio.sleep(0.0005)
                else:
                    empty = 0
        CPU.append(time.process_time() + _backend_cpu(backend))
        return done
    finally:
        await conn.close()


def child(dsn: str, mode: str) -> None:
    async def run() -> int:
        go = asyncio.Event()
        ready: asyncio.Queue[None] = asyncio.Queue()
        task = asyncio.create_task(worker(dsn, mode, go, ready))
        await ready.get()
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        go.set()
        return await task

    done = asyncio.run(run())
    print(CPU[1] - CPU[0], done, flush=True)


async def one_run(admin: asyncpg.Connection, dsn: str, mode: str, jobs: int) -> tuple[float, float]:
    await admin.execute("TRUNCATE pgqueue.jobs CASCADE")
    await admin.execute("TRUNCATE pgqueue.job_starts")
    await admin.execute("UPDATE pgqueue.queue_slots SET job_id = NULL")
    await admin.execute("SELECT pgqueue.clear_queue_limit($1)", QUEUE)
    if mode == "locked":
        await admin.execute("SELECT pgqueue.set_queue_limit($1, $2::integer)", QUEUE, LIMIT)
    await admin.execute(
        "INSERT INTO pgqueue.jobs (queue, task, args) SELECT $1, 'noop', jsonb_build_object('i', i)"
        " FROM generate_series(1, $2) AS i",
        QUEUE,
        jobs,
    )
    await admin.execute("VACUUM ANALYZE pgqueue.jobs")
    await admin.execute("CHECKPOINT")
    outputs, elapsed = await run_children("benchmarks.slot_feasibility", mode, dsn, WORKERS)
    total = sum(int(out.split()[-1]) for out in outputs)
    cpu = sum(float(out.split()[-2]) for out in outputs)
    left = await admin.fetchval("SELECT count(*) FROM pgqueue.jobs WHERE state <> 'succeeded'")
    if total != jobs or left:
        print(f"  !! {mode}: {total} done, {left} left")
    return jobs / elapsed, cpu / jobs * 1e6


async def bench(dsn: str, pairs: int, jobs: int, *, without_counters: bool) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        if without_counters:
            await admin.execute(
                "DO $$ DECLARE t text; BEGIN FOR t IN SELECT tgname FROM pg_trigger"
                " WHERE tgrelid = 'pgqueue.jobs'::regclass AND tgname LIKE 'jobs_count_%' LOOP"
                " EXECUTE format('ALTER TABLE pgqueue.jobs DISABLE TRIGGER %I', t);"
                " END LOOP; END $$"
            )
        await admin.execute(PROTOTYPE)
        await admin.execute(
            "INSERT INTO pgqueue.queue_slots (queue, slot)"
            " SELECT $1, s FROM generate_series(1, $2) s",
            QUEUE,
            LIMIT,
        )
        results: dict[str, list[float]] = {m: [] for m in MODES}
        cpus: dict[str, list[float]] = {m: [] for m in MODES}
        for i in range(pairs):
            order = MODES if i % 2 == 0 else MODES[::-1]
            for mode in order:
                rate, cpu = await one_run(admin, dsn, mode, jobs)
                results[mode].append(rate)
                cpus[mode].append(cpu)
            print(
                f"run {i + 1}: "
                + ", ".join(
                    f"{m} {results[m][-1]:,.0f} ({cpus[m][-1]:.0f} us cpu/job)" for m in results
                )
                + "; "
                + ", ".join(
                    f"{m}/unlimited {results[m][-1] / results['unlimited'][-1]:.2f}"
                    for m in MODES[1:]
                ),
                flush=True,
            )
        print(
            "median CPU per job (clients + backends): "
            + ", ".join(f"{m} {statistics.median(v):.0f} us" for m, v in cpus.items())
        )
        print("best run: " + ", ".join(f"{m} {max(v):,.0f} jobs/s" for m, v in results.items()))
        print_ratios(results, MODES)
    finally:
        await admin.close()


def main() -> None:
    parser = argument_parser(MODES, pairs=5)
    parser.add_argument(
        "--without-counters",
        action="store_true",
        help="disable migration 0019's counting triggers in the scratch database",
    )
    args = parser.parse_args()
    MODES[:] = args.modes.split(",")
    if args.child:
        child(args.dsn, args.child)
        return
    from benchmarks.database import scratch_database  # noqa: PLC0415

    with scratch_database(args.dsn) as (dsn, _where):
        asyncio.run(bench(dsn, args.pairs, args.jobs, without_counters=args.without_counters))


if __name__ == "__main__":
    main()
