"""The public surface is a contract: changing it must be a decision, not an accident."""

import pgqueue


def test_all_is_pinned():
    assert sorted(pgqueue.__all__) == [
        "Admin",
        "DatabaseUnavailableError",
        "EnqueueResult",
        "FailedJob",
        "IdempotencyConflictError",
        "InlineModeError",
        "InvalidJobError",
        "InvalidLimitError",
        "InvalidScheduleError",
        "InvalidStepError",
        "Job",
        "JobFailedError",
        "JobNotFoundError",
        "JobOptions",
        "JobSpec",
        "JobState",
        "JobStateError",
        "JobStep",
        "JobTimeoutError",
        "KeyLimit",
        "LimitStatus",
        "OutcomeUnknownError",
        "ParentNotFoundError",
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
        "StepResultError",
        "Task",
        "UnknownTaskError",
        "UnsupportedConnectionError",
        "WaitTimeoutError",
        "Worker",
        "Workflow",
        "chain",
        "chord",
        "current_job",
        "group",
    ]
    for name in pgqueue.__all__:
        assert getattr(pgqueue, name) is not None


def test_package_is_typed():
    from importlib import resources

    assert resources.files("pgqueue").joinpath("py.typed").is_file()
