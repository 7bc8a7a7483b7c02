"""One definition of a job: pgqueue.job_options.JOB_OPTIONS declares each option once;
JobSpec, JobOptions, Job, JobIn and JobOut carry fields generated from it, the insert
statements name the fields they take, and the row decoders read columns by name. These
tests fail when any path (one-at-a-time insert, bulk by COPY or by INSERT, with_options,
a caller's connection, POST /v1/jobs, GET /v1/jobs/{id}) drops or reorders a field, and
when a new option is not carried by all of them."""

from __future__ import annotations

import dataclasses
import inspect
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import psycopg
import pytest
from litestar.testing import AsyncTestClient

import pgqueue
from pgqueue.executors import PsycopgExecutor
from pgqueue.job_options import JOB_OPTIONS, OPTION_NAMES
from pgqueue.jobs import Job, JobOptions, JobSpec
from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.schemas import JobIn, JobOut
from pgqueue.sql import query, statement_params

RUN_AT = datetime(2031, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
# A value unlike its default (and unlike any other field's) for every job option. A new
# option fails test_every_option_has_a_sample until it gets one here, and then every
# path below must carry it.
SAMPLES: dict[str, Any] = {
    "queue": "definition_q",
    "priority": 17,
    "max_attempts": 9,
    "run_at": RUN_AT,
    "idempotency_key": "definition-key",
    "timeout": 42.5,
    "concurrency_key": "definition-tenant",
    "unique_key": "definition-unique",
    "unique_for": 600.0,
    "debounce": 7.5,
    "sequence_key": "definition-sequence",
    "sequence_on_failure": "continue",
    # A job of the test's database (the parent fixture puts its id here).
    "depends_on": (1,),
    "on_parent_failure": "run",
    "parent_results_arg": "definition_results",
    "trace_context": {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "definition=1",
    },
}
# delay excludes run_at: it is checked on its own (what it sets is run_at).
DELAY = 3600.0
# idempotency_key, unique_for, debounce and sequence_key exclude each other; unique_key
# goes with unique_for or debounce, sequence_on_failure with sequence_key. Each variant
# below takes one of them.
MODES = (
    {"idempotency_key"},
    {"unique_key", "unique_for"},
    {"unique_key", "debounce"},
    {"sequence_key", "sequence_on_failure"},
    {"depends_on", "on_parent_failure", "parent_results_arg"},
)
# Options the statements of some modes do not write yet (option name -> those modes): a
# new option is added here until every mode's statement writes it.
NOT_YET_CARRIED: dict[str, tuple[set[str], ...]] = {}
# What each option is called in the API where it is not called the same (the public
# names, pinned here).
API_NAMES = {
    "delay": "delay_seconds",
    "timeout": "timeout_seconds",
    "unique_for": "unique_for_seconds",
    "debounce": "debounce_seconds",
}
OPTION_FIELDS = tuple(f for f in JobSpec._fields if f not in {"task", "args_json"})
ARGS = {"n": 5, "text": "ünï"}


def test_every_option_has_a_sample_and_is_a_field_of_every_shape():
    assert set(OPTION_FIELDS) == {*SAMPLES, "delay"} == OPTION_NAMES
    assert tuple(option.name for option in JOB_OPTIONS) == OPTION_FIELDS
    kept = {f.name for f in dataclasses.fields(Job)}
    assert kept >= OPTION_NAMES - {"delay"}
    out = {f.name for f in msgspec.structs.fields(JobOut)}
    assert out >= {API_NAMES.get(name, name) for name in OPTION_NAMES - {"delay"}}


ENQUEUE_STATEMENTS = (
    "enqueue",
    "enqueue_idempotent",
    "enqueue_unique",
    "enqueue_debounced",
    "enqueue_sequenced",
    "enqueue_dependent",
    "enqueue_many",
    "copy_jobs",
)


@pytest.mark.parametrize("statement", ENQUEUE_STATEMENTS)
def test_each_insert_names_as_many_fields_as_it_has_parameters(statement):
    names = statement_params(statement)
    assert len(set(names)) == len(names)
    if statement == "copy_jobs":  # COPY's columns, not parameters
        columns = re.search(r"pgqueue\.jobs \(([^)]*)\)", query(statement))
        assert columns is not None
        column_names = [c.strip() for c in columns[1].split(",")]
        assert [n if n != "args_json" else "args" for n in names] == column_names
        return
    numbers = {int(n) for n in re.findall(r"\$(\d+)", query(statement))}
    assert numbers == set(range(1, len(names) + 1))
    leading = {"enqueue_many": "ids"}.get(statement)
    fields = names[1:] if leading else names
    assert set(fields) <= set(JobSpec._fields)
    # Every statement that writes one job alone takes the fields its mode needs.
    assert {"queue", "task", "args_json", "run_at", "delay"} <= set(fields)


def test_a_job_picks_the_statement_of_its_mode_and_passes_it_its_fields():
    spec = JobSpec("t", "{}", "q", 5, 2, None, 1.5, "key", 30.0, "tenant")
    assert spec.enqueue_statement == "enqueue_idempotent"
    assert spec.insert_params() == ("q", "t", "{}", 5, 2, None, 1.5, 30.0, "tenant", "key", None)
    sequenced = spec._replace(idempotency_key=None, sequence_key="s")
    params = dict(
        zip(statement_params("enqueue_sequenced"), sequenced.insert_params(), strict=True)
    )
    # Every field but a dependant's, which a job of a sequence cannot be.
    dependants = {"depends_on", "on_parent_failure", "parent_results_arg"}
    assert params == {k: v for k, v in sequenced._asdict().items() if k not in dependants}
    dependent = spec._replace(idempotency_key=None, depends_on=(7, 8), on_parent_failure="run")
    assert dependent.enqueue_statement == "enqueue_dependent"
    params = dict(
        zip(statement_params("enqueue_dependent"), dependent.insert_params(), strict=True)
    )
    assert params["depends_on"] == (7, 8)
    assert params["on_parent_failure"] == "run"


def test_every_options_face_names_the_same_options():
    options = set(OPTION_FIELDS)
    # JobOptions (generated from JOB_OPTIONS) is what Queue.build/enqueue and
    # Task.with_options take as **options.
    assert set(JobOptions.__annotations__) == options
    for method in (pgqueue.Task.with_options, pgqueue.Queue.build, pgqueue.Queue.enqueue):
        params = inspect.signature(method).parameters
        assert params["options"].kind is inspect.Parameter.VAR_KEYWORD
        assert "Unpack[JobOptions]" in str(params["options"].annotation)
    api = {API_NAMES.get(name, name) for name in options}
    assert {f.name for f in msgspec.structs.fields(JobIn)} == {*api, "task", "args"}


def test_a_misspelt_option_is_refused_everywhere_it_can_be_given(queue, echo):
    with pytest.raises(TypeError, match="priorty"):
        echo.with_options(priorty=5)
    with pytest.raises(TypeError, match="priorty"):
        queue.build("definition.echo", {"n": 1, "text": "x"}, priorty=5)
    with pytest.raises(TypeError, match="delay_seconds"):
        queue.enqueue_sync("definition.echo", {"n": 1, "text": "x"}, delay_seconds=5)


def test_none_puts_an_option_back_to_the_tasks_default(echo):
    moved = echo.with_options(queue="elsewhere", priority=3)
    assert moved.job(n=1, text="x").queue == "elsewhere"
    back = moved.with_options(queue=None)
    spec = back.job(n=1, text="x")
    assert (spec.queue, spec.priority) == (echo.queue, 3)


@pytest.mark.parametrize("statement", ["get_job", "list_jobs"])
def test_job_rows_name_every_job_field(dsn, statement):
    params = (1,) if statement == "get_job" else (None, None, None, None, 1)
    with psycopg.connect(dsn) as conn:
        cur = psycopg.RawCursor(conn)
        cur.execute(query(statement), params)
        assert cur.description is not None
        names = [c.name for c in cur.description]
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(Job))


