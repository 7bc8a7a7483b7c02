"""pgqueue.contrib.django, the django.tasks backend, in a real Django project on a real
PostgreSQL: examples/django_project's manage.py, run in subprocesses by two interpreters,
this venv's (Django 5.2 and the django-tasks backport) and Python 3.13 with Django 6 in a
Debian trixie rootfs (tests/trixie.py; skipped where it cannot run).

Each test runs the project's own commands: ``migrate`` (pgqueue's schema through the
app's migration), ``signup`` (a row and its task in one ``transaction.atomic()``),
``enqueue`` (any task, with Django's options), ``task_result`` (Django's TaskResult as
JSON) and ``pgqueue_worker``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import psycopg
import pytest
from workerproc import wait_for_sql, wait_until_handling

from pgqueue import migrate

REPO = Path(__file__).resolve().parent.parent
PROJECT = REPO / "examples" / "django_project"
COMMAND_TIMEOUT = 120.0


class VenvPython:
    """The same API as tests/trixie.py's runner, on this venv's interpreter."""

    def _argv(self, args: list[str]) -> list[str]:
        return [sys.executable, *args[1:]] if args[0] == "python" else args

    def run(
        self, args: list[str], *, cwd: Path, env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self._argv(args),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def popen(
        self,
        args: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        stdout: int | IO[Any] | None,
        stderr: int | IO[Any] | None,
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self._argv(args), cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True
        )


@pytest.fixture(params=["django5-backport", "django6-trixie"])
def python(request: pytest.FixtureRequest) -> Any:
    if request.param == "django5-backport":
        return VenvPython()
    if not (REPO / "tests" / "trixie.py").exists():
        pytest.skip("tests/trixie.py is not there")
    from trixie import runner

    return runner()


class Project:
    """examples/django_project on one database, run by one interpreter."""

    def __init__(self, python: Any, dsn: str) -> None:
        self.python = python
        self.dsn = dsn
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": tempfile.gettempdir(),
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO),
            "DATABASE_URL": dsn,
            "PGCONNECT_TIMEOUT": "10",
        }

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = self.python.run(
            ["python", "manage.py", *args], cwd=PROJECT, env=self.env, timeout=COMMAND_TIMEOUT
        )
        if ok:
            assert done.returncode == 0, f"manage.py {' '.join(args)}:\n{done.stderr}"
        return done

    def result(self, result_id: str) -> dict[str, Any]:
        described: dict[str, Any] = json.loads(self.run("task_result", result_id).stdout)
        return described

    def enqueue(self, task: str, *options: str) -> str:
        return self.run("enqueue", f"shop.tasks.{task}", *options).stdout.strip()

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            return conn.execute(sql).fetchall()


@pytest.fixture
def project(python: Any, dsn: str) -> Project:
    """The project, migrated, on a fresh database that already holds pgqueue's schema."""
    project = Project(python, dsn)
    project.run("migrate")
    return project


def test_migrate_creates_the_pgqueue_schema_on_an_empty_database(
    python: Any, empty_dsn: str
) -> None:
    project = Project(python, empty_dsn)
    done = project.run("migrate")
    assert "Applying pgqueue.0001_pgqueue_schema..." in done.stdout
    assert migrate.current_revision(empty_dsn) == migrate.head_revision()
    assert project.query("SELECT count(*) FROM pgqueue.jobs") == [(0,)]
    shown = project.run("showmigrations", "pgqueue").stdout
    assert "[X] 0001_pgqueue_schema" in shown
    again = project.run("migrate")
    assert "No migrations to apply" in again.stdout
    assert "pgqueue schema at" in project.run("pgqueue_migrate").stdout


def test_the_projects_own_tests_run_on_a_test_database(project: Project) -> None:
    done = project.run("test", "shop", "--noinput", "-v", "2")
    assert "Ran 2 tests" in done.stderr
    assert "Applying pgqueue.0001_pgqueue_schema..." in done.stdout + done.stderr
    # Its jobs went to the test database, never to the project's own.
    assert project.query("SELECT count(*) FROM pgqueue.jobs") == [(0,)]


