"""The first hour of a new user: a database that is unreachable, refuses, does not exist,
or accepts connections and never answers (a black-holed port). Every command answers
with one line and its exit status; connection attempts give up after the connect
timeout and each failed try is logged; a signal stops a worker at once wherever its
start-up is; a library call gives up after ``pool_timeout``. Real processes, real
signals, a real listening socket that never answers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
import structlog
from workerproc import APPS, WorkerProcess, wait_until_handling

import pgqueue
from pgqueue.connect import CONNECT_TIMEOUT, asyncpg_connect, connect_timeout

if TYPE_CHECKING:
    from collections.abc import Iterator

# Keeps the black-hole cases short; the default (5 s) is checked on its own below.
SHORT_TIMEOUT = {"PGCONNECT_TIMEOUT": "2"}


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A DSN whose port accepts connections (the kernel completes the handshake for a
    listening socket) and never says a word."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)  # never accept()ed: every connection waits for good
        yield f"postgresql://postgres@127.0.0.1:{sock.getsockname()[1]}/pgqueue"


@pytest.fixture
def closed_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://postgres@127.0.0.1:{port}/pgqueue"


def with_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    began = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pgqueue", *args, "--log-format", "json"],
        cwd=APPS,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result, time.monotonic() - began


def assert_one_line(stderr: str, event: str) -> None:
    # Beside the line every command logs at start, saying which server it uses.
    lines = [
        line
        for line in stderr.splitlines()
        if line.strip() and '"event": "database_selected"' not in line
    ]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert f'"event": "{event}"' in lines[0], stderr


# --- every command: one line and its exit status ------------------------------------


KEYS_CREATE = ["keys", "create", "--name", "n", "--scope", "read"]


@pytest.mark.parametrize(
    ("command", "where"),
    [
        (["keys", "list"], "closed_port"),
        (["keys", "list"], "black_hole"),
        (["keys", "list"], "unknown_database"),
        (KEYS_CREATE, "black_hole"),
        (KEYS_CREATE, "unknown_database"),
        (["migrate"], "black_hole"),
    ],
    ids=[
        "list-closed",
        "list-black-hole",
        "list-unknown-db",
        "create-black-hole",
        "create-unknown-db",
        "migrate-black-hole",
    ],
)
def test_commands_on_an_unavailable_database_say_so_in_one_line(request, pg_server, command, where):
    if where == "unknown_database":
        dsn = pg_server.dsn_for("pgqueue_no_such_database")
    else:
        dsn = request.getfixturevalue(where)
    result, took = run_cli(*command, "--dsn", dsn, env=SHORT_TIMEOUT)
    assert result.returncode == 3, result.stderr
    assert_one_line(result.stderr, "database_unavailable")
    assert result.stdout == ""
    assert took < 20  # the connect timeout (2 s here), not a driver's minute or forever


def test_an_unknown_role_is_one_line_too(pg_server):
    result, _ = run_cli("keys", "list", "--dsn", with_user(pg_server.admin_dsn, "no_such_role"))
    assert result.returncode == 3, result.stderr
    assert_one_line(result.stderr, "database_unavailable")
    assert "no_such_role" in result.stderr


def test_a_bad_key_name_is_bad_input(dsn):
    result, _ = run_cli("keys", "create", "--name", "x" * 101, "--scope", "read", "--dsn", dsn)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "1-100 characters" in result.stderr
    with psycopg.connect(dsn) as conn:  # nothing written
        assert conn.execute("SELECT count(*) FROM pgqueue.api_keys").fetchone() == (0,)


def test_the_default_connect_timeout_bounds_a_black_hole(black_hole):
    result, took = run_cli("migrate", "--check", "--dsn", black_hole)
    assert result.returncode == 3, result.stderr
    assert_one_line(result.stderr, "database_unavailable")
    assert f"connect timeout, {CONNECT_TIMEOUT} s" in result.stderr
    assert took < CONNECT_TIMEOUT + 15


def test_a_signal_stops_a_one_shot_command_at_once(black_hole):
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgqueue", "keys", "list", "--dsn", black_hole],
        cwd=APPS,
        env={**os.environ, "PGCONNECT_TIMEOUT": "60"},  # only the signal can end it soon
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Python handles SIGINT from its first instant (KeyboardInterrupt); SIGTERM only
        # once pgqueue's own handlers are in, which is what this test is about.
        wait_until_handling(proc, signal.SIGTERM)
        time.sleep(0.5)  # let it get into the connection attempt (either way it must stop)
        began = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        took = time.monotonic() - began
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 130, stderr
    assert_one_line(stderr, "interrupted")
    assert took < 5


# --- a worker at a black hole --------------------------------------------------------


def test_a_worker_at_a_black_hole_says_so_keeps_trying_and_stops_at_once(black_hole):
    began = time.monotonic()
    worker = WorkerProcess("slow_app:queue", black_hole, env=SHORT_TIMEOUT)
    try:
        first = worker.wait_for_event("database_unreachable", timeout=30)
        assert time.monotonic() - began < 20  # a few seconds, not 70
        # Its own retries, each one a line with its attempt number.
        worker.wait_for_event("database_unreachable", timeout=30, count=3)
        tries = [e for e in worker.events() if e.get("event") == "database_unreachable"]
        assert [e["attempt"] for e in tries[1:3]] == [1, 2], tries
        assert "connect timeout" in first["error"]
        stopping = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert time.monotonic() - stopping < 5  # not the rest of a connect timeout
        events = [e["event"] for e in worker.events()]
        assert "worker_stopped_before_start" in events
        assert "worker_started" not in events
    finally:
        worker.close()


def test_a_worker_stopped_during_its_schema_check_at_a_black_hole_stops_at_once(black_hole):
    # A connect timeout far longer than the test allows: only the signal can end it.
    worker = WorkerProcess("slow_app:queue", black_hole, env={"PGCONNECT_TIMEOUT": "60"})
    try:
        worker.wait_until_handling(signal.SIGTERM)
        time.sleep(0.5)  # into the schema check's connection attempt
        stopping = time.monotonic()
        worker.signal(signal.SIGTERM)
        assert worker.wait(30) == 0, worker.log_path.read_text()
        assert time.monotonic() - stopping < 5
        assert "worker_stopped_before_start" in [e["event"] for e in worker.events()]
    finally:
        worker.close()


def test_a_worker_refused_for_good_exits_3_in_one_line(pg_server):
    worker = WorkerProcess("slow_app:queue", pg_server.dsn_for("pgqueue_no_such_database"))
    try:
        assert worker.wait(30) == 3
        log = worker.log_path.read_text()
        assert_one_line(log, "database_unavailable")
        assert "pgqueue_no_such_database" in log
    finally:
        worker.close()


# --- the library ---------------------------------------------------------------------


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_enqueue_at_a_black_hole_gives_up_after_pool_timeout_and_logs_each_try(
    black_hole, monkeypatch, flavour
):
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "2")
    queue = pgqueue.Queue(black_hole, pool_timeout=5)
    began = time.monotonic()
    try:
        with (
            structlog.testing.capture_logs() as logs,
            pytest.raises(pgqueue.DatabaseUnavailableError, match="nothing was written"),
        ):
            if flavour == "sync":
                queue.enqueue_sync("t")
            else:
                asyncio.run(queue.enqueue("t"))
        took = time.monotonic() - began
    finally:
        queue.close_sync()
    assert 4.5 < took < 9  # pool_timeout, not pool_timeout plus another connect attempt
    tries = [e for e in logs if e["event"] == "queue_call_retrying"]
    assert tries, logs
    assert tries[0]["reason"] == "unreachable"


async def test_a_dsn_connect_timeout_is_honoured_by_asyncpg_too(dsn):
    with_timeout = f"{dsn}{'&' if '?' in dsn else '?'}connect_timeout=3"
    assert connect_timeout(with_timeout) == 3
    # asyncpg would have sent connect_timeout to the server as a setting, and been refused.
    conn = await asyncpg_connect(with_timeout)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    queue = pgqueue.Queue(with_timeout)
    try:
        job = await queue.enqueue("t")
        assert (await queue.get_job(job.id)) is not None
    finally:
        await queue.close()


def test_the_connect_timeout_comes_from_the_dsn_then_the_environment(monkeypatch):
    monkeypatch.delenv("PGCONNECT_TIMEOUT", raising=False)
    assert connect_timeout("postgresql://h/db") == CONNECT_TIMEOUT == 5
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "7")
    assert connect_timeout("postgresql://h/db") == 7
    assert connect_timeout("postgresql://h/db?connect_timeout=3") == 3
    assert connect_timeout("host=h connect_timeout=1") == 2  # libpq's minimum
    assert connect_timeout("postgresql://h/db?connect_timeout=0") == 0  # the driver's own
