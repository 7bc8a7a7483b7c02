"""The pgqueue command: exit codes and messages for bad input, migrate and --check."""

from __future__ import annotations

import subprocess
import sys
import time

import psycopg
import pytest
from workerproc import APPS


def pgqueue_cmd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgqueue", *args],
        cwd=APPS,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["worker", "no_colon"], "APP must look like module:attribute"),
        (["worker", "no_such_module:queue"], "cannot import 'no_such_module'"),
        (["worker", "slow_app:missing"], "not a pgqueue.Queue"),
        (["worker", "slow_app:queue", "--concurrency", "0"], "must be at least 1"),
        (["worker", "slow_app:queue", "--threads", "0"], "must be at least 1"),
        (
            ["worker", "slow_app:queue", "--concurrency", "4", "--threads", "5"],
            "threads must be between 1 and concurrency (4), got 5",
        ),
        (["worker", "slow_app:queue", "--poll-interval", "-1"], "must be positive"),
        (["worker", "slow_app:queue", "--queue", "bad name"], "invalid queue name"),
        (["worker", "slow_app:queue", "--keep-failed", "soon"], "invalid duration 'soon'"),
        (["worker", "slow_app:queue", "--prune-interval", "0"], "must be positive"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_exits_2_with_a_message(dsn, args, message):
    result = pgqueue_cmd(*args, "--dsn", dsn)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_migrate_and_check(empty_dsn):
    behind = pgqueue_cmd("migrate", "--check", "--dsn", empty_dsn)
    assert behind.returncode == 1
    assert "database_behind" in behind.stderr
    with psycopg.connect(empty_dsn) as conn:  # --check changed nothing
        assert conn.execute("SELECT to_regclass('pgqueue.jobs')").fetchone() == (None,)
    assert pgqueue_cmd("migrate", "--dsn", empty_dsn).returncode == 0
    assert pgqueue_cmd("migrate", "--dsn", empty_dsn).returncode == 0  # idempotent
    ok = pgqueue_cmd("migrate", "--check", "--dsn", empty_dsn)
    assert ok.returncode == 0, ok.stderr
    assert "database_up_to_date" in ok.stderr


def test_a_database_a_later_release_migrated_is_ahead_not_behind(dsn):
    """A rolling deploy: the next release migrated the database, and a process of this
    one starts (a crash, a rescheduled pod). Its schema keeps this release working, so
    the process runs, saying so; the database is not 'behind'."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE pgqueue.alembic_version SET version_num = '9999_later_release'")
    check = pgqueue_cmd("migrate", "--check", "--dsn", dsn)
    assert check.returncode == 0, check.stderr
    assert "database_ahead" in check.stderr
    assert "database_behind" not in check.stderr
    listed = pgqueue_cmd("keys", "list", "--dsn", dsn)  # a command that checks the schema
    assert listed.returncode == 0, listed.stderr
    assert "database_ahead" in listed.stderr
    assert "database_behind" not in listed.stderr


def test_an_unreachable_database_is_a_clear_failure():
    result = pgqueue_cmd(
        "migrate", "--dsn", "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"
    )
    assert result.returncode == 3
    assert "database_unavailable" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_worker_on_an_unmigrated_database_says_so(empty_dsn):
    result = pgqueue_cmd("worker", "slow_app:queue", "--dsn", empty_dsn)
    assert result.returncode == 1
    assert "database_behind" in result.stderr
    assert "pgqueue migrate" in result.stderr


def test_a_worker_waits_for_a_database_that_is_not_up_yet():
    from workerproc import WorkerProcess

    worker = WorkerProcess(
        "slow_app:queue", "postgresql://postgres@127.0.0.1:1/none?connect_timeout=1"
    )
    try:
        worker.wait_for_event("database_unreachable", count=2)
        assert worker.stop() == 0
    finally:
        worker.close()


def test_a_worker_stopped_while_it_starts_up_exits_cleanly(dsn):
    """SIGTERM while the worker is still checking the schema (held up here by a lock
    on Alembic's version table): a clean exit at once, without waiting for the check."""
    import signal

    from workerproc import WorkerProcess

    with psycopg.connect(dsn) as locker:
        locker.execute("LOCK TABLE pgqueue.alembic_version IN ACCESS EXCLUSIVE MODE")
        worker = WorkerProcess("slow_app:queue", dsn)
        try:
            worker.wait_until_handling(signal.SIGTERM)
            deadline = time.monotonic() + 30
            while not _blocked_on_lock(dsn):  # inside the schema check, in SQLAlchemy
                assert time.monotonic() < deadline, "the worker never reached the check"
                time.sleep(0.05)
            stopping = time.monotonic()
            worker.signal(signal.SIGTERM)
            assert worker.wait(30) == 0, worker.log_path.read_text()  # the lock still held
            assert time.monotonic() - stopping < 5
            locker.rollback()
            events = [e["event"] for e in worker.events()]
            assert "worker_stopped_before_start" in events
            assert "worker_started" not in events
        finally:
            worker.close()


def _blocked_on_lock(dsn: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND query LIKE '%alembic_version%'"
        ).fetchone()
    return bool(row and row[0])


def test_psql_opens_the_database_pgqueue_uses(dsn):
    result = pgqueue_cmd(
        "psql", "--dsn", dsn, "--", "-At", "-c", "SELECT count(*) FROM pgqueue.jobs"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
    failed = pgqueue_cmd("psql", "--dsn", dsn, "--", "-At", "-c", "SELECT no_such_column")
    assert failed.returncode != 0  # psql's own status comes back
    assert "no_such_column" in failed.stderr


def test_psql_on_the_embedded_server(tmp_path):
    result = pgqueue_cmd(
        "psql",
        "--data-dir",
        str(tmp_path / "pgdata"),
        "--log-level",
        "warning",
        "--",
        "-At",
        "-c",
        "SHOW server_version_num",
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("18")