def test_enqueue_commits_and_rolls_back_with_atomic(project: Project) -> None:
    failed = project.run("signup", "gone@example.com", "--fail", ok=False)
    assert failed.returncode == 1
    assert "roll back" in failed.stderr
    assert project.query("SELECT count(*) FROM shop_signup") == [(0,)]
    assert project.query("SELECT count(*) FROM pgqueue.jobs") == [(0,)]

    made = json.loads(project.run("signup", "kept@example.com").stdout)
    assert project.query("SELECT id, email FROM shop_signup") == [
        (made["signup"], "kept@example.com")
    ]
    assert project.query("SELECT id, task, queue, state, args FROM pgqueue.jobs") == [
        (
            int(made["task_result"]),
            "django.tasks",
            "emails",
            "queued",
            {
                "task": "shop.tasks.send_welcome",
                "args": [made["signup"], "kept@example.com"],
                "kwargs": {},
                "backend": "default",
            },
        )
    ]
    ready = project.result(made["task_result"])
    assert ready["status"] == "READY"
    assert ready["attempts"] == 0
    assert ready["task"] == "shop.tasks.send_welcome"

    # The view does the same inside a request: 202 and a job, or a 500 and neither.
    script = (
        "from django.test import Client\n"
        "c = Client(raise_request_exception=False)\n"
        "print(c.post('/signup', {'email': 'v@example.com', 'fail': '1'}).status_code)\n"
        "r = c.post('/signup', {'email': 'w@example.com'})\n"
        "print(r.status_code, r.json()['task_result'])\n"
        "print(c.get('/tasks/' + r.json()['task_result']).json()['status'])\n"
        "print(c.get('/tasks/987654').status_code)\n"
    )
    # The last lines: Django 5.2's shell may say first what it imported by itself.
    out = project.run("shell", "-c", script).stdout.strip().splitlines()[-4:]
    assert out[0] == "500"
    status, job_id = out[1].split()
    assert status == "202"
    assert out[2:4] == ["READY", "404"]
    assert project.query("SELECT email FROM shop_signup ORDER BY id") == [
        ("kept@example.com",),
        ("w@example.com",),
    ]
    assert project.query("SELECT count(*) FROM pgqueue.jobs") == [(2,)]
    assert project.query(f"SELECT state FROM pgqueue.jobs WHERE id = {int(job_id)}") == [
        ("queued",)
    ]


def test_django_options_map_onto_the_job(project: Project) -> None:
    before = datetime.now(UTC)
    job_id = project.enqueue(
        "fail", "--args", '["later"]', "--priority", "7", "--queue-name", "emails",
        "--delay", "3600",
    )  # fmt: skip
    [(queue, priority, run_at, max_attempts)] = project.query(
        f"SELECT queue, priority, run_at, max_attempts FROM pgqueue.jobs WHERE id = {job_id}"
    )
    assert (queue, priority, max_attempts) == ("emails", 7, 1)
    assert before + timedelta(seconds=3590) < run_at < before + timedelta(seconds=3700)
    described = project.result(job_id)
    assert (described["queue_name"], described["priority"]) == ("emails", 7)

    lowest = project.enqueue("add", "--args", "[1, 2]", "--priority", "-100")
    assert project.query(f"SELECT priority, queue FROM pgqueue.jobs WHERE id = {lowest}") == [
        (-100, "default")
    ]
    # Django's own checks: a priority out of its range, a queue not in QUEUES.
    too_high = project.run("enqueue", "shop.tasks.add", "--priority", "101", ok=False)
    assert too_high.returncode != 0
    assert "priority must be a whole number between -100 and 100" in too_high.stderr
    unknown_queue = project.run("enqueue", "shop.tasks.add", "--queue-name", "other", ok=False)
    assert "Queue 'other' is not valid for backend" in unknown_queue.stderr
    # Arguments must be JSON: refused before anything is written.
    not_json = project.run(
        "shell", "-c", "from shop.tasks import add; add.enqueue({1, 2}, 3)", ok=False
    )
    assert "InvalidJobError" in not_json.stderr

    # The async API: Django's default aenqueue/aget_result, through a thread.
    script = (
        "import asyncio\n"
        "from shop.tasks import add\n"
        "result = asyncio.run(add.aenqueue(4, 5))\n"
        "print(result.id, asyncio.run(add.aget_result(result.id)).status)\n"
    )
    async_id, async_status = project.run("shell", "-c", script).stdout.split()[-2:]
    assert async_status == "READY"
    assert project.query("SELECT count(*) FROM pgqueue.jobs") == [(3,)]
    assert project.query(f"SELECT args FROM pgqueue.jobs WHERE id = {async_id}") == [
        ({"task": "shop.tasks.add", "args": [4, 5], "kwargs": {}, "backend": "default"},)
    ]


