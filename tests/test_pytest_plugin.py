"""pgqueue's pytest plugin (pgqueue/testing/plugin.py), as a user's project meets it: a
tiny project in a temporary directory, run by pytest in a subprocess against this
session's PostgreSQL, using the plugin's fixtures."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import psycopg
import pytest

from pgqueue.testing import servers

ROOT = Path(__file__).resolve().parent.parent
RUN_TIMEOUT = 240  # seconds: the subprocess's whole run

APP = """
from pgqueue import PermanentError, Queue, RetryPolicy

queue = Queue()  # production would use $PGQUEUE_DSN; the tests point it elsewhere


@queue.task(name="myapp.add")
def add(a: int, b: int) -> int:
    return a + b


@queue.task(name="myapp.fan_out")
async def fan_out(n: int) -> int:
    for i in range(n):
        await add.enqueue(a=i, b=i)
    return n


@queue.task(name="myapp.flaky", max_attempts=2, retry=RetryPolicy(base=0, jitter=0))
def flaky(fail: bool) -> str:
    if fail:
        raise PermanentError("refused")
    return "ok"
"""

CONFTEST = """
import pytest


@pytest.fixture
def pgqueue_app():
    from myapp import queue
    return queue
"""

TESTS = """
import psycopg
import pytest

from pgqueue import JobFailedError, JobState
from pgqueue.testing import drain

from myapp import add, fan_out, flaky, queue


def count_jobs(dsn):
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()[0]


def test_inline_needs_no_database(pgqueue_inline):
    assert pgqueue_inline is queue and queue.inline
    result = add.enqueue_sync(a=2, b=3)
    assert queue.result_sync(result.id) == 5
    assert [j.task for j in queue.inline_jobs.jobs] == ["myapp.add"]


@pytest.mark.parametrize("round", [1, 2])
def test_each_test_has_a_fresh_migrated_database(pgqueue_dsn, pgqueue_queue, round):
    assert count_jobs(pgqueue_dsn) == 0
    pgqueue_queue.enqueue_sync("myapp.add", {"a": 1, "b": round})
    assert count_jobs(pgqueue_dsn) == 1


def test_drain_runs_every_job_with_a_real_worker(pgqueue_queue, pgqueue_dsn, pgqueue_drain):
    assert pgqueue_queue is queue and not queue.inline
    parent = fan_out.enqueue_sync(n=3)
    failing = flaky.enqueue_sync(fail=True)
    stats = pgqueue_drain()
    assert (stats.succeeded, stats.failed) == (4, 1)
    assert queue.result_sync(parent.id, timeout=5) == 3
    with pytest.raises(JobFailedError):
        queue.result_sync(failing.id, timeout=5)
    assert count_jobs(pgqueue_dsn) == 5
    with psycopg.connect(pgqueue_dsn) as conn:
        states = conn.execute(
            "SELECT state::text, count(*) FROM pgqueue.jobs GROUP BY 1"
        ).fetchall()
    assert dict(states) == {"succeeded": 4, "failed": 1}


@pytest.mark.asyncio
async def test_drain_in_an_async_test(pgqueue_queue):
    result = await add.enqueue(a=20, b=22)
    stats = await drain(pgqueue_queue)
    assert stats.succeeded == 1
    assert await pgqueue_queue.result(result.id, timeout=5) == 42
    assert (await pgqueue_queue.get_job(result.id)).state is JobState.SUCCEEDED


def test_the_app_queue_is_its_own_again_after_the_fixtures():
    assert not queue.inline and queue.configured_dsn is None
