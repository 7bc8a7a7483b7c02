"""What each ``pgqueue`` command does once its database is chosen: ``migrate``,
``psql``, ``keys``, ``schedules``, ``api``, ``dev`` and ``worker``."""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import structlog

from pgqueue import extras, migrate
from pgqueue.admin import Admin, InvalidApiKeyError, validate_api_key_request
from pgqueue.app import Queue
from pgqueue.cli.database import Database, Source, describe_database
from pgqueue.cli.errors import EXIT_FAILURE, UsageError
from pgqueue.cli.options import READ_DSN_ENV
from pgqueue.connect import psycopg_connect_args
from pgqueue.embedded import bundled_bin_dir
from pgqueue.errors import ScheduleNotFoundError
from pgqueue.retention import Retention
from pgqueue.scheduling.specs import validate_schedule_name
from pgqueue.scheduling.ticks import InvalidScheduleError
from pgqueue.worker import Worker

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable

    from pgqueue.cli.signals import Signals, T


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


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def cmd_psql(dsn: str, psql_args: list[str], *, embedded: bool) -> int:
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


def cmd_migrate(dsn: str, signals: Signals, *, check: bool) -> int:
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


def cmd_keys(dsn: str, args: argparse.Namespace, signals: Signals) -> int:
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


def cmd_schedules(dsn: str, args: argparse.Namespace, signals: Signals) -> int:
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


ADMIN_COMMANDS: dict[str, Callable[[str, argparse.Namespace, Signals], int]] = {
    "keys": cmd_keys,
    "schedules": cmd_schedules,
}


def _on_admin(dsn: str, call: Callable[[Admin, psycopg.Connection[Any]], T]) -> T:
    """``call`` with an Admin and one connection of its own (a command makes one call:
    no pool to start and stop)."""
    with psycopg.connect(dsn, autocommit=True, **psycopg_connect_args(dsn)) as conn:
        return call(Admin(Queue(dsn)), conn)


def cmd_api(dsn: str, args: argparse.Namespace, signals: Signals) -> int:
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


def cmd_dev(app: Queue | None, dsn: str, args: argparse.Namespace, signals: Signals) -> int:
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


def _schema_ready(dsn: str, signals: Signals, *, wait: bool = False) -> bool:
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


def cmd_worker(app: Queue, dsn: str, args: argparse.Namespace, signals: Signals) -> int:
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
