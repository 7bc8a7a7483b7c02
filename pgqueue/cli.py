"""The ``pgqueue`` command: migrate the database, run a worker, serve the HTTP API
(``api``; ``dev`` for local use, without keys), manage API keys.

The database, in this order: ``--dsn``; else ``$PGQUEUE_DSN``; else, for ``worker`` and
``dev``, the DSN the app's ``Queue(dsn=...)`` was given; else an embedded PostgreSQL in
``--data-dir`` (or the app's ``Queue(data_dir=...)``), started (or reused) and stopped at
the end, which needs the ``embedded`` extra. Every command logs which one it uses at
start (``database_selected``: source, host, port, database, user, embedded; never the
password).

Exit statuses (every failure is one line on stderr, never a traceback):

- 0: done; for ``worker``, ``api`` and ``dev`` also a stop by SIGTERM/SIGINT;
- 1: the command failed: a migration failed, or the database's schema is behind
  (``migrate --check``; ``worker``, ``api`` and ``keys`` on an unmigrated database);
- 2: bad command-line input, or a command whose extra is not installed (``api``,
  ``dev`` need ``pgqueue-jobs[service]``): nothing was done;
- 3: the database is unavailable: unreachable, refusing connections, no answer within
  the connect timeout, an unknown database or role, a failed authentication; or there
  is none: no DSN from any source and no ``embedded`` extra. A worker
  waits for an unreachable database instead (logging each try), but exits 3 when the
  server refuses it for good;
- 128 + the signal's number (130 for SIGINT, 143 for SIGTERM): ``migrate`` or ``keys``
  stopped by that signal before it finished.

A signal stops any command within moments, whatever it is waiting for: a database that
does not answer holds up no one.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, TypeVar

import asyncpg
import psycopg
import structlog
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from pgqueue import extras, migrate
from pgqueue._version import __version__
from pgqueue.admin import Admin, InvalidApiKeyError, validate_api_key_request
from pgqueue.app import Queue
from pgqueue.connect import (
    LISTEN_DSN_ENV,
    POOLER_ENV,
    behind_pooler,
    psycopg_connect_args,
)
from pgqueue.dberrors import connection_failed, refused_for_good
from pgqueue.embedded import (
    DATA_DIR_ENV,
    DSN_ENV,
    EmbeddedServer,
    EmbeddedServerError,
    bundled_bin_dir,
)
from pgqueue.errors import (
    DatabaseUnavailableError,
    PgQueueError,
    ScheduleNotFoundError,
    SchemaNotReadyError,
)
from pgqueue.logs import configure_logging
from pgqueue.retention import Retention, parse_duration
from pgqueue.scheduling.specs import validate_schedule_name
from pgqueue.scheduling.ticks import InvalidScheduleError
from pgqueue.worker import Worker
from pgqueue.worker.core import DEFAULT_BATCH_SIZE, DEFAULT_CONCURRENCY, DEFAULT_THREADS

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import timedelta

T = TypeVar("T")

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3

# What a command may meet from the database; anything else is a bug, with its traceback.
_DATABASE_FAILURES: tuple[type[BaseException], ...] = (
    psycopg.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    ConnectionError,  # refused, reset, ConnectTimeoutError, DatabaseUnavailableError
    TimeoutError,
    PgQueueError,
)
_FAILURES: tuple[type[BaseException], ...] = (
    migrate.MigrationError,
    EmbeddedServerError,
    *_DATABASE_FAILURES,
)


class UsageError(Exception):
    """Bad command-line input: exit 2 with this message."""


# The API's read replica (pgqueue.service.settings.READ_DSN_ENV; not imported from
# there: the service's modules load only for the commands that serve it).
READ_DSN_ENV = "PGQUEUE_READ_DSN"
# The commands that serve the HTTP service: the `service` extra's.
_SERVICE_COMMANDS = frozenset({"api", "dev"})

_NO_DATABASE = (
    "no database: set PGQUEUE_DSN or --dsn, or "
    f"{extras.install_hint('embedded')} for the embedded server"
)

Source = Literal["flag", "env", "app", "embedded"]


class Database(NamedTuple):
    """The database a command uses, where its DSN came from, and the embedded server
    started for it (None unless ``source`` is ``embedded``)."""

    dsn: str
    source: Source
    server: EmbeddedServer | None = None


def load_app(spec: str) -> Queue:
    """Import ``module:attribute`` and return the Queue it names."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageError(f"APP must look like module:attribute, got {spec!r}")
    # Like other worker commands, import the user's code from the current directory.
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attribute, None)
    if not isinstance(app, Queue):
        raise UsageError(f"{spec} is {type(app).__name__}, not a pgqueue.Queue")
    return app


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _duration(text: str) -> timedelta | None:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _pooler_options(*, listen_dsn: bool) -> list[argparse.ArgumentParser]:
    """The options for a DSN that leads to a transaction pooler (PgBouncer and the
    like; see pgqueue.connect): ``--pooler``, and ``--listen-dsn`` for the commands
    that LISTEN."""
    pooler = argparse.ArgumentParser(add_help=False)
    pooler.add_argument(
        "--pooler",
        action="store_true",
        default=None,
        help="the DSN leads to a transaction pooler (PgBouncer pool_mode=transaction): "
        f"no prepared statements, no LISTEN through it (default: ${POOLER_ENV})",
    )
    listen = argparse.ArgumentParser(add_help=False)
    listen.add_argument(
        "--listen-dsn",
        metavar="DSN",
        help="a direct DSN to the same database for LISTEN, beside a pooler "
        f"(default: ${LISTEN_DSN_ENV}; none behind a pooler: poll)",
    )
    return [pooler, listen] if listen_dsn else [pooler]


