"""Job building, validation and retry maths: pure functions, no database."""

import random
from datetime import UTC, datetime

import pytest

from pgqueue import InvalidJobError, Queue, RetryPolicy
from pgqueue.jobs import BulkPlan
from pgqueue.retry import retry_in
from pgqueue.sql import parse_named_blocks, query
from pgqueue.validation import build_job


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"args": {"x": object()}}, "JSON-serialisable"),
        ({"args": {"x": float("nan")}}, "JSON-serialisable"),
        ({"args": {"x": "a\x00b"}}, "NUL"),
        ({"args": {1: 2}}, "string keys"),
        ({"args": [1, 2]}, "dict"),
        ({"queue": "bad queue"}, "invalid queue name"),
        ({"queue": ""}, "invalid queue name"),
        ({"queue": "q" * 65}, "invalid queue name"),
        ({"priority": 40000}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"delay": -1}, "delay"),
        ({"delay": float("inf")}, "delay"),
        ({"run_at": datetime(2030, 1, 1)}, "timezone-aware"),  # noqa: DTZ001 - on purpose
        ({"run_at": datetime.now(UTC), "delay": 1}, "not both"),
        ({"idempotency_key": ""}, "idempotency_key"),
        ({"idempotency_key": "k" * 256}, "idempotency_key"),
    ],
)
def test_bad_job_fields_are_refused(kwargs, message):
    with pytest.raises(InvalidJobError, match=message):
        build_job("some.task", **kwargs)


@pytest.mark.parametrize("name", ["", "1starts.with.digit", "has space", "x" * 201, "semi;colon"])
def test_bad_task_names_are_refused(name):
    with pytest.raises(InvalidJobError, match="invalid task name"):
        build_job(name)


def test_negative_priority_is_allowed_and_orders_below_default():
    assert build_job("t", priority=-5).priority == -5


def test_task_arguments_are_bound_to_the_signature():
    queue = Queue("postgresql://unused")

    @queue.task(name="greet")
    def greet(name: str, punctuation: str = "!", **extra: int) -> str:
        return name + punctuation

    spec = greet.job("ada", flair=1)
    assert spec.args_json == '{"name":"ada","flair":1}'
    with pytest.raises(InvalidJobError, match="arguments do not match task greet"):
        greet.job(nom="x")  # type: ignore[call-arg]


def test_tasks_with_positional_only_parameters_are_refused():
    queue = Queue("postgresql://unused")
    with pytest.raises(TypeError, match="positional-only"):

        @queue.task(name="bad")
        def bad(x: int, /) -> None: ...


def test_nested_functions_need_an_explicit_name():
    queue = Queue("postgresql://unused")
    with pytest.raises(InvalidJobError, match="pass name= to @task"):

        @queue.task
        def nested() -> None: ...


def test_task_defaults_are_validated_at_decoration():
    queue = Queue("postgresql://unused")
    with pytest.raises(InvalidJobError, match="invalid queue name"):

        @queue.task(name="bad", queue="no spaces allowed")
        def bad() -> None: ...


def test_duplicate_task_names_are_refused():
    queue = Queue("postgresql://unused")

    @queue.task(name="same")
    def one() -> None: ...

    with pytest.raises(ValueError, match="already registered"):

        @queue.task(name="same")
        def two() -> None: ...


def test_with_options_does_not_change_the_task():
    queue = Queue("postgresql://unused")

    @queue.task(name="t", queue="q1", priority=3)
    def t() -> None: ...

    custom = t.with_options(queue="q2", priority=-1, idempotency_key="k")
    assert (custom.job().queue, custom.job().priority, custom.job().idempotency_key) == (
        "q2",
        -1,
        "k",
    )
    assert (t.job().queue, t.job().priority, t.job().idempotency_key) == ("q1", 3, None)


def test_backoff_grows_exponentially_within_jitter_and_cap():
    policy = RetryPolicy(base=1.0, factor=2.0, max_delay=10.0, jitter=0.5)
    rand = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 10.0), (50, 10.0)]:
        for _ in range(50):
            delay = policy.delay(attempt, rand)
            assert ceiling * 0.5 <= delay <= ceiling
    assert policy.delay(10_000, rand) <= 10.0  # no overflow for absurd attempt numbers


def test_retry_in_stops_at_max_attempts_and_on_permanent_errors():
    policy = RetryPolicy(jitter=0)
    assert retry_in(1, 3, policy) == 1.0
    assert retry_in(2, 3, policy) == 2.0
    assert retry_in(3, 3, policy) is None
    assert retry_in(1, 3, policy, permanent=True) is None


@pytest.mark.parametrize("bad", [{"base": -1}, {"factor": 0.5}, {"jitter": 2}])
def test_retry_policy_validates(bad):
    with pytest.raises(ValueError, match="retry"):
        RetryPolicy(**bad)


def test_bulk_plan_folds_repeated_keys_onto_the_first_row():
    specs = [
        build_job("t", idempotency_key="a"),
        build_job("t"),
        build_job("t", idempotency_key="a"),
        build_job("t", idempotency_key="b"),
    ]
    plan = BulkPlan.for_specs(specs)
    assert plan.pending() == [0, 1, 3]
    missing = plan.record_insert([0, 1, 3], [10, 11, 12], inserted={10, 11})
    assert missing == ["b"]
    plan.record_existing({"b": 5})
    results = plan.finish()
    assert [(r.id, r.duplicate) for r in results] == [
        (10, False),
        (11, False),
        (10, True),
        (5, True),
    ]


def test_named_sql_blocks():
    blocks = parse_named_blocks("-- preamble\n-- name: a\nSELECT 1;\n-- name: b\nSELECT 2;\n")
    assert blocks == {"a": "SELECT 1;", "b": "SELECT 2;"}
    with pytest.raises(ValueError, match="twice"):
        parse_named_blocks("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")
    assert "FOR UPDATE SKIP LOCKED" in query("claim_jobs")


def test_keyword_fast_path_refuses_what_bind_refuses():
    queue = Queue("postgresql://unused")

    @queue.task(name="strict")
    def strict(a: int, b: int = 2) -> int:
        return a + b

    assert strict.job(a=1).args_json == '{"a":1}'
    assert strict.job(1, b=3).args_json == '{"a":1,"b":3}'
    with pytest.raises(InvalidJobError, match="unexpected keyword argument 'c'"):
        strict.job(a=1, c=3)  # type: ignore[call-arg]
    with pytest.raises(InvalidJobError, match="missing a required argument: 'a'"):
        strict.job(b=3)  # type: ignore[call-arg]
