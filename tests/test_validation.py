"""Hardening: every value a job can be given is checked once, where the job is built,
against what PostgreSQL's columns and Python can both hold. Bad input raises
InvalidJobError naming the field (and the item of a batch) and writes nothing; what is
in the table always reads back."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta, timezone

import psycopg
import pytest
from workerproc import wait_for_sql

import pgqueue
from pgqueue import InvalidJobError, JobSpec, RetryPolicy, SchemaNotReadyError, Snooze
from pgqueue.limits import MAX_JSON_DEPTH, MAX_SECONDS
from pgqueue.testing import running_worker, wait_for_job


def count_jobs(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()
        assert row is not None
        return int(row[0])


def nested(depth: int) -> dict[str, object]:
    """A dict whose containers nest ``depth`` levels (the dict itself is level 1)."""
    value: object = []
    for _ in range(depth - 2):
        value = [value]
    return {"x": value}


@pytest.fixture
def echo(queue):
    @queue.task(name="echo")
    async def echo(**kwargs: object) -> object:
        return kwargs

    return echo


FAR_PAST_OFFSET = timezone(timedelta(hours=14))
BAD_OPTIONS = [
    ({"delay": 1e12}, "delay"),
    ({"delay": 1e13}, "delay"),
    ({"delay": MAX_SECONDS + 1}, "delay"),
    ({"delay": -1}, "delay"),
    ({"delay": float("nan")}, "delay"),
    ({"delay": float("inf")}, "delay"),
    ({"timeout": 1e13}, "timeout"),
    ({"timeout": 0}, "timeout"),
    (
        {"run_at": datetime(9999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-14)))},
        "run_at",
    ),
    ({"run_at": datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)}, "run_at"),
    ({"run_at": datetime(1, 1, 1, 0, 0, tzinfo=FAR_PAST_OFFSET)}, "run_at"),
    ({"run_at": datetime(2030, 1, 1)}, "run_at"),  # noqa: DTZ001 - naive on purpose
    ({"idempotency_key": "a\x00b"}, "idempotency_key"),
    ({"idempotency_key": "a\ud800b"}, "idempotency_key"),
    ({"idempotency_key": "k" * 256}, "idempotency_key"),
    ({"idempotency_key": ""}, "idempotency_key"),
    ({"priority": 2**40}, "priority"),
    ({"max_attempts": 0}, "max_attempts"),
    ({"queue": "bad name"}, "queue"),
]


@pytest.mark.parametrize(("options", "field"), BAD_OPTIONS)
async def test_out_of_range_options_are_refused_naming_the_field(dsn, queue, options, field):
    with pytest.raises(InvalidJobError) as refused:
        await queue.enqueue("echo", {}, **options)
    assert refused.value.field == field
    with pytest.raises(InvalidJobError):
        queue.enqueue_sync("echo", {}, **options)
    assert count_jobs(dsn) == 0


@pytest.mark.parametrize(("options", "field"), BAD_OPTIONS)
def test_with_options_refuses_them_at_once(echo, options, field):
    with pytest.raises(InvalidJobError) as refused:
        echo.with_options(**options)
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"text": "a\ud800b"}, "lone surrogates"),
        ({"a\udfffb": 1}, "lone surrogates"),
        ({"text": "a\x00b"}, "NUL"),
        (nested(MAX_JSON_DEPTH + 1), "nested deeper"),
        (nested(999), "nested deeper"),
        (nested(5000), "nested deeper"),
    ],
)
async def test_args_postgres_or_python_could_not_hold_are_refused(dsn, queue, args, message):
    with pytest.raises(InvalidJobError, match=message) as refused:
        await queue.enqueue("echo", args)
    assert refused.value.field == "args"
    assert count_jobs(dsn) == 0


async def test_values_at_the_bounds_are_written_and_read_back(queue):
    latest = datetime(9999, 12, 30, tzinfo=UTC)
    text = "backslash-u0000 is text, not NUL: \\u0000 and an emoji \U0001f600"
    args = {**nested(MAX_JSON_DEPTH), "text": text}
    result = await queue.enqueue(
        "echo", args, run_at=latest, timeout=MAX_SECONDS, idempotency_key="k" * 255
    )
    job = await queue.get_job(result.id)
    assert job is not None
    assert job.args == args
    assert job.run_at == latest
    assert job.run_at.tzinfo is not None
    assert job.timeout == MAX_SECONDS
    later = await queue.enqueue("echo", {}, delay=MAX_SECONDS)
    job = await queue.get_job(later.id)
    assert job is not None
    assert job.run_at.year > datetime.now(UTC).year + 99


@pytest.mark.parametrize("bad_id", ["abc", 2**70, 2**63, 0, -1, True, 1.0, None])
async def test_job_ids_out_of_range_are_refused_before_the_database(queue, bad_id):
    for call in (queue.cancel, queue.retry, queue.get_job):
        with pytest.raises(InvalidJobError, match="job id must be an integer"):
            await call(bad_id)
    for call in (queue.cancel_sync, queue.retry_sync, queue.get_job_sync):
        with pytest.raises(InvalidJobError, match="job id must be an integer"):
            call(bad_id)


async def test_a_bad_batch_item_is_named_by_its_index_and_nothing_is_written(dsn, queue, echo):
    def jobs():
        yield echo.job(n=0)
        yield echo.job(n=1)
        yield echo.with_options(queue="q").job(n=2, bad=float("nan"))

    with pytest.raises(InvalidJobError, match=r"^item 2: args must be JSON") as refused:
        await queue.enqueue_many(jobs())
    assert (refused.value.index, refused.value.field) == (2, "args")

    by_hand = JobSpec(task="echo", args_json="{}", delay=1e13)
    with pytest.raises(InvalidJobError, match=r"^item 1: delay") as refused:
        queue.enqueue_many_sync([echo.job(n=0), by_hand])
    assert (refused.value.index, refused.value.field) == (1, "delay")
    assert count_jobs(dsn) == 0


async def test_a_jobspec_made_by_hand_is_checked_like_a_built_one(dsn, queue):
    for spec, field in [
        (JobSpec(task="echo", args_json="{not json"), "args"),
        (JobSpec(task="echo", args_json="[1]"), "args"),
        (JobSpec(task="echo", args_json="{}", idempotency_key="a\x00"), "idempotency_key"),
        (JobSpec(task="echo", args_json="{}", timeout=-1.0), "timeout"),
        (JobSpec(task="no spaces allowed", args_json="{}"), "task"),
        (JobSpec(task="echo", args_json="{}", run_at=datetime.now(UTC), delay=5.0), "run_at"),
    ]:
        with pytest.raises(InvalidJobError) as refused:
            await queue.enqueue_spec(spec)
        assert refused.value.field == field
    # _replace on a checked job gives a job that is checked again.
    built = queue.build("echo", {})
    with pytest.raises(InvalidJobError):
        queue.enqueue_spec_sync(built._replace(delay=1e13))
    assert count_jobs(dsn) == 0


def test_retry_and_snooze_delays_keep_the_same_bound():
    for bad in ({"base": float("nan")}, {"max_delay": 1e12}, {"factor": float("inf")}):
        with pytest.raises(ValueError, match="retry"):
            RetryPolicy(**bad)  # type: ignore[arg-type]
    for after in (1e12, float("nan"), -1):
        with pytest.raises(ValueError, match="Snooze"):
            Snooze(after)
    assert Snooze(MAX_SECONDS).after == MAX_SECONDS


async def test_the_table_refuses_from_psql_what_pgqueue_could_not_read(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        for column, value in [
            ("run_at", "infinity"),
            ("run_at", "10000-01-01"),
            ("run_at", "4000-01-01 BC"),
            ("timeout", "1000 years"),
            ("created_at", "infinity"),
            ("started_at", "-infinity"),
            ("finished_at", "20000-01-01"),
        ]:
            with pytest.raises(psycopg.errors.CheckViolation):
                conn.execute(
                    f"INSERT INTO pgqueue.jobs (task, {column}) VALUES ('t', %s)",
                    (value,),
                )
    assert count_jobs(dsn) == 0


async def test_rows_written_by_hand_always_read_back(dsn, queue):
    deep = "[" * 3000 + "]" * 3000
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO pgqueue.jobs (task, args, result, progress, state, finished_at,"
            " attempts, started_at)"
            " VALUES ('t', jsonb_build_object('x', %s::jsonb), %s::jsonb, '\"half\"',"
            " 'succeeded', now(), 1, now()) RETURNING id",
            (deep, deep),
        ).fetchone()
    assert row is not None
    for job in (await queue.get_job(row[0]), queue.get_job_sync(row[0])):
        assert job is not None
        assert "pgqueue_undecodable" in job.args
        assert "pgqueue_undecodable" in job.result
        assert job.progress == "half"


async def test_a_database_never_migrated_says_run_pgqueue_migrate(empty_dsn):
    q = pgqueue.Queue(empty_dsn)
    try:
        with pytest.raises(SchemaNotReadyError, match="run `pgqueue migrate`"):
            await q.enqueue("echo", {})
        with pytest.raises(SchemaNotReadyError, match="run `pgqueue migrate`"):
            q.enqueue_sync("echo", {})
        with pytest.raises(SchemaNotReadyError):
            await q.cancel(1)
        with pytest.raises(SchemaNotReadyError):
            q.get_job_sync(1)
        with psycopg.connect(empty_dsn) as conn:
            with pytest.raises(SchemaNotReadyError):
                q.enqueue_sync("echo", {}, conn=conn)
    finally:
        await q.close()


async def test_database_errors_speak_to_the_caller_without_plpgsql_context(queue, echo):
    result = await echo.enqueue(n=1)
    await queue.cancel(result.id)
    for attempt in (queue.cancel, queue.cancel_sync):
        with pytest.raises(pgqueue.JobStateError) as refused:
            outcome = attempt(result.id)
            if hasattr(outcome, "__await__"):
                await outcome
        message = str(refused.value)
        assert message == f"job {result.id} is cancelled and cannot be cancelled"
        assert "PL/pgSQL" not in message
        assert "\n" not in message


async def test_an_error_message_postgres_could_not_store_is_recorded_cleaned(queue):
    @queue.task(name="raises_odd_text", max_attempts=1)
    async def raises_odd_text() -> None:
        raise ValueError("nul" + chr(0) + " and lone " + chr(0xD800) + " surrogate")

    @queue.task(name="fine")
    async def fine() -> str:
        return "ok"

    async with running_worker(queue, concurrency=4):
        bad = await raises_odd_text.enqueue()
        good = await fine.enqueue()
        failed = await wait_for_job(queue, bad.id, timeout=30)
        succeeded = await wait_for_job(queue, good.id, timeout=30)
    assert failed.state is pgqueue.JobState.FAILED
    assert failed.errors[0]["message"] == "nul\ufffd and lone ? surrogate"
    assert succeeded.state is pgqueue.JobState.SUCCEEDED


APP_SCRIPT = """
    import sys
    import pgqueue

    queue = pgqueue.Queue(sys.argv[1] if len(sys.argv) > 1 else None)

    @queue.task
    def send_welcome(to: str) -> str:
        return "welcome " + to

    if __name__ == "__main__":
        print(send_welcome.name)
        print(send_welcome.enqueue_sync(to="ada").id)
        queue.close_sync()
