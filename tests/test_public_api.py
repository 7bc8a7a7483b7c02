"""The public surface is a contract: changing it must be a decision, not an accident."""

import pgqueue


def test_all_is_pinned():
    assert sorted(pgqueue.__all__) == [
        "Admin",
        "DatabaseUnavailableError",
        "EnqueueResult",
        "IdempotencyConflictError",
        "InvalidJobError",
        "Job",
        "JobNotFoundError",
        "JobSpec",
        "JobState",
        "JobStateError",
        "JobTimeoutError",
        "OutcomeUnknownError",
        "PermanentError",
        "PgQueueError",
        "PoolTimeoutError",
        "Queue",
        "QueueStats",
        "Retention",
        "RetryPolicy",
        "RunningJob",
        "SchemaNotReadyError",
        "Snooze",
        "Task",
        "UnknownTaskError",
        "UnsupportedConnectionError",
        "Worker",
        "current_job",
    ]
    for name in pgqueue.__all__:
        assert getattr(pgqueue, name) is not None


def test_package_is_typed():
    from importlib import resources

    assert resources.files("pgqueue").joinpath("py.typed").is_file()
