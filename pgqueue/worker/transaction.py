"""A transactional task's success, recorded inside the task's own transaction: the
async source of ``transaction_sync.py`` (``scripts/async_to_sync.py``). How each face
gets and ends its transaction differs with the driver (``execution.py``); what it
writes in it is this, once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgqueue import driver
from pgqueue.worker.outcome import OwnershipLostError, Ran, encode_result

if TYPE_CHECKING:
    from pgqueue.executors import AsyncExecutor
    from pgqueue.jobs import ClaimedJob


async def mark_succeeded(
    ex: AsyncExecutor, job: ClaimedJob, value: Any, *, worker_id: str, idle_limit: float
) -> Ran:
    """Mark the job succeeded with the task's return value, in the transaction ``ex``
    is in; :class:`OwnershipLostError` (the caller rolls back) if the job is no longer
    this worker's running attempt."""
    result_json = encode_result(value)
    done = await driver.complete_in_transaction(
        ex, job.id, job.attempt, result_json, worker_id=worker_id, idle_limit=idle_limit
    )
    if not done:
        raise OwnershipLostError(f"job {job.id} is no longer this worker's")
    return Ran(result_json, committed=True)
