"""The database operations, one function per operation: the async face, and the source
of the sync one.

Each function takes an AsyncExecutor. ``pgqueue/driver_sync.py``, the same functions
taking a SyncExecutor, is generated from this file by ``scripts/async_to_sync.py``
(a test fails when it is stale): edit this file, then run the script. Both faces build
their parameters and read their rows with the same pure helpers from ``pgqueue.jobs``.
The statements themselves are in ``sql/queries.sql``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgqueue.claim_cursor import ClaimKey, claim_starts, start_params
from pgqueue.errors import (
    IdempotencyConflictError,
    ScheduleNotFoundError,
    primary_message,
    translate_db_error,
)
from pgqueue.flow import (
    ClaimWait,
    FlowClaim,
    LimitStatus,
    QueueLimit,
    Reservations,
    limit_status_from_row,
    rate_params,
)
from pgqueue.jobs import (
    BulkPlan,
    ClaimedJob,
    EnqueueResult,
    Job,
    JobSpec,
    QueueStats,
    SequenceStatus,
    bulk_params,
    copy_records,
)
from pgqueue.locks import FLOW
from pgqueue.rows import (
    claimed_from_row,
    job_from_row,
    new_job,
    queue_stats_from_row,
    sequence_status_from_row,
)
from pgqueue.scheduling.specs import DueSchedule, Schedule, due_schedule_from_row, schedule_from_row
from pgqueue.scheduling.ticks import InvalidScheduleError
from pgqueue.sql import query
from pgqueue.states import JobState
from pgqueue.steps import JobStep, step_from_row
from pgqueue.timeline import Timeline
from pgqueue.workflows import (
    EnqueuedWorkflow,
    WorkflowPlan,
    WorkflowStatus,
    WorkflowSummary,
    dependent_params,
    described_as_written,
    parent_not_found,
    workflow_from_rows,
    workflow_summary_from_row,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

    from pgqueue.executors import AsyncExecutor
    from pgqueue.retention import PruneParams
    from pgqueue.scheduling.specs import ScheduleSource, ScheduleSpec
    from pgqueue.scheduling.ticks import TickPlan

# A keyed enqueue whose key's holder committed after the statement's snapshot sees
# neither its own row nor the holder; a new statement (a new snapshot under READ
# COMMITTED) does. More rounds than this means the snapshot cannot see it at all.
IDEMPOTENT_ROUNDS = 5


def _unresolved_key(spec: JobSpec) -> IdempotencyConflictError:
    key = (
        f"unique key {spec.unique_key!r}"
        if spec.unique_key is not None
        else f"idempotency key {spec.idempotency_key!r}"
    )
    return IdempotencyConflictError(
        f"{key} is held by a job this transaction cannot see (REPEATABLE READ or "
        "SERIALIZABLE snapshot?): enqueue keyed jobs under READ COMMITTED"
    )


async def enqueue(ex: AsyncExecutor, spec: JobSpec) -> EnqueueResult:
    row = await _enqueue_row(ex, spec)
    return EnqueueResult(id=row["id"], duplicate=row["duplicate"])


async def enqueue_described(ex: AsyncExecutor, spec: JobSpec) -> tuple[EnqueueResult, Job | None]:
    """Enqueue, and describe the new job as written without reading it back (None when
    an existing job holds the key: read that one)."""
    row = await _enqueue_row(ex, spec)
    result = EnqueueResult(id=row["id"], duplicate=row["duplicate"])
    if result.duplicate or not described_as_written(spec, row):
        return result, None
    return result, new_job(spec, row)


async def _enqueue_row(ex: AsyncExecutor, spec: JobSpec) -> Any:
    if spec.depends_on is not None:
        return await _enqueue_dependent_row(ex, spec)
    sql, params = query(spec.enqueue_statement), spec.insert_params()
    for _ in range(IDEMPOTENT_ROUNDS):
        rows = await ex.fetch(sql, params)
        if rows:
            return rows[0]
    raise _unresolved_key(spec)


async def _enqueue_dependent_row(ex: AsyncExecutor, spec: JobSpec) -> Any:
    """A job with depends_on, in one statement (sql/workflows.sql)."""
    params = dependent_params(spec)
    try:
        return (await ex.fetch(query(spec.enqueue_statement), params))[0]
    except Exception as exc:
        raise (parent_not_found(exc) or exc) from exc


async def enqueue_workflow(ex: AsyncExecutor, plan: WorkflowPlan) -> EnqueuedWorkflow:
    """A whole workflow (pgqueue.workflows) in one statement: its jobs, its edges, its
    row in pgqueue.workflows."""
    try:
        rows = await ex.fetch(query("enqueue_workflow"), plan.params())
    except Exception as exc:
        raise (parent_not_found(exc) or exc) from exc
    return plan.enqueued(rows)


async def get_workflow(ex: AsyncExecutor, workflow_id: int) -> WorkflowStatus | None:
    rows = await ex.fetch(query("get_workflow"), (workflow_id,))
    return workflow_from_rows(rows)


async def list_workflows(
    ex: AsyncExecutor, before: int | None, limit: int
) -> list[WorkflowSummary]:
    rows = await ex.fetch(query("list_workflows"), (before, limit))
    return [workflow_summary_from_row(r) for r in rows]


async def enqueue_many(ex: AsyncExecutor, specs: Sequence[JobSpec]) -> list[EnqueueResult]:
    specs = list(specs)
    if all(s.copyable for s in specs):
        # Two round trips whatever the number of jobs, and no transaction of our own:
        # sequence values are not transactional, and the COPY alone is atomic.
        ids = list((await ex.fetch(query("reserve_ids"), (len(specs),)))[0][0])
        await ex.copy_in(query("copy_jobs"), copy_records(ids, specs))
        return [EnqueueResult(job_id) for job_id in ids]
    plan = BulkPlan.for_specs(specs)
    async with ex.atomic():
        for row in plan.solo_rows():
            # Unique windows, debouncing and sequences decide job by job, in input order:
            # a later row of a debounced key gives the job its args, and a sequence runs
            # in the batch's order.
            plan.results[row] = await enqueue(ex, plan.specs[row])
        for _ in range(IDEMPOTENT_ROUNDS):
            rows = plan.pending()
            if not rows:
                break
            ids = list((await ex.fetch(query("reserve_ids"), (len(rows),)))[0][0])
            batch = [plan.specs[i] for i in rows]
            inserted = {
                r["id"] for r in await ex.fetch(query("enqueue_many"), bulk_params(ids, batch))
            }
            missing = plan.record_insert(rows, ids, inserted)
            if missing:
                holders = await ex.fetch(query("find_by_idempotency_keys"), (missing,))
                plan.record_existing({r["idempotency_key"]: r["id"] for r in holders})
    return plan.finish()


async def sequence_status(ex: AsyncExecutor, limit: int) -> list[SequenceStatus]:
    rows = await ex.fetch(query("sequence_status"), (limit,))
    return [sequence_status_from_row(r) for r in rows]


async def claim(
    ex: AsyncExecutor, queues: Sequence[str], limit: int, worker_id: str
) -> list[ClaimedJob]:
    return (await claim_flow(ex, queues, limit, worker_id, limited=False)).jobs


async def complete_succeeded(
    ex: AsyncExecutor,
    ids: Sequence[int],
    results: Sequence[str | None],
    attempts: Sequence[int],
) -> None:
    await ex.fetch(query("complete_succeeded"), (list(ids), list(results), list(attempts)))


async def complete_in_transaction(
    ex: AsyncExecutor,
    job_id: int,
    attempt: int,
    result: str | None,
    *,
    worker_id: str,
    idle_limit: float,
) -> bool:
    """Mark one job succeeded in the caller's transaction; False if it is no longer
    this worker's to complete (then the caller must roll back). The transaction may
    then sit idle at most ``idle_limit`` seconds before the server ends it."""
    rows = await ex.fetch(
        query("complete_in_transaction"),
        (job_id, attempt, result, worker_id, _milliseconds(idle_limit)),
    )
    return bool(rows)


def _milliseconds(seconds: float) -> str:
    # A GUC value: whole milliseconds, at least 1 (0 would switch the limit off).
    return str(max(1, round(seconds * 1000)))


async def complete_failed(
    ex: AsyncExecutor,
    ids: Sequence[int],
    errors: Sequence[str],
    retry_in: Sequence[float | None],
    attempts: Sequence[int],
) -> None:
    await ex.fetch(
        query("complete_failed"), (list(ids), list(errors), list(retry_in), list(attempts))
    )


async def release(ex: AsyncExecutor, ids: Sequence[int], worker_id: str) -> None:
    await ex.fetch(query("release_jobs"), (list(ids), worker_id))


async def release_unknown(ex: AsyncExecutor, worker_id: str, known: Sequence[int]) -> list[int]:
    rows = await ex.fetch(query("release_unknown_jobs"), (worker_id, list(known)))
    return [r[0] for r in rows]


async def register_worker(
    ex: AsyncExecutor,
    worker_id: str,
    *,
    host: str,
    pid: int,
    queues: Sequence[str],
    concurrency: int,
    lease: float,
    heartbeat_interval: float,
) -> None:
    """Enter a worker in pgqueue.workers with its own lease and heartbeat interval
    (seconds), by which the rescue judges it."""
    await ex.fetch(
        query("register_worker"),
        (worker_id, host, pid, list(queues), concurrency, lease, heartbeat_interval),
    )


async def deregister_worker(ex: AsyncExecutor, worker_id: str) -> None:
    await ex.fetch(query("deregister_worker"), (worker_id,))


async def cancel(ex: AsyncExecutor, job_id: int) -> JobState:
    try:
        rows = await ex.fetch(query("cancel_job"), (job_id,))
    except Exception as exc:
        raise (translate_db_error(exc) or exc) from exc
    return JobState(rows[0][0])


async def prune(ex: AsyncExecutor, params: PruneParams) -> int:
    """One batch of pruning (see Retention.params); how many jobs went."""
    rows = await ex.fetch(query("prune_jobs"), params)
    return int(rows[0][0])


async def prune_elected(ex: AsyncExecutor, params: PruneParams, lock_key: int) -> int | None:
    """One batch of pruning if no other worker holds ``lock_key``; None if one does."""
    rows = await ex.fetch(query("prune_jobs_elected"), (*params, lock_key))
    return None if rows[0][0] is None else int(rows[0][0])


async def retry(ex: AsyncExecutor, job_id: int) -> None:
    try:
        await ex.fetch(query("retry_job"), (job_id,))
    except Exception as exc:
        raise (translate_db_error(exc) or exc) from exc


async def snooze(
    ex: AsyncExecutor, ids: Sequence[int], after: Sequence[float], attempts: Sequence[int]
) -> None:
    await ex.fetch(query("snooze_jobs"), (list(ids), list(after), list(attempts)))


async def cancelled_among(ex: AsyncExecutor, ids: Sequence[int]) -> list[int]:
    rows = await ex.fetch(query("cancelled_among"), (list(ids),))
    return [r[0] for r in rows]


async def note_timeline(ex: AsyncExecutor) -> Timeline:
    """The server's timeline, noted (a change starts a hold of claims, see schema.sql)."""
    row = (await ex.fetch(query("note_timeline"), ()))[0]
    return Timeline(int(row[0]), float(row[1]))