@pytest.fixture
def echo(queue):
    @queue.task(name="definition.echo")
    async def echo(n: int, text: str, definition_results: Any = None) -> None: ...

    return echo


@pytest.fixture
def parent(queue, monkeypatch):
    """A job for the dependants' depends_on: its id in SAMPLES for this test."""
    job_id = queue.enqueue_sync("definition.parent").id
    monkeypatch.setitem(SAMPLES, "depends_on", (job_id,))
    return job_id


def assert_carried(job: Job | None, options: dict[str, Any], path: str) -> None:
    assert job is not None, path
    assert (job.task, job.args) == ("definition.echo", ARGS), path
    for name, value in options.items():
        if name == "delay":
            assert job.run_at > job.created_at + timedelta(seconds=value - 60), path
            assert job.run_at <= job.created_at + timedelta(seconds=value + 60), path
        else:
            assert getattr(job, name) == value, (path, name)


def variants() -> list[dict[str, Any]]:
    """Every option in at least one variant: each mode with run_at, and with delay."""
    out = []
    for mode in MODES:
        options = {
            k: v
            for k, v in SAMPLES.items()
            if k in mode
            or (k not in set().union(*MODES) and mode not in NOT_YET_CARRIED.get(k, ()))
        }
        without_run_at = {k: v for k, v in options.items() if k != "run_at"}
        out += [options, {**without_run_at, "delay": DELAY}]
    return out


