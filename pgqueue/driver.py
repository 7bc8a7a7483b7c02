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

from pgqueue.errors import IdempotencyConflictError, translate_db_error
from pgqueue.jobs import (
    BulkPlan,
    ClaimedJob,
    EnqueueResult,
    Job,
    JobSpec,
    QueueStats,
    bulk_params,
    claimed_from_row,
    copy_records,
    job_from_row,
    new_job,
    queue_stats_from_row,
)
from pgqueue.sql import query
from pgqueue.states import JobState

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pgqueue.executors import AsyncExecutor
    from pgqueue.retention import PruneParams

# A keyed enqueue whose key's holder committed after the statement's snapshot sees
# neither its own row nor the holder; a new statement (a new snapshot under READ
# COMMITTED) does. More rounds than this means the snapshot cannot see it at all.
IDEMPOTENT_ROUNDS = 5


def _enqueue_statement(spec: JobSpec) -> str:
    return query("enqueue") if spec.idempotency_key is None else query("enqueue_idempotent")


def _unresolved_key(spec: JobSpec) -> IdempotencyConflictError:
    return IdempotencyConflictError(
        f"idempotency key {spec.idempotency_key!r} is held by a job this transaction cannot "
        "see (REPEATABLE READ or SERIALIZABLE snapshot?): enqueue keyed jobs under READ "
        "COMMITTED"
    )


async def enqueue(ex: AsyncExecutor, spec: JobSpec) -> EnqueueResult:
    row = await _enqueue_row(ex, spec)
    return EnqueueResult(id=row["id"], duplicate=row["duplicate"])


async def enqueue_described(ex: AsyncExecutor, spec: JobSpec) -> tuple[EnqueueResult, Job | None]:
    """Enqueue, and describe the new job as written without reading it back (None when
    an existing job holds the key: read that one)."""
    row = await _enqueue_row(ex, spec)
    result = EnqueueResult(id=row["id"], duplicate=row["duplicate"])
    return result, None if result.duplicate else new_job(spec, row)


async def _enqueue_row(ex: AsyncExecutor, spec: JobSpec) -> Any:
    sql, params = _enqueue_statement(spec), spec.insert_params()
    for _ in range(IDEMPOTENT_ROUNDS):
        rows = await ex.fetch(sql, params)
        if rows:
            return rows[0]
    raise _unresolved_key(spec)


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


async def claim(
    ex: AsyncExecutor, queues: Sequence[str], limit: int, worker_id: str
) -> list[ClaimedJob]:
    rows = await ex.fetch(query("claim_jobs"), (list(queues), limit, worker_id))
    return [claimed_from_row(r) for r in rows]


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


async def seconds_until_next_job(ex: AsyncExecutor, queues: Sequence[str]) -> float | None:
    rows = await ex.fetch(query("seconds_until_next_job"), (list(queues),))
    value: float | None = rows[0][0]
    return value


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


async def metrics_job_rows(ex: AsyncExecutor, bounds_us: Sequence[int]) -> list[Any]:
    """The ``metrics_jobs`` rows; ``bounds_us``: bucket bounds in microseconds, ascending."""
    return await ex.fetch(query("metrics_jobs"), (list(bounds_us),))


async def metrics_queue_rows(ex: AsyncExecutor) -> list[Any]:
    return await ex.fetch(query("metrics_queues"), ())