async def claims_lost_among(ex: AsyncExecutor, ids: Sequence[int], worker_id: str) -> list[int]:
    """Which of ``ids`` the database no longer shows running under ``worker_id``."""
    rows = await ex.fetch(query("claims_lost_among"), (list(ids), worker_id))
    return [r[0] for r in rows]


async def get_job(ex: AsyncExecutor, job_id: int) -> Job | None:
    rows = await ex.fetch(query("get_job"), (job_id,))
    return job_from_row(rows[0]) if rows else None


async def set_progress(ex: AsyncExecutor, job_id: int, attempt: int, progress: str) -> bool:
    """A running attempt's progress; False when that attempt is no longer running."""
    return bool(await ex.fetch(query("set_progress"), (job_id, progress, attempt)))


async def list_jobs(
    ex: AsyncExecutor,
    *,
    before_id: int | None,
    queue: str | None,
    state: JobState | None,
    task: str | None,
    limit: int,
) -> list[Job]:
    state_text = None if state is None else state.value
    rows = await ex.fetch(query("list_jobs"), (before_id, queue, state_text, task, limit))
    return [job_from_row(r) for r in rows]


async def queue_stats(ex: AsyncExecutor) -> list[QueueStats]:
    return [queue_stats_from_row(r) for r in await ex.fetch(query("queue_stats"), ())]