"""


def _plugin_args() -> list[str]:
    """``-p`` for the plugin when the installed metadata does not register it yet (a
    checkout installed before the entry point was added): the run is the same."""
    registered = any(
        ep.value == "pgqueue.testing.plugin"
        for ep in importlib.metadata.entry_points(group="pytest11")
    )
    return [] if registered else ["-p", "pgqueue.testing.plugin"]


def _write_project(root: Path, tests: str) -> None:
    (root / "myapp").mkdir()
    (root / "myapp" / "__init__.py").write_text(
        "from myapp.jobs import add, fan_out, flaky, queue\n"
    )
    (root / "myapp" / "jobs.py").write_text(textwrap.dedent(APP))
    (root / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    (root / "test_user.py").write_text(textwrap.dedent(tests))
    # Its own rootdir and configuration: nothing of pgqueue's own pytest setup.
    (root / "pytest.ini").write_text("[pytest]\nasyncio_default_fixture_loop_scope = function\n")


def _run_pytest(root: Path, admin_dsn: str) -> tuple[subprocess.CompletedProcess[str], int]:
    env = {**os.environ, servers.TEST_DSN_ENV: admin_dsn, "PYTHONPATH": str(ROOT)}
    env.pop("PGQUEUE_DSN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *_plugin_args()],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"the project's test run did not end in {RUN_TIMEOUT} s:\n{out}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, None), proc.pid


def _databases_of(admin_dsn: str, pid: int) -> list[str]:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (f"pgqueue_%\\_{pid}\\_%",)
        ).fetchall()
    return [row[0] for row in rows]


def test_a_users_project_tests_with_the_plugins_fixtures(pg_server, tmp_path):
    _write_project(tmp_path, TESTS)
    run, pid = _run_pytest(tmp_path, pg_server.admin_dsn)
    assert run.returncode == 0, run.stdout
    assert "6 passed" in run.stdout, run.stdout
    # Every database the run made (its template, one per test) is gone.
    assert _databases_of(pg_server.admin_dsn, pid) == []


def test_the_plugin_starts_no_server_unless_a_test_asks(tmp_path):
    tests = """
    from myapp import add, queue


    def test_plain():
        assert 1 + 1 == 2


    def test_inline(pgqueue_inline):
        assert queue.result_sync(add.enqueue_sync(a=1, b=1).id) == 2


    def test_database(pgqueue_dsn):
        pass
    """
    _write_project(tmp_path, tests)
    # Nothing listens there: only the test asking for a database may notice.
    run, _ = _run_pytest(tmp_path, "postgresql://nobody@127.0.0.1:1/postgres?connect_timeout=2")
    assert run.returncode == 1, run.stdout
    assert "2 passed" in run.stdout, run.stdout
    assert "1 error" in run.stdout, run.stdout
    assert "PGQUEUE_TEST_DSN is set but its server cannot be reached" in run.stdout, run.stdout


def _is_fixture(value: object) -> bool:
    # pytest 8.4 and later wrap fixtures in a class of their own; before, a marker.
    return type(value).__name__ == "FixtureFunctionDefinition" or hasattr(
        value, "_pytestfixturefunction"
    )


def test_the_entry_point_names_the_plugin_and_its_fixtures_are_prefixed(pytestconfig):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["pytest11"] == {"pgqueue": "pgqueue.testing.plugin"}
    plugin = importlib.import_module("pgqueue.testing.plugin")
    fixtures = sorted(name for name, value in vars(plugin).items() if _is_fixture(value))
    assert fixtures == [
        "pgqueue_app",
        "pgqueue_drain",
        "pgqueue_dsn",
        "pgqueue_inline",
        "pgqueue_queue",
        "pgqueue_server",
        "pgqueue_template_db",
    ]
    # No hook: loaded into any test run (pgqueue's own too), it changes nothing there.
    assert not [name for name in vars(plugin) if name.startswith("pytest_")]


def test_the_server_is_chosen_in_the_order_pgqueues_own_tests_use(monkeypatch, tmp_path):
    monkeypatch.setenv(servers.TEST_DSN_ENV, "postgresql://somewhere/postgres")
    assert servers.planned_kind() == "external"
    monkeypatch.delenv(servers.TEST_DSN_ENV)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path / 'no-docker.sock'}")
    assert servers.planned_kind() == "embedded"


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql://u:p@h:5/postgres?sslmode=disable",
            "postgresql://u:p@h:5/db1?sslmode=disable",
        ),
        ("postgresql://u@/postgres?host=/tmp/s&dbname=x", "postgresql://u@/db1?host=/tmp/s"),
        ("host=h port=5 user=u dbname=postgres", "postgresql://u@/db1?host=h&port=5"),
    ],
)
def test_test_databases_keep_the_servers_address(dsn, expected):
    assert servers.dsn_with_dbname(dsn, "db1") == expected