def _read_replica_option() -> argparse.ArgumentParser:
    """``api --read-dsn``: the service's reads that may lag go to a streaming replica."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--read-dsn",
        metavar="DSN",
        help="a streaming replica for the dashboard, /metrics and GET endpoints; writes "
        f"and waits stay on the primary (default: ${READ_DSN_ENV}; none: all on --dsn)",
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--dsn",
        help="PostgreSQL DSN (default: $PGQUEUE_DSN, else the app's Queue(dsn=...), else embedded)",
    )
    common.add_argument(
        "--data-dir",
        type=Path,
        help="embedded PostgreSQL data directory (default: $PGQUEUE_DATA_DIR, else the app's "
        "Queue(data_dir=...), else a user dir)",
    )
    common.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    common.add_argument(
        "--log-format",
        default="auto",
        choices=["auto", "json", "console"],
        help="auto: JSON unless stderr is a terminal",
    )

    parser = argparse.ArgumentParser(prog="pgqueue", description=__doc__)
    parser.add_argument("--version", action="version", version=f"pgqueue {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    mig = sub.add_parser(
        "migrate",
        parents=[common, *_pooler_options(listen_dsn=False)],
        help="upgrade the pgqueue schema to head",
    )
    mig.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if the database is behind"
    )

    work = sub.add_parser(
        "worker", parents=[common, *_pooler_options(listen_dsn=True)], help="run a worker"
    )
    work.add_argument("app", metavar="APP", help="module:attribute of your pgqueue.Queue")
    work.add_argument(
        "--queue",
        dest="queues",
        action="append",
        metavar="NAME",
        help="queue to work (repeatable; default: every queue the app's tasks use)",
    )
    work.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"jobs in flight at once, of every kind (default: {DEFAULT_CONCURRENCY})",
    )
    work.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="plain functions and transactional tasks running at once: the thread pool "
        f"(default: {DEFAULT_THREADS}, or the concurrency if lower)",
    )
    work.add_argument(
        "--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE, help="jobs per claim"
    )
    work.add_argument(
        "--poll-interval", type=_positive_float, default=2.0, help="safety-net poll, seconds"
    )
    work.add_argument(
        "--grace-period",
        type=_non_negative_float,
        default=30.0,
        help="seconds running jobs get to finish after SIGTERM/SIGINT",
    )
    work.add_argument(
        "--lease",
        type=_positive_float,
        default=15.0,
        help="seconds without a heartbeat after which this worker's jobs are rescued",
    )
    work.add_argument(
        "--processes",
        type=_positive_int,
        default=None,
        help="size of the process pool for process=True tasks (default: min(threads, CPUs))",
    )
    defaults = Retention()
    for state in ("succeeded", "failed", "cancelled"):
        kept = getattr(defaults, state)
        work.add_argument(
            f"--keep-{state}",
            type=_duration,
            default=kept,
            metavar="DURATION",
            help=f"how long {state} jobs are kept before they are pruned: 7d, 12h, 90s or "
            f"'forever' (default: {kept.days}d)",
        )
    work.add_argument(
        "--prune-interval",
        type=_positive_float,
        default=60.0,
        help="seconds between this worker's pruning rounds",
    )
    work.add_argument(
        "--no-scheduler",
        dest="scheduler",
        action="store_false",
        help="do not run the scheduler of periodic jobs here (other workers do)",
    )

    api = sub.add_parser(
        "api",
        parents=[common, *_pooler_options(listen_dsn=True), _read_replica_option()],
        help="serve the HTTP API (API keys required)",
    )
    api.add_argument("--host", default="127.0.0.1", help="address to listen on")
    api.add_argument("--port", type=_port, default=8000)
    api.add_argument("--workers", type=_positive_int, default=1, help="server processes")
    api.add_argument(
        "--grace-period",
        type=_non_negative_float,
        default=30.0,
        help="seconds in-flight requests get to finish after SIGTERM/SIGINT",
    )

    dev = sub.add_parser(
        "dev", parents=[common], help="local use: migrate, the API without keys, and a worker"
    )
    dev.add_argument("app", metavar="APP", nargs="?", help="module:attribute of your Queue")
    dev.add_argument("--host", default="127.0.0.1", help="a loopback address")
    dev.add_argument("--port", type=_port, default=8000)
    dev.add_argument("--concurrency", type=_positive_int, default=DEFAULT_CONCURRENCY)

    psql = sub.add_parser(
        "psql",
        parents=[common],
        help="open psql on the database pgqueue uses (the embedded server too)",
        description="Run psql on the database every other command would use: --dsn, else "
        "$PGQUEUE_DSN, else the embedded server (started for the session if it is not "
        "running). Arguments after -- go to psql: pgqueue psql -- -c 'TABLE pgqueue.queue_stats'",
    )
    psql.add_argument("psql_args", nargs=argparse.REMAINDER, help="arguments for psql, after --")
    keys = sub.add_parser("keys", help="manage the HTTP API's keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser(
        "create", parents=[common], help="create a key and print it (shown only once)"
    )
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--scope", required=True, choices=["read", "enqueue", "admin"])
    keys_sub.add_parser("list", parents=[common], help="list keys (never the keys themselves)")
    revoke = keys_sub.add_parser("revoke", parents=[common], help="revoke a key by id")
    revoke.add_argument("id", type=_positive_int)
    schedules = sub.add_parser("schedules", help="list and operate the periodic schedules")
    schedules_sub = schedules.add_subparsers(dest="schedules_command", required=True)
    schedules_sub.add_parser(
        "list",
        parents=[common],
        help="one line per schedule, tab-separated: name, rule, time zone, paused, next "
        "tick, last tick, last job id, its state",
    )
    for action, what in (
        ("pause", "no job for its ticks until it is resumed"),
        ("resume", "resume it from its next tick"),
        ("trigger", "enqueue a job of it now and print the job's id"),
    ):
        one = schedules_sub.add_parser(action, parents=[common], help=what)
        one.add_argument("name", help="the schedule's name")
    return parser


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be a TCP port (1-65535), got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    json_logs = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(args.log_level, json=json_logs)
    log = structlog.get_logger("pgqueue.cli")
    signals = _Signals()
    signals.install()
    embedded: EmbeddedServer | None = None
    try:
        _apply_pooler_options(args)
        app = _checked_app(args)  # before any server is started: fail fast
        if args.command in _SERVICE_COMMANDS:
            extras.require("service", f"pgqueue {args.command}")
        # Not interrupted halfway (a half-initialised data directory): a signal that
        # comes meanwhile stops the command as soon as the server is up, and stops it.
        database = select_database(args.dsn, app, data_dir=args.data_dir)
        embedded = database.server
        log.info("database_selected", **describe_database(database))
        signals.check()
        return _run(args, app, database, signals)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"pgqueue: error: {exc}", file=sys.stderr)  # noqa: T201 - CLI output
        return EXIT_USAGE
    except extras.ExtraNotInstalledError as exc:
        return _not_installed(log, exc)
    except _Interrupted as stop:
        return _stopped(args, log, stop)
    except _FAILURES as exc:
        return _failed(log, exc)
    finally:
        if embedded is not None:
            embedded.stop()


def _stopped(args: argparse.Namespace, log: Any, stop: _Interrupted) -> int:
    if args.command == "worker":
        log.info("worker_stopped_before_start", signal=stop.name)
        return 0  # it held no job yet: a clean exit, not a death by signal
    if args.command in {"api", "dev"}:
        log.info("stopped_before_start", command=args.command, signal=stop.name)
        return 0
    log.warning("interrupted", command=_command_name(args), signal=stop.name)
    return 128 + stop.signum


def _not_installed(log: Any, exc: extras.ExtraNotInstalledError) -> int:
    """One line saying what to install: no database at all (exit 3, as an unavailable
    one), or a command's extra (exit 2: the command cannot run as installed)."""
    if isinstance(exc, extras.NoDatabaseError):
        log.error("no_database", error=_NO_DATABASE)
        return EXIT_UNAVAILABLE
    log.error("extra_not_installed", extra=exc.extra, error=str(exc))
    return EXIT_USAGE