async def pause_queue(ex: AsyncExecutor, queue: str) -> None:
    await ex.fetch(query("pause_queue"), (queue,))


async def resume_queue(ex: AsyncExecutor, queue: str) -> None:
    await ex.fetch(query("resume_queue"), (queue,))


# --- admin: what pgqueue.admin reads, as rows it decodes by column name ------------------


async def create_api_key(ex: AsyncExecutor, name: str, scope: str, key_hash: bytes) -> int:
    rows = await ex.fetch(query("create_api_key"), (name, scope, key_hash))
    return int(rows[0]["id"])


async def find_api_key_row(ex: AsyncExecutor, key_hash: bytes) -> Any:
    """The live key with this hash (id, name, scope), marked as used; None if none."""
    rows = await ex.fetch(query("find_api_key"), (key_hash,))
    return rows[0] if rows else None


async def api_key_rows(ex: AsyncExecutor) -> list[Any]:
    return await ex.fetch(query("list_api_keys"), ())


async def revoke_api_key(ex: AsyncExecutor, key_id: int) -> bool:
    return bool(await ex.fetch(query("revoke_api_key"), (key_id,)))


async def throughput_rows(ex: AsyncExecutor, minutes: int) -> list[Any]:
    """The ``dashboard_throughput`` rows over the last ``minutes`` minutes."""
    return await ex.fetch(query("dashboard_throughput"), (minutes,))