def test_worker_runs_the_tasks_and_results_read_back(project: Project, tmp_path: Path) -> None:
    made = json.loads(project.run("signup", "hello@example.com").stdout)
    welcome = made["task_result"]
    failing = project.enqueue("fail", "--args", '["boom"]')
    with_context = project.enqueue("which_attempt", "--kwargs", '{"label": "ctx"}')
    coroutine = project.enqueue("add", "--args", "[2, 3]")
    log_path = (
        Path(tempfile.gettempdir())
        / f"pgqueue-django-worker-{os.getpid()}-{time.monotonic_ns()}.log"
    )
    with log_path.open("w") as log:
        worker = project.python.popen(
            ["python", "manage.py", "pgqueue_worker", "--log-format", "json", "--threads", "4"],
            cwd=PROJECT,
            env=project.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for_sql(
                project.dsn,
                "SELECT count(*) FROM pgqueue.jobs WHERE state IN ('succeeded', 'failed')",
                4,
            )
            wait_until_handling(worker, signal.SIGTERM)
            worker.send_signal(signal.SIGTERM)
            status = worker.wait(60)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
    logged = log_path.read_text()
    log_path.unlink()
    assert status == 0, logged
    assert '"worker_stopped"' in logged

    done = project.result(welcome)
    assert done["status"] == "SUCCESSFUL"
    assert done["return_value"] == "welcome sent to hello@example.com"
    assert done["attempts"] == 1
    assert done["errors"] == []
    assert done["enqueued_at"] <= done["started_at"] <= done["finished_at"]
    assert project.query("SELECT welcomed FROM shop_signup") == [(True,)]

    broken = project.result(failing)
    assert broken["status"] == "FAILED"
    assert "return_value" not in broken
    [error] = broken["errors"]
    assert error["exception_class_path"] == "builtins.ValueError"
    assert "ValueError: boom" in error["traceback"]
    assert broken["finished_at"] is not None

    assert project.result(with_context)["return_value"] == {
        "label": "ctx",
        "attempt": 1,
        "id": with_context,
    }
    assert project.result(coroutine)["return_value"] == 5

    for unknown in ("987654", "not-a-number", "0"):
        missing = project.run("task_result", unknown, ok=False)
        assert missing.returncode == 1
        assert f"no task result {unknown}" in missing.stderr


def test_dsn_from_settings() -> None:
    from pgqueue.contrib.django.dsn import dsn_from_settings

    engine = "django.db.backends.postgresql"
    assert (
        dsn_from_settings(
            {
                "ENGINE": engine,
                "NAME": "shop",
                "USER": "app",
                "PASSWORD": "p@ss/word",
                "HOST": "db.internal",
                "PORT": 6432,
                "OPTIONS": {"sslmode": "require", "server_side_binding": True},
            }
        )
        == "postgresql://app:p%40ss%2Fword@db.internal:6432/shop?sslmode=require"
    )
    assert (
        dsn_from_settings({"ENGINE": engine, "NAME": "shop", "HOST": "/var/run/postgresql"})
        == "postgresql:///shop?host=/var/run/postgresql"
    )
    with pytest.raises(ValueError, match="PostgreSQL"):
        dsn_from_settings({"ENGINE": "django.db.backends.sqlite3", "NAME": "x"})
