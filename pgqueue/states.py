"""The job state machine, defined once.

Every state a job can be in, and every move between states, is listed here. The SQL
trigger ``pgqueue.guard_state_transition`` (see ``sql/schema.sql``) enforces the same
table inside the database, so a transition that is not listed here is refused even when
it comes from psql; ``tests/test_states.py`` checks that the two agree pair by pair.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    # QUEUED: waiting to run. In: enqueue; a retry after a failed attempt (with run_at
    # pushed into the future by the backoff); a worker handing back a claimed job at
    # shutdown; a manual retry of a failed or cancelled job. Out: a worker claims it
    # (-> running) or it is cancelled. A job delayed by run_at is queued, not a state of
    # its own: it becomes claimable when run_at passes.
    QUEUED = "queued"
    # RUNNING: claimed by a worker, attempts already counted. In: claim. Out: the task
    # returns (-> succeeded), raises with attempts left (-> queued) or without
    # (-> failed), is handed back at shutdown (-> queued), or is cancelled.
    RUNNING = "running"
    # SUCCEEDED: the task returned; result holds its JSON return value. Terminal.
    SUCCEEDED = "succeeded"
    # FAILED: the dead-letter state: attempts exhausted, a permanent error, or a job the
    # worker cannot run (unknown task). Kept for inspection; out only by a manual retry.
    FAILED = "failed"
    # CANCELLED: cancelled before it finished. Out only by a manual retry.
    CANCELLED = "cancelled"
    # BLOCKED: waiting for its turn, and no candidate of any claim: a job of a sequence
    # (sequence_key) behind an unfinished one, or a dependant (depends_on, a workflow's
    # job) whose parents have not all ended. In: enqueue behind an unfinished job of its
    # sequence, or with a parent not yet ended; a manual retry while its sequence is
    # busy. Out: the job ahead finishes, or its last parent ends (-> queued, given its
    # parents' results if it asked); a parent ends failed or cancelled (-> cancelled,
    # unless on_parent_failure="run"); or it is cancelled. See pgqueue/sql/sequences.sql
    # and pgqueue/sql/workflows.sql.
    BLOCKED = "blocked"


TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
)

ALLOWED_TRANSITIONS: frozenset[tuple[JobState, JobState]] = frozenset(
    {
        (JobState.QUEUED, JobState.RUNNING),
        (JobState.QUEUED, JobState.CANCELLED),
        (JobState.RUNNING, JobState.SUCCEEDED),
        (JobState.RUNNING, JobState.FAILED),
        (JobState.RUNNING, JobState.QUEUED),
        (JobState.RUNNING, JobState.CANCELLED),
        (JobState.FAILED, JobState.QUEUED),
        (JobState.CANCELLED, JobState.QUEUED),
        (JobState.BLOCKED, JobState.QUEUED),
        (JobState.BLOCKED, JobState.CANCELLED),
        # A manual retry of a job whose sequence has another job unfinished.
        (JobState.FAILED, JobState.BLOCKED),
        (JobState.CANCELLED, JobState.BLOCKED),
    }
)

# States whose rows hold their idempotency key: a second enqueue with the same key
# returns the existing job while it is in one of these. A failed or cancelled job gives
# its key up, so the work can be enqueued afresh; a succeeded job keeps it until the row
# is deleted. The partial unique index ``jobs_idempotency_key_uniq`` uses the same list.
KEY_HOLDING_STATES: frozenset[JobState] = frozenset(
    {JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED}
)


def can_transition(old: JobState, new: JobState) -> bool:
    return (old, new) in ALLOWED_TRANSITIONS