async def metrics_job_rows(ex: AsyncExecutor) -> list[Any]:
    """The ``metrics_jobs`` rows: the job counters (queue, task, metric, n)."""
    return await ex.fetch(query("metrics_jobs"), ())


async def job_duration_bounds(ex: AsyncExecutor) -> list[float]:
    """The job duration histogram's bounds in seconds, as the schema fixes them."""
    rows = await ex.fetch(query("job_duration_bounds"), ())
    return [float(b) for b in rows[0]["bounds"]]


async def live_worker_count(ex: AsyncExecutor) -> int:
    """How many workers heartbeat within their lease (the ``live_workers`` query)."""
    return int((await ex.fetch(query("live_workers"), ()))[0]["live"])


async def replica_status_row(ex: AsyncExecutor) -> Any:
    """The ``replica_status`` row: whether this server is a standby, and how far behind."""
    return (await ex.fetch(query("replica_status"), ()))[0]


async def roll_up_counters(ex: AsyncExecutor, lock_key: int | None = None) -> int | None:
    """Fold the job counters' deltas into their totals: how many delta rows moved. With
    ``lock_key``, only when this statement gets that advisory lock (None otherwise)."""
    if lock_key is None:
        rows = await ex.fetch(query("roll_up_job_counters"), ())
    else:
        rows = await ex.fetch(query("roll_up_job_counters_elected"), (lock_key,))
    moved = rows[0][0]
    return None if moved is None else int(moved)


async def metrics_queue_rows(ex: AsyncExecutor) -> list[Any]:
    return await ex.fetch(query("metrics_queues"), ())


# --- schedules (pgqueue.scheduling): their management, and the scheduler's rounds ------
# Statements in sql/schedules.sql. The SQL functions raise no_data_found for an unknown
# schedule name: ScheduleNotFoundError here.


def _schedule_error(exc: Exception) -> Exception:
    sqlstate = getattr(exc, "sqlstate", None)
    message = primary_message(exc).removeprefix("pgqueue: ")
    if sqlstate == "P0002":  # no_data_found
        return ScheduleNotFoundError(message)
    if sqlstate == "22023":  # invalid_parameter_value: a time zone PostgreSQL lacks
        return InvalidScheduleError(message, field="timezone")
    return exc


async def _schedule_call(ex: AsyncExecutor, name: str, args: Sequence[Any]) -> list[Any]:
    try:
        return await ex.fetch(query(name), args)
    except Exception as exc:
        error = _schedule_error(exc)
        if error is exc:
            raise
        raise error from exc