def _failed(log: Any, exc: BaseException) -> int:
    """One line for a failure that reached the top, and its exit status."""
    if isinstance(exc, migrate.CannotConnectError):
        log.error("database_unavailable", error=str(exc))
        return EXIT_UNAVAILABLE
    if isinstance(exc, migrate.MigrationError):
        log.error("migration_failed", error=str(exc))
        return EXIT_FAILURE
    if isinstance(exc, EmbeddedServerError):
        log.error("embedded_postgres_failed", error=str(exc))
        return EXIT_FAILURE
    error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    if isinstance(exc, SchemaNotReadyError):
        log.error("database_behind", error=error, hint="run `pgqueue migrate` first")
        return EXIT_FAILURE
    if isinstance(exc, DatabaseUnavailableError) or connection_failed(exc) or refused_for_good(exc):
        log.error("database_unavailable", error=error)
        return EXIT_UNAVAILABLE
    log.error("command_failed", error=error)
    return EXIT_FAILURE


def _command_name(args: argparse.Namespace) -> str:
    if args.command == "keys":
        return f"keys {args.keys_command}"
    if args.command == "schedules":
        return f"schedules {args.schedules_command}"
    return str(args.command)


class _Interrupted(BaseException):
    """SIGTERM/SIGINT: stop the command. A BaseException, as KeyboardInterrupt, so that
    no ``except Exception`` on its way up takes it for a failure."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


class _Signals:
    """SIGTERM/SIGINT until an event loop (the worker's, uvicorn's) takes them over.

    A signal is noted. While the main thread waits in :meth:`call` it is raised there
    as :class:`_Interrupted` at once; elsewhere it is raised by the next :meth:`check`
    or :meth:`call`. Raised from the handler only during that wait: an exception raised
    from a signal handler surfaces inside whatever library call was running (SQLAlchemy
    wraps it), the wait is ours."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._waiting = False

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._note)

    def _note(self, signum: int, _frame: object) -> None:
        self.signum = signum
        if self._waiting:
            self._waiting = False
            raise _Interrupted(signum)

    def check(self) -> None:
        if self.signum is not None:
            raise _Interrupted(self.signum)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in a daemon thread, the main thread waiting for it:
        a signal ends the wait at once, whatever ``fn`` is blocked in (a server that
        never answers). The thread dies with the process; a transaction it had open is
        rolled back by the server when its connection goes."""
        self.check()
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def run() -> None:
            try:
                outcome["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the main thread
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=run, name="pgqueue-cli", daemon=True).start()
        self._waiting = True
        try:
            done.wait()
        finally:
            self._waiting = False
        if "error" in outcome:
            raise outcome["error"]
        value: T = outcome["value"]
        return value


def _apply_pooler_options(args: argparse.Namespace) -> None:
    """``--pooler`` and ``--listen-dsn`` become the environment variables they stand
    for: every connection of this process reads them (pgqueue.connect), and so do the
    API's server processes, which are fresh interpreters."""
    if getattr(args, "pooler", None):
        os.environ[POOLER_ENV] = "1"
    if getattr(args, "listen_dsn", None):
        os.environ[LISTEN_DSN_ENV] = args.listen_dsn
    try:
        behind_pooler("")  # a bad PGQUEUE_POOLER is a usage error, said once, here
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _checked_app(args: argparse.Namespace) -> Queue | None:
    """The user's Queue for the commands that take APP, after the checks that need no
    database."""
    if args.command == "dev" and not is_loopback(args.host):
        raise UsageError(f"pgqueue dev runs without API keys: loopback only, not {args.host}")
    if args.command in {"worker", "dev"} and args.app is not None:
        return load_app(args.app)
    return None


