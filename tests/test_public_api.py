"""The public surface is a contract: changing it must be a decision, not an accident."""

import pgqueue


def test_all_is_pinned():
    assert sorted(pgqueue.__all__) == [
        "Admin",
        "DatabaseUnavailableError",
        "EnqueueResult",
        "IdempotencyConflictError",
        "InlineModeError",
        "InvalidJobError",
        "InvalidLimitError",
        "InvalidScheduleError",
        "Job",
        "JobFailedError",
        "JobNotFoundError",
        "JobOptions",
        "JobSpec",
        "JobState",
        "JobStateError",
        "JobTimeoutError",
        "KeyLimit",
        "LimitStatus",
        "OutcomeUnknownError",
        "PermanentError",
        "PgQueueError",
        "PoolTimeoutError",
        "Queue",
        "QueueLimit",
        "QueueStats",
        "Rate",
        "Retention",
        "RetryPolicy",
        "RunningJob",
        "Schedule",
        "ScheduleNotFoundError",
        "SchemaNotReadyError",
        "SequenceStatus",
        "Snooze",
        "Task",
        "UnknownTaskError",
        "UnsupportedConnectionError",
        "WaitTimeoutError",
        "Worker",
        "current_job",
    ]
    for name in pgqueue.__all__:
        assert getattr(pgqueue, name) is not None


def test_package_is_typed():
    from importlib import resources

    assert resources.files("pgqueue").joinpath("py.typed").is_file()
