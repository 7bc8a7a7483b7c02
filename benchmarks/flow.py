"""Flow control's cost, in ``make bench`` (benchmarks/run.py calls :func:`flow_limits`)
or alone:

    .venv/bin/python -m benchmarks.flow            # these cases only
    .venv/bin/python -m benchmarks.flow --quick

No-op jobs processed by 2 worker processes (their defaults), each case beside the
unlimited figure of its round: a concurrency limit of 50 on the queue, 1,000
concurrency keys limited to 1 each, a rate limit far above what the workers achieve;
and the pickup latency p50 with a limit on. Beside the limit of 50, the same workers
with no limit but no more than 50 jobs in flight (``--concurrency 25`` each): what the
number of jobs in flight alone allows, limit or not. The unlimited run and the cases take turns
for a few rounds (``Plan.flow_rounds``): on a shared machine the rate case's fraction moved
from 0.72 to 1.03 between runs, so each figure is the round whose fraction is the
median, and every round's fraction is printed.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import bench_app  # noqa: E402
from benchmarks.report import Figure, Target  # noqa: E402

if TYPE_CHECKING:
    from datetime import datetime

    from benchmarks.run import Bench, Rate

QUEUE = "bench"
KEYS = 1_000
WORKERS = 2
# Well above any rate 2 workers reach here: the log is kept, counted and pruned, but
# never stops a claim.
FAST_RATE = (1_000_000, 1.0)


async def _limit(bench: Bench, **limits: object) -> None:
    await bench.admin.execute(
        "SELECT pgqueue.set_queue_limit($1, $2::integer, $3::integer,"
        " make_interval(secs => $4::float8), $5::integer)",
        QUEUE,
        limits.get("concurrency"),
        limits.get("rate_count"),
        limits.get("rate_seconds"),
        limits.get("key_concurrency"),
    )


async def _unlimit(bench: Bench) -> None:
    await bench.admin.execute("SELECT pgqueue.clear_queue_limit($1)", QUEUE)
    await bench.admin.execute("TRUNCATE pgqueue.job_starts")


async def _fill(bench: Bench, jobs: int, *, keyed: bool) -> datetime:
    queue = bench_app.queue
    specs = [
        queue.build(
            "noop", {"i": i}, queue=QUEUE, concurrency_key=f"k{i % KEYS}" if keyed else None
        )
        for i in range(jobs)
    ]
    await queue.enqueue_many(specs, conn=bench.admin)
    committed: datetime = await bench.admin.fetchval("SELECT clock_timestamp()")
    return committed


async def _process(bench: Bench, *, keyed: bool = False, settings: tuple[str, ...] = ()) -> Rate:
    jobs = bench.plan.process_jobs
    await bench.reset()
    procs = await bench.start_workers(WORKERS, settings)
    try:
        since = await _fill(bench, jobs, keyed=keyed)
        await bench.wait_until_done(jobs, procs)
    finally:
        await bench.stop_workers(procs)
    return await bench.processed_rate(jobs, since, "flow")


async def _pickup_p50(bench: Bench) -> float:
    plan = bench.plan
    total = round(plan.latency_seconds * plan.latency_rate)
    await bench.reset()
    procs = await bench.start_workers(1)
    try:
        loop = asyncio.get_running_loop()
        start, interval = loop.time(), 1 / plan.latency_rate
        for i in range(total):
            if (wait := start + i * interval - loop.time()) > 0:
                await asyncio.sleep(wait)
            await bench_app.noop.enqueue(i=i)
        await bench.wait_until_done(total, procs)
    finally:
        await bench.stop_workers(procs)
    rows = await bench.admin.fetch(
        "SELECT (EXTRACT(EPOCH FROM started_at - created_at) * 1000)::float8"
        " FROM pgqueue.jobs WHERE state = 'succeeded'"
    )
    return statistics.median(row[0] for row in rows)


async def flow_limits(bench: Bench) -> None:
    from benchmarks.run import say  # noqa: PLC0415 - run imports this module

    jobs = bench.plan.process_jobs
    say(
        f"\n== flow control: {jobs:,} no-op jobs, {WORKERS} worker processes (defaults), "
        f"each limit beside the unlimited run of its round, {bench.plan.flow_rounds} round(s) =="
    )
    cases: list[tuple[str, str, dict[str, object], bool, float | None, tuple[str, ...]]] = [
        ("flow_concurrency_50", "concurrency limit of 50 on the queue",
         {"concurrency": 50}, False, 0.80, ()),
        # Context for the limit of 50, no target: no limit at all, but no more jobs in
        # flight than the limit allows (each worker's own --concurrency of 25), which
        # bounds what the limit of 50 can reach with these workers.
        ("flow_in_flight_50", "no limit, 50 jobs in flight (--concurrency 25 each)",
         {}, False, None, ("--concurrency", str(50 // WORKERS))),
        ("flow_keys_1000x1", f"{KEYS:,} concurrency keys limited to 1 each",
         {"key_concurrency": 1}, True, None, ()),
        ("flow_rate_above", "a rate limit above the achievable rate (1,000,000/s)",
         {"rate_count": FAST_RATE[0], "rate_seconds": FAST_RATE[1]}, False, 0.90, ()),
    ]  # fmt: skip
    rounds: dict[str, list[tuple[Rate, Rate]]] = {key: [] for key, *_ in cases}
    try:
        for turn in range(bench.plan.flow_rounds):
            await _unlimit(bench)
            unlimited = await _process(bench)
            say(f"  round {turn + 1}: unlimited {unlimited.per_second:,.0f} jobs/s")
            for key, _label, limits, keyed, _fraction, settings in cases:
                if limits:
                    await _limit(bench, **limits)
                limited = await _process(bench, keyed=keyed, settings=settings)
                await _unlimit(bench)
                rounds[key].append((limited, unlimited))
                say(f"    {key}: {limited.per_second / unlimited.per_second:.2f} of unlimited")
        for key, label, _limits, _keyed, fraction, _settings in cases:
            limited, unlimited = _median_round(rounds[key])
            bench.add(
                Figure(
                    key=key,
                    label=f"no-op jobs processed, {WORKERS} workers, {label}",
                    value=limited.per_second,
                    unit="jobs/s",
                    bound=unlimited.per_second,
                    bound_label="unlimited, same round",
                    target=None if fraction is None else Target("min_fraction", fraction),
                    detail={
                        "jobs": limited.jobs,
                        "seconds": round(limited.seconds, 3),
                        "fractions": [
                            round(a.per_second / b.per_second, 3) for a, b in rounds[key]
                        ],
                    },
                )
            )
        await _limit(bench, concurrency=50)
        p50 = await _pickup_p50(bench)
        bench.add(
            Figure(
                key="flow_pickup_p50",
                label="pickup latency p50 (enqueue to start), concurrency limit of 50 on",
                value=p50,
                unit="ms",
                target=Target("max", 2.0),
            )
        )
    finally:
        await _unlimit(bench)
        await bench.reset()


def _median_round(pairs: list[tuple[Rate, Rate]]) -> tuple[Rate, Rate]:
    """The (limited, unlimited) pair whose fraction is the median (the lower of the two
    middle ones for an even count)."""
    ranked = sorted(pairs, key=lambda pair: pair[0].per_second / pair[1].per_second)
    return ranked[(len(ranked) - 1) // 2]


def main(argv: list[str] | None = None) -> int:
    from benchmarks.standalone import run_alone  # noqa: PLC0415

    return run_alone(__doc__.split("\n\n")[0], flow_limits, argv)


if __name__ == "__main__":
    raise SystemExit(main())