def select_database(
    dsn: str | None, app: Queue | None, *, data_dir: Path | None = None
) -> Database:
    """The database a command uses: ``dsn`` (``--dsn``), else ``$PGQUEUE_DSN``, else
    the app's own ``Queue(dsn=...)``, else the embedded server, started here on
    ``data_dir``, else ``$PGQUEUE_DATA_DIR``, else the app's ``Queue(data_dir=...)``,
    else the default. Without the ``embedded`` extra, that last step raises
    :class:`pgqueue.extras.NoDatabaseError`."""
    if dsn:
        return Database(dsn, "flag")
    from_env = os.environ.get(DSN_ENV)
    if from_env:
        return Database(from_env, "env")
    if app is not None and app.configured_dsn:
        # The database the app enqueues into: an embedded one would never see its jobs.
        return Database(app.configured_dsn, "app")
    if extras.missing("embedded"):
        raise extras.NoDatabaseError(_NO_DATABASE)
    if data_dir is None and app is not None and not os.environ.get(DATA_DIR_ENV):
        data_dir = app.configured_data_dir
    server = EmbeddedServer.start(data_dir)
    return Database(server.dsn("postgres"), "embedded", server)


def describe_database(database: Database) -> dict[str, Any]:
    """What a log line may say about ``database``: where its DSN came from, host, port,
    database and user as libpq would resolve them (the ``PG*`` variables filling what the
    DSN leaves out), and whether it is the embedded server. Never the password."""
    fields: dict[str, Any] = {"source": database.source, "embedded": database.server is not None}
    try:
        params = conninfo_to_dict(database.dsn)
    except psycopg.ProgrammingError:
        # Said in full by the first connection attempt (its message has no password).
        return {**fields, "dsn_invalid": True}
    defaults = {
        opt.keyword.decode(): opt.val.decode() if opt.val is not None else None
        for opt in pq.Conninfo.get_defaults()
    }

    def resolved(key: str) -> str | None:
        value = params.get(key)
        return str(value) if value not in {None, ""} else defaults.get(key)

    user = resolved("user")
    fields.update(
        # No host: libpq's default, the local unix socket directory.
        host=resolved("host") or "default unix socket",
        port=resolved("port") or "5432",
        database=resolved("dbname") or user,
        user=user,
    )
    if resolved("hostaddr"):
        fields["hostaddr"] = resolved("hostaddr")
    if database.server is not None:
        fields["data_dir"] = str(database.server.data_dir)
    return fields