async def set_schedule(ex: AsyncExecutor, spec: ScheduleSpec, source: ScheduleSource) -> None:
    """Add the schedule, or change the one of that name (its pause is kept)."""
    await _schedule_call(ex, "set_schedule", spec.params(source))


async def pause_schedule(ex: AsyncExecutor, name: str) -> None:
    await _schedule_call(ex, "pause_schedule", (name,))


async def resume_schedule(ex: AsyncExecutor, name: str) -> None:
    await _schedule_call(ex, "resume_schedule", (name,))


async def remove_schedule(ex: AsyncExecutor, name: str) -> bool:
    rows = await _schedule_call(ex, "remove_schedule", (name,))
    return bool(rows[0][0])


async def trigger_schedule(ex: AsyncExecutor, name: str) -> int:
    """Enqueue a job of the schedule now; its id."""
    rows = await _schedule_call(ex, "trigger_schedule", (name,))
    return int(rows[0][0])


async def list_schedules(ex: AsyncExecutor, name: str | None = None) -> list[Schedule]:
    """Every schedule by name, or only the one called ``name``."""
    return [schedule_from_row(r) for r in await ex.fetch(query("list_schedules"), (name,))]


async def scheduler_schedules(ex: AsyncExecutor) -> tuple[datetime, list[DueSchedule]]:
    """The database's clock, and every schedule that is not paused."""
    rows = await ex.fetch(query("scheduler_schedules"), ())
    return rows[0]["db_now"], [due_schedule_from_row(r) for r in rows if r["name"] is not None]


async def scheduler_advance(
    ex: AsyncExecutor, schedule: DueSchedule, plan: TickPlan
) -> list[tuple[datetime, int]] | None:
    """Carry out ``plan`` for ``schedule`` as a round read it, in one statement: the
    (tick, job id) of each job enqueued, or None when the schedule was no longer as read
    (another worker moved it first, or it was changed or paused meanwhile)."""
    rows = await ex.fetch(
        query("scheduler_advance"),
        (
            schedule.name,
            schedule.next_run_at,
            schedule.cron,
            schedule.every_us,
            schedule.timezone,
            schedule.catch_up,
            list(plan.ticks),
            list(plan.run_ats),
            plan.next_run_at,
        ),
    )
    if not any(r[0] is None for r in rows):
        return None
    return [(r[0], int(r[1])) for r in rows if r[0] is not None]


# --- flow control: concurrency and rate limits (pgqueue/flow.py, sql/flow.sql) ----------


async def claim_flow(
    ex: AsyncExecutor,
    queues: Sequence[str],
    limit: int,
    worker_id: str,
    *,
    limited: bool,
    starts: Sequence[ClaimKey] | None = None,
) -> FlowClaim:
    """Claim up to ``limit`` jobs; and whether any of the queues is limited now.
    ``limited``: whether one was at the last claim, which picks the statement:
    claim_jobs leaves limited queues out (and says so), claim_jobs_limited takes them,
    after the starts of the rate-only ones are reserved (two transactions: see
    pgqueue/flow.py; so ``ex`` must not be inside a transaction, as a worker's pooled
    connection is not: the reservation commits asynchronously). ``starts``: where each
    queue's scan starts (pgqueue.claim_cursor; None: its head)."""
    locked = True  # unknown until a limited claim says: refills allowed
    if limited:
        names = list(queues)
        reserved = Reservations.from_rows(
            await ex.fetch(query("reserve_starts"), (names, limit, FLOW.key))
        )
        if reserved.nothing_to_claim(names):
            return FlowClaim([], limited=True, locked=False)
        params: tuple[Any, ...] = (names, limit, worker_id, FLOW.key, *reserved.params())
        rows = await ex.fetch(query("claim_jobs_limited"), params)
        locked = reserved.locked
    else:
        keys = claim_starts(queues, None) if starts is None else starts
        params = (list(queues), limit, worker_id, *start_params(keys))
        rows = await ex.fetch(query("claim_jobs"), params)
    jobs = [claimed_from_row(r) for r in rows if r["id"] is not None]
    now_limited = len(jobs) < len(rows)  # the marker row
    if now_limited and not limited and len(jobs) < limit:
        # Queues became limited since the last claim: claim them the way that holds.
        more = await claim_flow(ex, queues, limit - len(jobs), worker_id, limited=True)
        return FlowClaim(jobs + more.jobs, more.limited, more.locked)
    return FlowClaim(jobs, now_limited, locked)