def _key_field(options: dict[str, Any]) -> str | None:
    """The variant's key: suffixed per path, so that each path writes a job of its own
    (None for dependants, which need none)."""
    return next(
        (k for k in ("idempotency_key", "unique_key", "sequence_key") if k in options), None
    )


async def test_one_at_a_time_by_name_and_by_task(dsn, queue, echo, parent):
    for n, options in enumerate(variants()):
        keyed = options | _key(options, str(n))
        paths = {
            "enqueue": await queue.enqueue("definition.echo", ARGS, **keyed | _key(keyed, "a")),
            "enqueue_sync": queue.enqueue_sync("definition.echo", ARGS, **keyed | _key(keyed, "b")),
            "with_options": await echo.with_options(**keyed | _key(keyed, "c")).enqueue(**ARGS),
            "with_options sync": echo.with_options(**keyed | _key(keyed, "d")).enqueue_sync(**ARGS),
        }
        with psycopg.connect(dsn) as conn:
            paths["conn="] = echo.with_options(conn=conn, **keyed | _key(keyed, "e")).enqueue_sync(
                **ARGS
            )
        for path, result in paths.items():
            assert_carried(await queue.get_job(result.id), _expected(keyed, path), path)
            assert_carried(queue.get_job_sync(result.id), _expected(keyed, path), path)


async def test_in_bulk_by_insert_and_by_copy(queue, echo, parent):
    for n, options in enumerate(variants()):
        field = _key_field(options)
        specs = [
            echo.with_options(**options | ({field: f"bulk-{n}-{i}"} if field else {})).job(**ARGS)
            for i in range(3)
        ]
        for enqueue_many in (queue.enqueue_many, queue.enqueue_many_sync):
            fresh = [
                s._replace(**{field: f"{getattr(s, field)}-{enqueue_many.__name__}"})
                if field
                else s
                for s in specs
            ]
            results = enqueue_many(fresh)
            if inspect.isawaitable(results):
                results = await results
            assert len({r.id for r in results}) == len(fresh)
            for spec, result in zip(fresh, results, strict=True):
                expected = options | ({field: getattr(spec, field)} if field else {})
                assert_carried(await queue.get_job(result.id), expected, "enqueue_many")
    # COPY carries the leading fields; make each of them unlike its default.
    copied = echo.with_options(queue="copied_q", priority=-3, max_attempts=7).job(**ARGS)
    assert copied.copyable
    for result in await queue.enqueue_many([copied, copied]):
        job = await queue.get_job(result.id)
        assert_carried(job, {"queue": "copied_q", "priority": -3, "max_attempts": 7}, "COPY")
        assert job is not None
        assert (job.timeout, job.idempotency_key, job.unique_key) == (None, None, None)


async def test_over_http(dsn, queue, parent):
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn, auth=False))) as client:
        for n, options in enumerate(variants()):
            body: dict[str, Any] = {"task": "definition.echo", "args": ARGS}
            field = _key_field(options)
            for name, value in options.items():
                sent = f"{value}-http-{n}" if name == field else value
                if isinstance(sent, tuple):
                    sent = list(sent)
                body[API_NAMES.get(name, name)] = (
                    sent.isoformat() if isinstance(sent, datetime) else sent
                )
            posted = await client.post("/v1/jobs", json=body)
            assert posted.status_code == 202, posted.text
            got = await client.get(f"/v1/jobs/{posted.json()['id']}")
            assert got.json() == posted.json()  # the 202 says what a read says
            expected = options | ({field: f"{options[field]}-http-{n}"} if field else {})
            assert_carried(await queue.get_job(posted.json()["id"]), expected, "POST /v1/jobs")
            read = got.json()
            for name, value in expected.items():
                field = API_NAMES.get(name, name)
                if name == "run_at":
                    assert datetime.fromisoformat(read["run_at"]) == value
                elif isinstance(value, tuple):
                    assert read[field] == list(value), field
                elif name != "delay":
                    assert read[field] == value, field


def test_psycopg_rows_are_read_by_name_like_asyncpg_records(dsn):
    with psycopg.connect(dsn) as conn:
        rows = PsycopgExecutor(conn).fetch("SELECT 1 AS one, 'two' AS two", ())
    assert rows[0]["two"] == "two"
    assert rows[0][0] == 1
    assert tuple(rows[0]) == (1, "two")


def _key(options: dict[str, Any], suffix: str) -> dict[str, Any]:
    field = _key_field(options)
    return {field: f"{options[field]}-{suffix}"} if field else {}


_SUFFIXES = {
    "enqueue": "a",
    "enqueue_sync": "b",
    "with_options": "c",
    "with_options sync": "d",
    "conn=": "e",
}


def _expected(options: dict[str, Any], path: str) -> dict[str, Any]:
    return options | _key(options, _SUFFIXES[path])
