"""What workflows cost, in ``make bench`` (benchmarks/run.py calls :func:`workflow_costs`)
or alone:

    .venv/bin/python -m benchmarks.workflows            # these cases only
    .venv/bin/python -m benchmarks.workflows --quick

No-op jobs processed by 2 worker processes (their defaults): 10,000 jobs as 1,000 chains
of 10 (each job released by the trigger on its parent's completion) beside 10,000
independent jobs, enqueue and drain each; and a fan-out of 1,000 jobs with its fan-in
callback (given the 1,000 results). Figures only: nothing here is asserted.
"""

from __future__ import annotations

import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_app  # noqa: E402
from benchmarks.report import Figure  # noqa: E402
from pgqueue.workflows import Workflow, chain, chord, group  # noqa: E402

if TYPE_CHECKING:
    from benchmarks.run import Bench, Rate

WORKERS = 2
CHAIN_LENGTH = 10
FAN_OUT = 1_000


def _jobs(bench: Bench) -> int:
    # 10,000 in the full run; a fifth of that in the quick one.
    return 10_000 if bench.plan.process_jobs >= 50_000 else 2_000


def _noop(i: int) -> object:
    return bench_app.queue.build("noop", {"i": i})


async def _reset(bench: Bench) -> None:
    # CASCADE: tables that reference jobs (a job's durable steps) empty with them.
    await bench.admin.execute(
        "TRUNCATE pgqueue.jobs, pgqueue.job_dependencies, pgqueue.workflows CASCADE"
    )
    with suppress(asyncpg.InsufficientPrivilegeError):
        await bench.admin.execute("CHECKPOINT")


async def _run(bench: Bench, jobs: int, enqueue: object) -> tuple[float, Rate, float]:
    """Enqueue (``enqueue``, a coroutine function) with 2 workers waiting, then wait for
    every job: the enqueue's seconds, the drain rate (from the enqueue's commit to the
    last completion) and the whole, enqueue to last completion, in seconds."""
    await _reset(bench)
    procs = await bench.start_workers(WORKERS)
    try:
        started = time.perf_counter()
        await enqueue()  # type: ignore[operator]
        enqueued = time.perf_counter() - started
        since = await bench.admin.fetchval("SELECT clock_timestamp()")
        await bench.wait_until_done(jobs, procs)
    finally:
        await bench.stop_workers(procs)
    rate = await bench.processed_rate(jobs, since, "workflows")
    return enqueued, rate, enqueued + rate.seconds


async def workflow_costs(bench: Bench) -> None:
    from benchmarks.run import say  # noqa: PLC0415 - run imports this module

    jobs = _jobs(bench)
    chains = jobs // CHAIN_LENGTH
    queue = bench_app.queue
    say(
        f"\n== workflows: {jobs:,} no-op jobs as {chains:,} chains of {CHAIN_LENGTH} against "
        f"{jobs:,} independent jobs, and a fan-out of {FAN_OUT:,} with its fan-in; "
        f"{WORKERS} worker processes (defaults) =="
    )

    async def independent() -> None:
        await queue.enqueue_many([_noop(i) for i in range(jobs)], conn=bench.admin)

    async def chained() -> None:
        wf = Workflow("bench-chains")
        for c in range(chains):
            wf.add(chain(*(_noop(c * CHAIN_LENGTH + i) for i in range(CHAIN_LENGTH))))
        await queue.enqueue_workflow(wf, conn=bench.admin)

    plain_enqueue, plain, plain_total = await _run(bench, jobs, independent)
    say(
        f"  independent: enqueue {plain_enqueue:.3f} s ({jobs / plain_enqueue:,.0f} jobs/s), "
        f"drain {plain.per_second:,.0f} jobs/s, whole {plain_total:.2f} s"
    )
    chain_enqueue, chained_rate, chain_total = await _run(bench, jobs, chained)
    say(
        f"  {chains:,} chains of {CHAIN_LENGTH}: enqueue {chain_enqueue:.3f} s "
        f"({jobs / chain_enqueue:,.0f} jobs/s), drain {chained_rate.per_second:,.0f} jobs/s, "
        f"whole {chain_total:.2f} s; drain rate {chained_rate.per_second / plain.per_second:.2f}"
        f" of independent jobs', enqueue rate {plain_enqueue / chain_enqueue:.2f}"
    )
    bench.add(
        Figure(
            key="workflow_chains_enqueue",
            label=f"enqueue, {chains:,} chains of {CHAIN_LENGTH} (one workflow, one statement)",
            value=jobs / chain_enqueue,
            unit="jobs/s",
            bound=jobs / plain_enqueue,
            bound_label="independent jobs (enqueue_many), same run",
            detail={"jobs": jobs, "seconds": round(chain_enqueue, 3)},
        )
    )
    bench.add(
        Figure(
            key="workflow_chains_drain",
            label=f"no-op jobs processed, {WORKERS} workers, as {chains:,} chains of "
            f"{CHAIN_LENGTH}",
            value=chained_rate.per_second,
            unit="jobs/s",
            bound=plain.per_second,
            bound_label="independent jobs, same run",
            detail={
                "jobs": jobs,
                "seconds": round(chained_rate.seconds, 3),
                "whole_seconds": round(chain_total, 3),
                "independent_whole_seconds": round(plain_total, 3),
            },
        )
    )

    async def fan() -> None:
        # noop's argument takes the callback's 1,000 results (each None).
        callback = queue.build("noop", {}, parent_results_arg="i")
        await queue.enqueue_workflow(
            chord(group(*(_noop(i) for i in range(FAN_OUT))), callback), conn=bench.admin
        )

    fan_enqueue, fanned, fan_total = await _run(bench, FAN_OUT + 1, fan)
    row = await bench.admin.fetchrow(
        "SELECT EXTRACT(EPOCH FROM c.started_at - (SELECT max(finished_at) FROM pgqueue.jobs p"
        "  WHERE p.workflow_id = c.workflow_id AND p.id <> c.id))::float8 * 1000,"
        " jsonb_array_length(c.args->'i')"
        " FROM pgqueue.jobs c WHERE c.parents_waiting IS NOT NULL"
    )
    assert row is not None  # noqa: S101 - the callback is there
    fan_in_ms, given = row
    say(
        f"  fan-out of {FAN_OUT:,} and its fan-in: enqueue {fan_enqueue * 1000:.1f} ms, whole "
        f"{fan_total:.2f} s ({fanned.per_second:,.0f} jobs/s); the callback (given {given:,} "
        f"results) started {fan_in_ms:.1f} ms after the last of the fan-out finished"
    )
    bench.add(
        Figure(
            key="workflow_fan_in",
            label=f"fan-out of {FAN_OUT:,} and its fan-in callback, {WORKERS} workers, whole",
            value=fan_total * 1000,
            unit="ms",
            detail={
                "enqueue_ms": round(fan_enqueue * 1000, 1),
                "jobs_per_second": round(fanned.per_second),
                "fan_in_start_ms": round(fan_in_ms, 1),
                "results_given": given,
            },
        )
    )
    await _reset(bench)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.standalone import run_alone  # noqa: PLC0415

    return run_alone(__doc__.split("\n\n")[0], workflow_costs, argv)


if __name__ == "__main__":
    raise SystemExit(main())