def _run(args: argparse.Namespace, app: Queue | None, database: Database, signals: _Signals) -> int:
    dsn = database.dsn
    if args.command == "migrate":
        return _migrate(dsn, signals, check=args.check)
    if args.command in _ADMIN_COMMANDS:  # keys, schedules
        return _ADMIN_COMMANDS[args.command](dsn, args, signals)
    if args.command == "api":
        return _api(dsn, args, signals)
    if args.command == "dev":
        return _dev(app, dsn, args, signals)
    if args.command == "psql":
        return _psql(dsn, args.psql_args, embedded=database.server is not None)
    assert app is not None  # noqa: S101 - the worker's parser requires APP
    return _worker(app, dsn, args, signals)


def _psql(dsn: str, psql_args: list[str], *, embedded: bool) -> int:
    """psql on ``dsn``; its exit status. The embedded server's own psql (the same
    version) when that is the server, else the psql on PATH, else the bundled one."""
    if not embedded and shutil.which("psql"):
        program = "psql"
    else:
        try:
            program = str(bundled_bin_dir() / "psql")
        except extras.ExtraNotInstalledError:
            program = ""
        if not Path(program).is_file():
            raise UsageError(
                "no psql found: install PostgreSQL's client (psql), or "
                f"{extras.install_hint('embedded')} for the bundled one"
            )
    args = psql_args[1:] if psql_args[:1] == ["--"] else psql_args
    # Ctrl-C belongs to psql (it cancels the query and goes on), not to this process.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return subprocess.call([program, "--dbname", dsn, *args])  # noqa: S603 - psql, by design
    finally:
        signal.signal(signal.SIGINT, previous)