"""


def test_a_task_defined_in_a_script_is_named_so_the_worker_finds_it(dsn, tmp_path):
    (tmp_path / "welcome_app.py").write_text(textwrap.dedent(APP_SCRIPT))
    ran = subprocess.run(
        [sys.executable, "welcome_app.py", dsn],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    name, job_id = ran.stdout.split()
    assert name == "welcome_app.send_welcome"
    # The worker imports the same file as a module: same name, so the job runs.
    worker = subprocess.Popen(
        [sys.executable, "-m", "pgqueue", "worker", "welcome_app:queue", "--dsn", dsn],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_sql(
            dsn,
            "SELECT state = 'succeeded' AND result = '\"welcome ada\"'::jsonb"
            f" FROM pgqueue.jobs WHERE id = {int(job_id)}",
            True,  # noqa: FBT003 - the value the query must return
        )
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)


def test_a_task_in_a_package_script_gets_its_dotted_name(tmp_path):
    package = tmp_path / "shop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    script = textwrap.dedent(APP_SCRIPT).replace(
        'print(send_welcome.enqueue_sync(to="ada").id)', ""
    )
    (package / "tasks.py").write_text(script)
    ran = subprocess.run(
        [sys.executable, str(package / "tasks.py"), "postgresql://unused@127.0.0.1:1/x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert ran.stdout.split()[0] == "shop.tasks.send_welcome"