async def autovacuum_settings(ex: AsyncExecutor) -> tuple[bool, bool]:
    """Whether autovacuum is on for the server, and for pgqueue.jobs."""
    row = (await ex.fetch(query("autovacuum_settings"), ()))[0]
    return bool(row["server"]), bool(row["jobs_table"])


async def next_claim_wait(ex: AsyncExecutor, queues: Sequence[str]) -> ClaimWait:
    """What an idle worker of these queues waits for: the next delayed job or rate slot
    (``seconds_until_next_job`` in queries.sql), and whether any of them is limited."""
    row = (await ex.fetch(query("seconds_until_next_job"), (list(queues),)))[0]
    return ClaimWait(due_in=row[0], limited=bool(row[1]))


async def set_queue_limit(ex: AsyncExecutor, limit: QueueLimit) -> None:
    """Write a queue's limits (all replaced) and its declared key overrides."""
    rate, key_rate = rate_params(limit.rate), rate_params(limit.key_rate)
    async with ex.atomic():
        await ex.fetch(
            query("set_queue_limit"),
            (limit.queue, limit.concurrency, *rate, limit.key_concurrency, *key_rate),
        )
        for key, key_limit in limit.keys.items():
            await ex.fetch(
                query("set_key_limit"),
                (limit.queue, key, key_limit.concurrency, *rate_params(key_limit.rate)),
            )


async def clear_queue_limit(ex: AsyncExecutor, queue: str) -> bool:
    return bool((await ex.fetch(query("clear_queue_limit"), (queue,)))[0][0])


async def set_key_limit(
    ex: AsyncExecutor, queue: str, key: str, concurrency: int | None, rate: tuple[Any, Any]
) -> None:
    await ex.fetch(query("set_key_limit"), (queue, key, concurrency, *rate))


async def clear_key_limit(ex: AsyncExecutor, queue: str, key: str) -> bool:
    return bool((await ex.fetch(query("clear_key_limit"), (queue, key)))[0][0])


async def limit_status(ex: AsyncExecutor, queue: str | None = None) -> list[LimitStatus]:
    rows = await ex.fetch(query("limit_status"), (queue,))
    return [limit_status_from_row(r) for r in rows]


# --- waiting for jobs to finish (pgqueue.results) --------------------------------------


async def listen_finished(ex: AsyncExecutor) -> None:
    """LISTEN on pgqueue_finished (psycopg; asyncpg listens with ``add_listener``)."""
    await ex.fetch(query("listen_finished"), ())


async def wait_jobs(ex: AsyncExecutor, ids: Sequence[int]) -> tuple[list[Job], list[int]]:
    """Of the jobs ``ids``: those that have finished, and the ids that match no job
    (the rest are unfinished)."""
    rows = await ex.fetch(query("wait_jobs"), (list(ids),))
    finished = [job_from_row(r) for r in rows if r["id"] is not None]
    return finished, [r["waited_id"] for r in rows if r["id"] is None]


# --- durable steps (pgqueue.steps) -----------------------------------------------------


async def load_steps(ex: AsyncExecutor, job_id: int) -> dict[str, str]:
    """The steps the job has finished: each one's result as JSON text, by name."""
    rows = await ex.fetch(query("load_steps"), (job_id,))
    return {r["name"]: r["result"] for r in rows}


async def record_step(
    ex: AsyncExecutor, job_id: int, attempt: int, name: str, result: str
) -> tuple[bool, str | None]:
    """Record a step's result (JSON text) if ``attempt`` still holds the job: whether
    it does, and the result now stored under ``name`` (None in the rare case of a
    record committed meanwhile that this statement could not see: read it again)."""
    rows = await ex.fetch(query("record_step"), (job_id, attempt, name, result))
    return bool(rows[0]["owned"]), rows[0]["stored"]


async def job_steps(ex: AsyncExecutor, job_id: int) -> list[JobStep]:
    """The job's finished steps, in the order they finished."""
    return [step_from_row(r) for r in await ex.fetch(query("job_steps"), (job_id,))]
