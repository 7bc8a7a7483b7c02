"""The Alembic chain against pgqueue/sql/schema.sql, on a real server."""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

import pgqueue
from pgqueue import migrate
from pgqueue.sql import schema_sql

if TYPE_CHECKING:
    from collections.abc import Callable

    from conftest import PgServer

# pg_dump output lines that say nothing about the schema, or differ on every run:
# comments, session settings, and (since 17.6/18.0) the random \restrict key.
_NOISE_PREFIXES = ("--", "SET ", "SELECT pg_catalog.set_config(", "\\restrict", "\\unrestrict")
# Some server builds stamp every column with an attribute option of their own, whose
# value differs from one CREATE TABLE to the next (seen: a PostgreSQL 15 that sets
# pg_attver=<number>). Compare that such options are there, not their values.
_SERVER_STAMPED_OPTION = re.compile(r"\b(pg_attver)=\d+")


def dump_schema(pg_server: PgServer, dsn: str) -> str:
    result = subprocess.run(
        [
            str(pg_server.bin_dir / "pg_dump"),
            "--schema-only",
            "--schema=pgqueue",
            "--exclude-table=pgqueue.alembic_version",
            "--no-owner",
            "--no-privileges",
            f"--dbname={dsn}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    kept = (line for line in lines if line and not line.startswith(_NOISE_PREFIXES))
    return "\n".join(_SERVER_STAMPED_OPTION.sub(r"\1=<stamp>", line) for line in kept)


def assert_same_schema(pg_server: PgServer, migrated_dsn: str, reference_dsn: str) -> None:
    migrated = dump_schema(pg_server, migrated_dsn)
    reference = dump_schema(pg_server, reference_dsn)
    assert "CREATE TABLE pgqueue.jobs" in reference
    if migrated != reference:
        diff = "\n".join(
            difflib.unified_diff(
                reference.splitlines(),
                migrated.splitlines(),
                fromfile="pgqueue/sql/schema.sql",
                tofile="migrations (alembic head)",
                lineterm="",
            )
        )
        pytest.fail(f"the migration chain and schema.sql disagree:\n{diff}", pytrace=False)


@pytest.fixture
def reference_dsn(make_empty_dsn: Callable[[], str]) -> str:
    """A database built from schema.sql alone."""
    dsn = make_empty_dsn()
    with psycopg.connect(dsn) as conn:
        conn.execute(schema_sql())
    return dsn


def test_chain_builds_the_schema_of_schema_sql(
    pg_server: PgServer, empty_dsn: str, reference_dsn: str
) -> None:
    migrate.upgrade(empty_dsn)
    assert_same_schema(pg_server, empty_dsn, reference_dsn)


def test_downgrade_to_base_then_upgrade_again(
    pg_server: PgServer, empty_dsn: str, reference_dsn: str
) -> None:
    migrate.upgrade(empty_dsn)
    migrate.downgrade(empty_dsn, "base")
    assert migrate.current_revision(empty_dsn) is None
    with psycopg.connect(empty_dsn) as conn:
        left = conn.execute(
            """
            SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'pgqueue'::regnamespace
            UNION ALL
            SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'pgqueue'::regnamespace
            UNION ALL
            SELECT t.typname FROM pg_type t
            WHERE t.typnamespace = 'pgqueue'::regnamespace
              AND t.typrelid = 0 AND t.typcategory <> 'A'  -- not row or array types
            """
        ).fetchall()
    # Only the version table (and its key) remain in schema pgqueue.
    assert {row[0] for row in left} == {"alembic_version", "alembic_version_pkc"}

    migrate.upgrade(empty_dsn)
    assert migrate.is_up_to_date(empty_dsn)
    assert_same_schema(pg_server, empty_dsn, reference_dsn)


def test_revisions_before_and_after_upgrade(empty_dsn: str) -> None:
    head = migrate.head_revision()
    assert head
    assert migrate.current_revision(empty_dsn) is None
    assert not migrate.is_up_to_date(empty_dsn)
    migrate.upgrade(empty_dsn)
    assert migrate.current_revision(empty_dsn) == head
    assert migrate.is_up_to_date(empty_dsn)
    migrate.upgrade(empty_dsn)  # nothing left to do
    assert migrate.current_revision(empty_dsn) == head


def test_version_table_lives_in_schema_pgqueue(empty_dsn: str) -> None:
    migrate.upgrade(empty_dsn)
    with psycopg.connect(empty_dsn) as conn:
        rows = conn.execute(
            "SELECT schemaname FROM pg_tables WHERE tablename = 'alembic_version'"
        ).fetchall()
    assert rows == [("pgqueue",)]


def test_sqlalchemy_style_urls_are_accepted(empty_dsn: str) -> None:
    url = empty_dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    migrate.upgrade(url)
    assert migrate.is_up_to_date(empty_dsn)


def test_concurrent_migrators_take_turns(
    pg_server: PgServer, empty_dsn: str, reference_dsn: str
) -> None:
    code = textwrap.dedent(
        """
        import sys
        from pgqueue import migrate
        migrate.upgrade(sys.argv[1])
        """
    )
    env = dict(os.environ)
    package_root = str(Path(pgqueue.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))

    # Hold the migration lock while the four processes start, so that all of them are
    # queued on it at the same time before any can run: a real race, every time.
    with psycopg.connect(empty_dsn, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (migrate.MIGRATION_LOCK_KEY,))
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, empty_dsn],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        try:
            deadline = time.monotonic() + 60
            waiting = 0
            while time.monotonic() < deadline:
                row = holder.execute(
                    """
                    SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database
                    WHERE l.locktype = 'advisory' AND NOT l.granted
                      AND d.datname = current_database()
                    """
                ).fetchone()
                waiting = row[0] if row else 0
                if waiting == 4 or any(p.poll() is not None for p in procs):
                    break
                time.sleep(0.05)
            assert waiting == 4, "the migrators did not all queue on the lock"
        finally:
            holder.execute("SELECT pg_advisory_unlock(%s)", (migrate.MIGRATION_LOCK_KEY,))

        outputs = []
        for proc in procs:
            try:
                out, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                for p in procs:
                    p.kill()
                pytest.fail("a migrator did not finish within 120 s")
            outputs.append((proc.returncode, out + err))
    assert [rc for rc, _ in outputs] == [0, 0, 0, 0], outputs
    # One of them ran the migration; the others waited, then found nothing to do.
    assert sum("migration_applied" in output for _, output in outputs) == 1, outputs

    with psycopg.connect(empty_dsn) as conn:
        versions = conn.execute("SELECT version_num FROM pgqueue.alembic_version").fetchall()
    assert versions == [(migrate.head_revision(),)]
    assert_same_schema(pg_server, empty_dsn, reference_dsn)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(migrate.upgrade, id="upgrade"),
        pytest.param(migrate.current_revision, id="current_revision"),
        pytest.param(migrate.is_up_to_date, id="is_up_to_date"),
    ],
)
def test_unreachable_database_is_a_clear_migration_error(call: Callable[[str], object]) -> None:
    started = time.monotonic()
    with pytest.raises(migrate.MigrationError, match="cannot connect") as caught:
        call("postgresql://postgres:s3cret@127.0.0.1:1/postgres")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "127.0.0.1" in message
    assert "port 1" in message
    assert "s3cret" not in message