def _migrate(dsn: str, signals: _Signals, *, check: bool) -> int:
    log = structlog.get_logger("pgqueue.cli")
    if check:
        current, head = signals.call(migrate.current_revision, dsn), migrate.head_revision()
        if migrate.is_ahead(current):
            log.info("database_ahead", current=current, head=head)
            return 0
        if current != head:
            log.error("database_behind", current=current, head=head)
            return EXIT_FAILURE
        log.info("database_up_to_date", revision=head)
        return 0
    signals.call(migrate.upgrade, dsn)
    log.info("database_migrated", revision=migrate.head_revision())
    return 0


def _keys(dsn: str, args: argparse.Namespace, signals: _Signals) -> int:
    # The library's Admin API, on one connection: no service extra needed.
    if not _schema_ready(dsn, signals):
        return EXIT_FAILURE
    log = structlog.get_logger("pgqueue.cli")
    if args.keys_command == "create":
        try:
            validate_api_key_request(args.name, args.scope)  # before connecting
        except InvalidApiKeyError as exc:
            raise UsageError(f"--name: {exc}") from exc
        key_id, key = signals.call(
            _on_admin,
            dsn,
            lambda admin, conn: admin.create_api_key_sync(args.name, args.scope, conn=conn),
        )
        log.info("api_key_created", key_id=key_id, name=args.name, scope=args.scope)
        print(key)  # noqa: T201 - the one time the key is shown: stdout, for scripts
        return 0
    if args.keys_command == "list":
        keys = signals.call(_on_admin, dsn, lambda admin, conn: admin.list_api_keys_sync(conn=conn))
        for row in keys:
            print("\t".join("" if v is None else str(v) for v in row))  # noqa: T201
        return 0
    revoked = signals.call(
        _on_admin, dsn, lambda admin, conn: admin.revoke_api_key_sync(args.id, conn=conn)
    )
    if not revoked:
        raise UsageError(f"there is no live key with id {args.id}")
    log.info("api_key_revoked", key_id=args.id)
    return 0


def _schedules(dsn: str, args: argparse.Namespace, signals: _Signals) -> int:
    """``pgqueue schedules list|pause|resume|trigger``, through the Admin API."""
    command = args.schedules_command
    name = None
    if command != "list":
        try:
            name = validate_schedule_name(args.name)  # before connecting
        except InvalidScheduleError as exc:
            raise UsageError(str(exc)) from exc
    if not _schema_ready(dsn, signals):
        return EXIT_FAILURE
    if name is None:
        schedules = signals.call(
            _on_admin, dsn, lambda admin, conn: admin.list_schedules_sync(conn=conn)
        )
        for s in schedules:
            rule = s.cron if s.every is None else f"every {s.every.total_seconds():g}s"
            fields = [s.name, rule, s.timezone, s.paused, s.next_run_at, s.last_tick]
            fields += [s.last_job_id, s.last_job_state]
            print("\t".join("" if v is None else str(v) for v in fields))  # noqa: T201
        return 0
    calls: dict[str, Callable[[Admin, psycopg.Connection[Any]], Any]] = {
        "pause": lambda admin, conn: admin.pause_schedule_sync(name, conn=conn),
        "resume": lambda admin, conn: admin.resume_schedule_sync(name, conn=conn),
        "trigger": lambda admin, conn: admin.trigger_schedule_sync(name, conn=conn),
    }
    try:
        done = signals.call(_on_admin, dsn, calls[command])
    except ScheduleNotFoundError as exc:
        raise UsageError(str(exc)) from exc
    log = structlog.get_logger("pgqueue.cli")
    if command == "trigger":
        log.info("schedule_triggered", schedule=name, job_id=done.id)
        print(done.id)  # noqa: T201 - the new job's id: stdout, for scripts
    else:
        log.info("schedule_paused" if command == "pause" else "schedule_resumed", schedule=name)
    return 0


