"""The database fixtures and the servers behind them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
from conftest import CONTAINER_IMAGE, PgServer, postgres_container_class

from pgqueue import embedded
from pgqueue.embedded import EmbeddedServer, resolve_dsn
from pgqueue.testing.servers import docker_engine_answers, dsn_with_dbname


def _pgqueue_tables(dsn: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'pgqueue'"
        ).fetchall()
    return {row[0] for row in rows}


def test_dsn_fixture_is_a_migrated_database_of_its_own(dsn: str, pg_server: PgServer) -> None:
    assert _pgqueue_tables(dsn) == {
        "jobs",
        "workers",
        "queues",
        "api_keys",
        "alembic_version",
        "schedules",
        "schedule_ticks",
        "queue_limits",
        "key_limits",
        "job_starts",
        "unique_windows",
        "sequences",
        "job_steps",
        "workflows",
        "job_dependencies",
        "job_counter_deltas",
        "job_counters",
        "job_counter_minutes",
        "server_timeline",
    }
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone() == (0,)
        dbname = conn.info.dbname
    assert dbname.startswith("pgqueue_test_")
    assert dsn == pg_server.dsn_for(dbname)


def test_empty_dsn_fixture_has_no_schema(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = 'pgqueue'")
        assert row.fetchone() == (0,)


def test_pg_server_describes_itself(pg_server: PgServer) -> None:
    assert pg_server.kind in {"external", "testcontainers", "embedded"}
    assert pg_server.server_version_num >= 130000
    assert (pg_server.bin_dir / "pg_dump").is_file()
    with psycopg.connect(pg_server.admin_dsn) as conn:
        assert conn.info.server_version == pg_server.server_version_num


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql://postgres:@/postgres?host=/tmp/pg data",
            "postgresql://postgres:@/other?host=/tmp/pg+data",
        ),
        (
            "postgresql://postgres@/postgres?host=/tmp/pgdata&port=5432",
            "postgresql://postgres@/other?host=/tmp/pgdata&port=5432",
        ),
        (
            "postgresql://u:p%40ss@db.example:6543/postgres?sslmode=require",
            "postgresql://u:p%40ss@db.example:6543/other?sslmode=require",
        ),
        ("postgresql://u@h/postgres?dbname=postgres", "postgresql://u@h/other"),
        (
            "host=/run/postgresql port=5433 user=me password=s3cr@t dbname=postgres",
            "postgresql://me:s3cr%40t@/other?host=/run/postgresql&port=5433",
        ),
    ],
)
def test_dsn_with_dbname(dsn: str, expected: str) -> None:
    assert dsn_with_dbname(dsn, "other") == expected


def test_dsn_with_dbname_keeps_libpq_meaning(pg_server: PgServer) -> None:
    with psycopg.connect(pg_server.dsn_for("template1")) as conn:
        assert conn.info.dbname == "template1"


def test_testcontainers_server() -> None:
    if not docker_engine_answers():
        pytest.skip("no Docker engine answers")
    with postgres_container_class()(CONTAINER_IMAGE, driver=None) as container:
        url = container.get_connection_url()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_resolve_dsn_prefers_explicit_then_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PGQUEUE_DSN", "postgresql://from-env/db")
    assert resolve_dsn("postgresql://explicit/db", data_dir=tmp_path) == (
        "postgresql://explicit/db",
        None,
    )
    assert resolve_dsn(None, data_dir=tmp_path) == ("postgresql://from-env/db", None)
    assert list(tmp_path.iterdir()) == []  # no server was started


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGQUEUE_DATA_DIR", str(tmp_path / "elsewhere"))
    assert embedded.default_data_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("PGQUEUE_DATA_DIR")
    assert embedded.default_data_dir().parts[-2:] == ("pgqueue", "pgdata")


def test_default_data_dir_avoids_whitespace(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGQUEUE_DATA_DIR", raising=False)
    monkeypatch.setattr(
        embedded.platformdirs,
        "user_data_dir",
        lambda appname: f"/Users/me/Library/Application Support/{appname}",
    )
    data_dir = embedded.default_data_dir()
    assert " " not in str(data_dir)
    assert data_dir.parts[-2:] == ("pgqueue", "pgdata")


def test_embedded_server_refuses_a_path_with_whitespace(tmp_path: Path) -> None:
    with pytest.raises(embedded.EmbeddedServerError, match="whitespace"):
        EmbeddedServer.start(tmp_path / "pg data")
    assert not (tmp_path / "pg data").exists()


def test_embedded_server_from_resolve_dsn(
    monkeypatch: pytest.MonkeyPatch, embedded_data_dir: Path
) -> None:
    monkeypatch.delenv("PGQUEUE_DSN", raising=False)
    data_dir = embedded_data_dir
    url, server = resolve_dsn(None, data_dir=data_dir)
    assert server is not None
    try:
        assert url == server.dsn("postgres")
        with psycopg.connect(url) as conn:
            version = conn.execute("SELECT version()").fetchone()
        assert version is not None
        assert "PostgreSQL" in version[0]
        pid = server.pid
        assert pid is not None
        assert embedded._pid_alive(pid)

        # A second handle in the same process shares the server; the server stops only
        # when the last handle goes.
        with EmbeddedServer.start(data_dir) as again:
            assert again.pid == pid
        assert embedded._pid_alive(pid)
    finally:
        server.stop()
    assert not embedded._pid_alive(pid)
    assert not (data_dir / "postmaster.pid").exists()
    server.stop()  # idempotent


def test_embedded_server_is_shared_between_processes(embedded_data_dir: Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from pgqueue.embedded import EmbeddedServer
        server = EmbeddedServer.start(Path(sys.argv[1]))
        print(server.pid)
        server.stop()
        """
    )
    env = dict(os.environ)
    package_root = str(Path(embedded.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    with EmbeddedServer.start(embedded_data_dir) as server:
        other = subprocess.run(
            [sys.executable, "-c", code, str(embedded_data_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert other.returncode == 0, other.stderr
        # The other process reused this server, and leaving did not stop it.
        assert str(server.pid) in other.stdout.split()
        assert server.pid is not None
        assert embedded._pid_alive(server.pid)
        with psycopg.connect(server.dsn()) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


def test_embedded_server_forgets_handles_of_dead_processes(embedded_data_dir: Path) -> None:
    data_dir = embedded_data_dir
    server = EmbeddedServer.start(data_dir)
    pid = server.pid
    assert pid is not None
    # A process that held a handle and was killed without releasing it.
    handles = data_dir / ".handle_pids.json"
    exited = subprocess.Popen(["true"])
    exited.wait(timeout=30)
    dead_pid = exited.pid
    handles.write_text(handles.read_text().replace("]", f", {dead_pid}]"))
    server.stop()
    assert not embedded._pid_alive(pid)