def test_unknown_revision_is_a_migration_error(empty_dsn: str) -> None:
    with pytest.raises(migrate.MigrationError, match="no-such-revision"):
        migrate.upgrade(empty_dsn, "no-such-revision")


def test_a_failing_migration_is_rolled_back(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        # An object in the way of 0001's CREATE TYPE makes the migration fail midway.
        conn.execute("CREATE SCHEMA pgqueue; CREATE TABLE pgqueue.job_state (x int)")
    with pytest.raises(migrate.MigrationError, match="rolled back"):
        migrate.upgrade(empty_dsn)
    assert migrate.current_revision(empty_dsn) is None
    with psycopg.connect(empty_dsn) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'pgqueue'"
        ).fetchall()
    assert rows == [("job_state",)]


def test_script_location_is_a_source_checkout_or_package_data() -> None:
    location = migrate.script_location()
    assert (location / "env.py").is_file()
    assert location.name in {"migrations", "_migrations"}


def test_0009_moves_unreadable_rows_onto_the_bounds_then_holds_them(empty_dsn: str) -> None:
    """Rows an older pgqueue let in (or psql wrote) that Python could not read back are
    moved onto the nearest bound by 0009, whose constraints then keep them there."""
    migrate.upgrade(empty_dsn, "0008")
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO pgqueue.jobs (task, run_at, timeout) VALUES"
            " ('far', 'infinity', '1000 years'), ('past', '4000-01-01 BC', NULL),"
            " ('fine', '2030-01-01 00:00:00+00', '1 hour')"
        )
    migrate.upgrade(empty_dsn)
    with psycopg.connect(empty_dsn) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        rows = conn.execute(
            "SELECT task, run_at::text, EXTRACT(EPOCH FROM timeout)::bigint"
            " FROM pgqueue.jobs ORDER BY id"
        ).fetchall()
    assert rows == [
        ("far", "9999-12-30 00:00:00+00", 3153600000),
        ("past", "0001-01-02 00:00:00+00", None),
        ("fine", "2030-01-01 00:00:00+00", 3600),
    ]