_ADMIN_COMMANDS: dict[str, Callable[[str, argparse.Namespace, _Signals], int]] = {
    "keys": _keys,
    "schedules": _schedules,
}


def _on_admin(dsn: str, call: Callable[[Admin, psycopg.Connection[Any]], T]) -> T:
    """``call`` with an Admin and one connection of its own (a command makes one call:
    no pool to start and stop)."""
    with psycopg.connect(dsn, autocommit=True, **psycopg_connect_args(dsn)) as conn:
        return call(Admin(Queue(dsn)), conn)


def _api(dsn: str, args: argparse.Namespace, signals: _Signals) -> int:
    from pgqueue.serve import run_api  # noqa: PLC0415 - uvicorn and litestar load only here

    if not _schema_ready(dsn, signals):
        return EXIT_FAILURE
    read_dsn = args.read_dsn or os.environ.get(READ_DSN_ENV) or None
    if read_dsn is not None:
        source: Source = "flag" if args.read_dsn else "env"
        structlog.get_logger("pgqueue.cli").info(
            "read_replica_selected", **describe_database(Database(read_dsn, source))
        )
    run_api(
        dsn,
        read_dsn=read_dsn,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        log_format=args.log_format,
        grace_period=args.grace_period,
    )
    return 0


def _dev(app: Queue | None, dsn: str, args: argparse.Namespace, signals: _Signals) -> int:
    from pgqueue.serve import run_dev  # noqa: PLC0415 - uvicorn and litestar load only here

    signals.call(migrate.upgrade, dsn)
    signals.check()
    asyncio.run(
        run_dev(
            app,
            dsn,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            concurrency=args.concurrency,
        )
    )
    return 0


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _schema_ready(dsn: str, signals: _Signals, *, wait: bool = False) -> bool:
    """Whether the database's pgqueue schema is at head (a command on an older one
    would fail on every statement); says so when it is not. A database that cannot be
    reached raises :class:`migrate.CannotConnectError`, unless ``wait``: then the
    check is left to the caller, who waits for the database."""
    log = structlog.get_logger("pgqueue.cli")
    try:
        current = signals.call(migrate.current_revision, dsn)
    except migrate.CannotConnectError as exc:
        if not wait:
            raise
        # The worker's own connection attempt, right after, says whether a refusal
        # lasts (an unknown database: exit 3) or not (a server starting up: it waits).
        if not exc.server_refused:
            log.warning("database_unreachable", error=str(exc), hint="the worker waits for it")
        return True
    if migrate.is_ahead(current):
        # A later release migrated it (a rolling deploy): its schema keeps this release
        # working, so this process runs (restarted after the migration, it comes back).
        log.warning(
            "database_ahead",
            current=current,
            head=migrate.head_revision(),
            hint="a later release migrated this database; upgrade this process",
        )
        return True
    if current != migrate.head_revision():
        log.error(
            "database_behind",
            current=current,
            head=migrate.head_revision(),
            hint="run `pgqueue migrate` first",
        )
        return False
    return True


def _worker(app: Queue, dsn: str, args: argparse.Namespace, signals: _Signals) -> int:
    if not _schema_ready(dsn, signals, wait=True):
        return EXIT_FAILURE
    try:
        worker = Worker(
            app,
            dsn=dsn,
            queues=args.queues,
            concurrency=args.concurrency,
            threads=args.threads,
            batch_size=args.batch_size,
            poll_interval=args.poll_interval,
            grace_period=args.grace_period,
            lease=args.lease,
            processes=args.processes,
            retention=Retention(
                succeeded=args.keep_succeeded,
                failed=args.keep_failed,
                cancelled=args.keep_cancelled,
            ),
            prune_interval=args.prune_interval,
            scheduler=args.scheduler,
        )
    except ValueError as exc:  # an invalid --queue name
        raise UsageError(str(exc)) from exc

    async def work() -> None:
        worker.install_signal_handlers()
        signals.check()  # one that came before the loop's handlers were in place
        await worker.run()

    asyncio.run(work())
    if worker.heartbeat is None:  # stopped while it waited for the database
        structlog.get_logger("pgqueue.cli").info("worker_stopped_before_start")
    if worker.abandoned_threads:
        # A sync task outlived the grace period; its thread cannot be stopped, and the
        # interpreter would wait for it at exit. Its job was already handed back.
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
