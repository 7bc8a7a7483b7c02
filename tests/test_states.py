"""The state machine is defined once in pgqueue.states; the SQL trigger must agree with
it for every pair of states."""

import itertools

import psycopg
import pytest

from pgqueue.states import ALLOWED_TRANSITIONS, TERMINAL_STATES, JobState, can_transition


def test_sql_guard_matches_the_python_state_machine(dsn):
    outcomes = {}
    with psycopg.connect(dsn, autocommit=True) as conn:
        for old, new in itertools.product(JobState, JobState):
            if old == new:
                continue
            (job_id,) = conn.execute(
                "INSERT INTO pgqueue.jobs (task, state) VALUES ('t', %s) RETURNING id", (old,)
            ).fetchone()
            try:
                conn.execute("UPDATE pgqueue.jobs SET state = %s WHERE id = %s", (new, job_id))
                outcomes[(old, new)] = True
            except psycopg.errors.CheckViolation as exc:
                outcomes[(old, new)] = "cannot move from" not in str(exc)  # True fails below
    allowed_in_sql = {pair for pair, ok in outcomes.items() if ok}
    assert allowed_in_sql == set(ALLOWED_TRANSITIONS)


def test_terminal_states_only_leave_by_manual_retry():
    for state in TERMINAL_STATES:
        exits = {new for old, new in ALLOWED_TRANSITIONS if old == state}
        # A retried job of a busy sequence waits its turn blocked.
        assert exits <= {JobState.QUEUED, JobState.BLOCKED}
    assert not can_transition(JobState.SUCCEEDED, JobState.QUEUED)


@pytest.mark.parametrize("state", list(JobState))
def test_state_names_match_the_database_enum(dsn, state):
    with psycopg.connect(dsn) as conn:
        labels = [
            r[0] for r in conn.execute("SELECT unnest(enum_range(NULL::pgqueue.job_state))::text")
        ]
    assert state.value in labels
    assert len(labels) == len(JobState)
