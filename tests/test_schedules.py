"""Periodic schedules on a real database: managed from the library and from SQL, and
enqueued by scheduler rounds (pgqueue.worker.scheduler), one job per tick however many
rounds run at once; missed ticks caught up or skipped."""

from __future__ import annotations

import asyncio
import itertools
from datetime import timedelta

import asyncpg
import psycopg
import pytest

import pgqueue
from pgqueue.errors import ScheduleNotFoundError
from pgqueue.scheduling import InvalidScheduleError
from pgqueue.worker.scheduler import Scheduler


async def scheduler_rounds(dsn: str, schedulers: int = 1, rounds: int = 1) -> list[Scheduler]:
    """``schedulers`` schedulers, each on a pool of its own, running ``rounds`` rounds
    side by side."""
    pools = [await asyncpg.create_pool(dsn, min_size=1, max_size=2) for _ in range(schedulers)]
    try:
        services = [Scheduler(pool) for pool in pools]
        for _ in range(rounds):
            await asyncio.gather(*(s.tick_round() for s in services))
        return services
    finally:
        for pool in pools:
            await pool.close()


# As if the schedules' next tick were that long ago (their workers stopped then).
MOVE_BACK = "UPDATE pgqueue.schedules SET next_run_at ="


def sql(dsn: str, statement: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(statement, params or None)
        return cur.fetchall() if cur.description else []


def ledger(dsn: str, name: str) -> list[tuple]:
    """(tick, job id, manual) of a schedule, oldest first."""
    return sql(
        dsn,
        "SELECT tick, job_id, manual FROM pgqueue.schedule_ticks WHERE schedule = %s ORDER BY tick",
        name,
    )


# --- management -----------------------------------------------------------------------


async def test_a_schedule_is_added_changed_paused_resumed_and_removed(queue):
    added = await queue.set_schedule(
        "nightly", "app.report", cron="30 2 * * *", timezone="Europe/Paris", args={"n": 1}
    )
    assert (added.name, added.task, added.cron, added.every, added.timezone) == (
        "nightly",
        "app.report",
        "30 2 * * *",
        None,
        "Europe/Paris",
    )
    assert (added.args, added.paused, added.source, added.catch_up) == (
        {"n": 1},
        False,
        "runtime",
        False,
    )
    assert added.next_run_at is None  # worked out by the next scheduler round
    assert added.last_job_id is None

    await queue.pause_schedule("nightly")
    changed = await queue.set_schedule("nightly", "app.report", every=timedelta(minutes=5))
    assert (changed.cron, changed.every, changed.paused) == (None, timedelta(minutes=5), True)
    await queue.resume_schedule("nightly")
    assert (await queue.get_schedule("nightly")).paused is False
    assert [s.name for s in await queue.list_schedules()] == ["nightly"]

    assert await queue.remove_schedule("nightly") is True
    assert await queue.remove_schedule("nightly") is False
    assert await queue.list_schedules() == []
    with pytest.raises(ScheduleNotFoundError):
        await queue.get_schedule("nightly")
    for call in (queue.pause_schedule, queue.resume_schedule, queue.trigger_schedule):
        with pytest.raises(ScheduleNotFoundError, match="no schedule nightly"):
            await call("nightly")


def test_the_sync_twins_manage_schedules_too(dsn):
    with pgqueue.Queue(dsn) as queue:
        queue.set_schedule_sync("every-minute", "app.tick", every=60, catch_up=True)
        job_id = queue.trigger_schedule_sync("every-minute")
        schedule = queue.get_schedule_sync("every-minute")
        assert (schedule.last_job_id, schedule.last_manual) == (job_id, True)
        assert schedule.catch_up is True
        assert queue.get_job_sync(job_id).task == "app.tick"


async def test_bad_schedules_are_refused_before_anything_is_written(queue):
    with pytest.raises(InvalidScheduleError):
        await queue.set_schedule("x", "app.report", cron="0 25 * * *")
    with pytest.raises(InvalidScheduleError):
        await queue.set_schedule("x", "app.report", every=60, timezone="Nowhere/Atall")
    with pytest.raises(pgqueue.InvalidJobError):
        await queue.set_schedule("x", "app.report", every=60, priority=10**6)
    assert await queue.list_schedules() == []


async def test_a_schedule_takes_the_registered_tasks_defaults(queue):
    @queue.task(name="app.report", queue="reports", priority=5, max_attempts=7)
    def report() -> None: ...

    schedule = await queue.set_schedule("r", report.name, every=3600)
    assert (schedule.queue, schedule.priority, schedule.max_attempts) == ("reports", 5, 7)


def test_sql_functions_manage_schedules(dsn):
    sql(
        dsn,
        "SELECT pgqueue.set_schedule('from-psql', 'app.report', cron => '*/5 * * * *',"
        " args => '{\"a\": 2}', queue => 'reports', timezone => 'Europe/Paris')",
    )
    sql(dsn, "SELECT pgqueue.pause_schedule('from-psql')")
    assert sql(dsn, "SELECT paused, source, next_run_at FROM pgqueue.schedule_status") == [
        (True, "runtime", None)
    ]
    sql(dsn, "SELECT pgqueue.resume_schedule('from-psql')")
    (job_id,) = sql(dsn, "SELECT pgqueue.trigger_schedule('from-psql')")[0]
    assert sql(dsn, "SELECT queue, task, args::text FROM pgqueue.jobs WHERE id = %s", job_id) == [
        ("reports", "app.report", '{"a": 2}')
    ]
    assert sql(dsn, "SELECT last_job_id, last_manual, paused FROM pgqueue.schedule_status") == [
        (job_id, True, False)
    ]
    with pytest.raises(psycopg.errors.NoDataFound):
        sql(dsn, "SELECT pgqueue.pause_schedule('nope')")
    with pytest.raises(psycopg.errors.CheckViolation):  # exactly one rule
        sql(
            dsn,
            "SELECT pgqueue.set_schedule('two', 'app.x', cron => '* * * * *', every => '1 minute')",
        )
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        sql(
            dsn,
            "SELECT pgqueue.set_schedule('tz', 'app.x', every => '1 minute',"
            " timezone => 'Nowhere/Atall')",
        )
    assert sql(dsn, "SELECT pgqueue.remove_schedule('from-psql')") == [(True,)]
    assert sql(dsn, "SELECT count(*) FROM pgqueue.schedule_ticks") == [(0,)]


# --- scheduler rounds -------------------------------------------------------------------


async def test_a_round_starts_a_new_schedule_then_enqueues_its_due_ticks(queue, dsn):
    await queue.set_schedule("tick", "app.tick", every=10, args={"k": 1}, queue="timers")
    await scheduler_rounds(dsn)
    (next_run_at,) = sql(dsn, "SELECT next_run_at FROM pgqueue.schedules")[0]
    assert next_run_at is not None
    assert ledger(dsn, "tick") == []
    # Three ticks due now, within the grace: a job each, run at its tick.
    sql(dsn, f"{MOVE_BACK} to_timestamp(floor(extract(epoch FROM now()) / 10) * 10 - 20)")
    services = await scheduler_rounds(dsn)
    rows = ledger(dsn, "tick")
    assert len(rows) == 3
    assert services[0].enqueued == 3
    jobs = sql(
        dsn,
        "SELECT j.id, j.run_at, j.queue, j.args::text FROM pgqueue.jobs j ORDER BY j.run_at",
    )
    assert [(j[0], j[1]) for j in jobs] == [(r[1], r[0]) for r in rows]
    assert {(j[2], j[3]) for j in jobs} == {("timers", '{"k": 1}')}
    ticks = [r[0] for r in rows]
    assert [b - a for a, b in itertools.pairwise(ticks)] == [timedelta(seconds=10)] * 2
    schedule = await queue.get_schedule("tick")
    assert schedule.next_run_at == ticks[-1] + timedelta(seconds=10)
    assert (schedule.last_tick, schedule.last_job_id) == (ticks[-1], rows[-1][1])
    assert schedule.last_manual is False


async def test_concurrent_rounds_enqueue_each_tick_once(queue, dsn):
    await queue.set_schedule("fast", "app.tick", every=1)
    await queue.set_schedule("slow", "app.tick", every=5)
    sql(
        dsn,
        f"{MOVE_BACK} to_timestamp(floor(extract(epoch FROM now()) / 5) * 5 - 45)",
    )
    await scheduler_rounds(dsn, schedulers=6, rounds=3)
    for name, step in (("fast", 1), ("slow", 5)):
        ticks = [r[0] for r in ledger(dsn, name)]
        assert len(ticks) >= 45 // step
        assert [b - a for a, b in itertools.pairwise(ticks)] == [timedelta(seconds=step)] * (
            len(ticks) - 1
        )
    assert sql(dsn, "SELECT count(*), count(DISTINCT id) FROM pgqueue.jobs") == [
        (sql(dsn, "SELECT count(*) FROM pgqueue.schedule_ticks")[0][0],) * 2
    ]


async def test_the_ledger_admits_a_tick_once_even_when_the_schedule_is_moved_back(queue, dsn):
    """Not the rounds' agreement alone: the primary key on (schedule, tick) holds."""
    await queue.set_schedule("again", "app.tick", every=1)
    back = f"{MOVE_BACK} date_trunc('second', now()) - interval '5 seconds'"
    sql(dsn, back)
    await scheduler_rounds(dsn)
    first = ledger(dsn, "again")
    sql(dsn, back)  # as if a schedule's next tick were set back by hand
    await scheduler_rounds(dsn)
    again = ledger(dsn, "again")
    assert again[: len(first)] == first
    assert sql(dsn, "SELECT count(*) FROM pgqueue.jobs") == [(len(again),)]


@pytest.mark.parametrize("catch_up", [True, False])
async def test_ticks_missed_while_no_worker_ran_are_caught_up_once_or_skipped(queue, dsn, catch_up):
    await queue.set_schedule("hourly-ish", "app.tick", every=60, catch_up=catch_up)
    # The workers stopped ten minutes ago: ten ticks or so were missed.
    sql(dsn, f"{MOVE_BACK} date_trunc('minute', now()) - interval '10 minutes'")
    (missed_from,) = sql(dsn, "SELECT next_run_at FROM pgqueue.schedules")[0]
    await scheduler_rounds(dsn, schedulers=3)
    (now,) = sql(dsn, "SELECT now()")[0]
    rows = ledger(dsn, "hourly-ish")
    on_time = [r for r in rows if r[0] >= now - timedelta(minutes=2)]
    caught_up = [r for r in rows if r[0] < now - timedelta(minutes=2)]
    assert [r[0] for r in caught_up] == ([missed_from] if catch_up else [])
    assert len(on_time) <= 2
    assert sql(dsn, "SELECT count(*) FROM pgqueue.jobs") == [(len(rows),)]
    if catch_up:  # run now, not at the old tick
        (run_at,) = sql(dsn, "SELECT run_at FROM pgqueue.jobs WHERE id = %s", caught_up[0][1])[0]
        assert run_at > missed_from + timedelta(minutes=5)
    (next_run_at,) = sql(dsn, "SELECT next_run_at FROM pgqueue.schedules")[0]
    assert next_run_at > now


async def test_a_paused_schedule_gets_no_job_and_resumes_from_now(queue, dsn):
    await queue.set_schedule("p", "app.tick", every=1)
    sql(dsn, f"{MOVE_BACK} date_trunc('second', now()) - interval '5 seconds'")
    await queue.pause_schedule("p")
    await scheduler_rounds(dsn)
    assert ledger(dsn, "p") == []
    await queue.resume_schedule("p")
    assert (await queue.get_schedule("p")).next_run_at is None
    await scheduler_rounds(dsn)
    assert ledger(dsn, "p") == []  # the ticks while paused are skipped
    assert (await queue.get_schedule("p")).next_run_at is not None


async def test_a_schedule_with_an_unreadable_cron_is_skipped_and_the_others_go_on(queue, dsn):
    sql(dsn, "SELECT pgqueue.set_schedule('broken', 'app.x', cron => 'every tuesday')")
    await queue.set_schedule("fine", "app.tick", every=1)
    services = await scheduler_rounds(dsn, rounds=2)
    assert (await queue.get_schedule("fine")).next_run_at is not None
    assert (await queue.get_schedule("broken")).next_run_at is None
    assert services[0].rounds == 2


async def test_code_declared_schedules_are_written_keeping_a_runtime_pause(dsn):
    queue = pgqueue.Queue(dsn)

    @queue.periodic("*/5 * * * *", timezone="Europe/Paris", args={"who": "ops"})
    @queue.task(name="app.report", queue="reports")
    def report(who: str) -> str:
        return who

    @queue.periodic(every=timedelta(seconds=30), catch_up=True, name="beat")
    @queue.task(name="app.heartbeat")
    async def heartbeat() -> None: ...

    assert set(queue.periodic_schedules) == {"app.report", "beat"}
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        scheduler = Scheduler(pool, declared=list(queue.periodic_schedules.values()))
        await scheduler.run_round()
        await queue.pause_schedule(report.name)
        await Scheduler(pool, declared=list(queue.periodic_schedules.values())).run_round()
    finally:
        await pool.close()
    schedules = {s.name: s for s in await queue.list_schedules()}
    assert schedules[report.name].paused is True
    assert (schedules[report.name].source, schedules[report.name].queue) == ("code", "reports")
    assert schedules[report.name].args == {"who": "ops"}
    assert schedules["beat"].every == timedelta(seconds=30)
    assert schedules["beat"].next_run_at is not None
    await queue.close()


def test_periodic_checks_its_arguments_when_declared(dsn):
    queue = pgqueue.Queue(dsn)

    @queue.task(name="app.add")
    def add(a: int, b: int) -> int:
        return a + b

    with pytest.raises(pgqueue.InvalidJobError):
        queue.periodic(every=60, args={"a": 1})(add)
    with pytest.raises(InvalidScheduleError):
        queue.periodic("every minute", args={"a": 1, "b": 2})(add)
    queue.periodic(every=60, args={"a": 1, "b": 2})(add)
    with pytest.raises(ValueError, match="already declared"):
        queue.periodic("* * * * *", args={"a": 1, "b": 2})(add)
    queue.periodic("* * * * *", name="add-each-minute", args={"a": 1, "b": 2})(add)
    assert set(queue.periodic_schedules) == {add.name, "add-each-minute"}


@pytest.mark.parametrize("scheduler", [True, False])
def test_every_worker_runs_the_scheduler_unless_told_not_to(scheduler):
    from pgqueue.worker.maintenance import ServiceContext, build_services

    worker = pgqueue.Worker(
        pgqueue.Queue("postgresql://nowhere/x"), queues=["q"], scheduler=scheduler
    )
    context = ServiceContext(
        worker,
        pool=None,  # type: ignore[arg-type] - not started: nothing connects
        stopping=lambda: False,
        on_declared_dead=lambda _id: None,
    )
    names = [s.name for s in build_services(context)]
    assert ("scheduler" in names) is scheduler


def test_the_cli_worker_turns_the_scheduler_off():
    from pgqueue.cli import build_parser

    args = build_parser().parse_args(["worker", "app:queue", "--no-scheduler"])
    assert args.scheduler is False
    assert build_parser().parse_args(["worker", "app:queue"]).scheduler is True


def test_the_cli_lists_pauses_resumes_and_triggers_schedules(dsn):
    from test_cli import pgqueue_cmd

    with pgqueue.Queue(dsn) as queue:
        queue.set_schedule_sync("nightly", "app.report", cron="30 2 * * *", timezone="Europe/Paris")
        queue.set_schedule_sync("beat", "app.beat", every=30)
    listed = pgqueue_cmd("schedules", "list", "--dsn", dsn)
    assert listed.returncode == 0, listed.stderr
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [line[:4] for line in lines] == [
        ["beat", "every 30s", "UTC", "False"],
        ["nightly", "30 2 * * *", "Europe/Paris", "False"],
    ]
    assert pgqueue_cmd("schedules", "pause", "nightly", "--dsn", dsn).returncode == 0
    assert sql(dsn, "SELECT paused FROM pgqueue.schedules WHERE name = 'nightly'") == [(True,)]
    assert pgqueue_cmd("schedules", "resume", "nightly", "--dsn", dsn).returncode == 0
    assert sql(dsn, "SELECT paused FROM pgqueue.schedules WHERE name = 'nightly'") == [(False,)]
    triggered = pgqueue_cmd("schedules", "trigger", "nightly", "--dsn", dsn)
    assert triggered.returncode == 0, triggered.stderr
    job_id = int(triggered.stdout.strip())
    assert sql(dsn, "SELECT task FROM pgqueue.jobs WHERE id = %s", job_id) == [("app.report",)]
    for args, message in [
        (["pause", "nope"], "no schedule nope"),
        (["trigger", "bad name"], "invalid schedule name"),
        (["resume"], "the following arguments are required"),
    ]:
        refused = pgqueue_cmd("schedules", *args, "--dsn", dsn)
        assert refused.returncode == 2, refused.stderr
        assert message in refused.stderr
