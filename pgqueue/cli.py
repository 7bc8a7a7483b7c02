"""The ``pgqueue`` command: migrate the database, run a worker, serve the HTTP API
(``api``; ``dev`` for local use, without keys), manage API keys.

Every command takes ``--dsn``; without it ``PGQUEUE_DSN`` is used, and without that an
embedded PostgreSQL in ``--data-dir`` is started (or reused) and stopped at the end.
Usage errors exit with status 2 and a message; ``migrate --check`` exits 1 when the
database is behind.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ipaddress
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from pgqueue import migrate
from pgqueue.app import Queue
from pgqueue.embedded import EmbeddedServer, resolve_dsn
from pgqueue.logs import configure_logging
from pgqueue.retention import Retention, parse_duration
from pgqueue.worker import Worker

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import timedelta

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: exit 2 with this message."""


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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dsn", help="PostgreSQL DSN (default: $PGQUEUE_DSN, else embedded)")
    common.add_argument(
        "--data-dir",
        type=Path,
        help="embedded PostgreSQL data directory (default: $PGQUEUE_DATA_DIR or a user dir)",
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
    sub = parser.add_subparsers(dest="command", required=True)

    mig = sub.add_parser("migrate", parents=[common], help="upgrade the pgqueue schema to head")
    mig.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if the database is behind"
    )

    work = sub.add_parser("worker", parents=[common], help="run a worker")
    work.add_argument("app", metavar="APP", help="module:attribute of your pgqueue.Queue")
    work.add_argument(
        "--queue",
        dest="queues",
        action="append",
        metavar="NAME",
        help="queue to work (repeatable; default: every queue the app's tasks use)",
    )
    work.add_argument("--concurrency", type=_positive_int, default=10, help="jobs in flight")
    work.add_argument("--batch-size", type=_positive_int, default=100, help="jobs per claim")
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
        help="size of the process pool for process=True tasks (default: min(concurrency, CPUs))",
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

    api = sub.add_parser("api", parents=[common], help="serve the HTTP API (API keys required)")
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
    dev.add_argument("--concurrency", type=_positive_int, default=10)

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
    embedded: EmbeddedServer | None = None
    try:
        app = _checked_app(args)  # before any server is started: fail fast
        dsn, embedded = resolve_dsn(args.dsn, data_dir=args.data_dir)
        return _run(args, app, dsn)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"pgqueue: error: {exc}", file=sys.stderr)  # noqa: T201 - CLI output
        return EXIT_USAGE
    except migrate.MigrationError as exc:
        log.error("migration_failed", error=str(exc))  # noqa: TRY400 - message says it all
        return 1
    finally:
        if embedded is not None:
            embedded.stop()


def _checked_app(args: argparse.Namespace) -> Queue | None:
    """The user's Queue for the commands that take APP, after the checks that need no
    database."""
    if args.command == "dev" and not is_loopback(args.host):
        raise UsageError(f"pgqueue dev runs without API keys: loopback only, not {args.host}")
    if args.command in {"worker", "dev"} and args.app is not None:
        return load_app(args.app)
    return None


def _run(args: argparse.Namespace, app: Queue | None, dsn: str) -> int:
    if args.command == "migrate":
        return _migrate(dsn, check=args.check)
    if args.command == "keys":
        return _keys(dsn, args)
    if args.command == "api":
        return _api(dsn, args)
    if args.command == "dev":
        return _dev(app, dsn, args)
    assert app is not None  # noqa: S101 - the worker's parser requires APP
    return _worker(app, dsn, args)


def _migrate(dsn: str, *, check: bool) -> int:
    log = structlog.get_logger("pgqueue.cli")
    if check:
        current, head = migrate.current_revision(dsn), migrate.head_revision()
        if current != head:
            log.error("database_behind", current=current, head=head)
            return 1
        log.info("database_up_to_date", revision=head)
        return 0
    migrate.upgrade(dsn)
    log.info("database_migrated", revision=migrate.head_revision())
    return 0


def _keys(dsn: str, args: argparse.Namespace) -> int:
    from pgqueue.service import auth  # noqa: PLC0415 - only this command needs the service

    if not _schema_ready(dsn):
        return 1
    if args.keys_command == "create":
        key_id, key = auth.create_key(dsn, name=args.name, scope=args.scope)
        structlog.get_logger("pgqueue.cli").info(
            "api_key_created", key_id=key_id, name=args.name, scope=args.scope
        )
        print(key)  # noqa: T201 - the one time the key is shown: stdout, for scripts
        return 0
    if args.keys_command == "list":
        for row in auth.list_keys(dsn):
            print("\t".join("" if v is None else str(v) for v in row))  # noqa: T201
        return 0
    if not auth.revoke_key(dsn, args.id):
        raise UsageError(f"there is no live key with id {args.id}")
    structlog.get_logger("pgqueue.cli").info("api_key_revoked", key_id=args.id)
    return 0


def _api(dsn: str, args: argparse.Namespace) -> int:
    from pgqueue.serve import run_api  # noqa: PLC0415 - uvicorn and litestar load only here

    if not _schema_ready(dsn):
        return 1
    run_api(
        dsn,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        log_format=args.log_format,
        grace_period=args.grace_period,
    )
    return 0


def _dev(app: Queue | None, dsn: str, args: argparse.Namespace) -> int:
    from pgqueue.serve import run_dev  # noqa: PLC0415 - uvicorn and litestar load only here

    migrate.upgrade(dsn)
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


def _schema_ready(dsn: str) -> bool:
    """A worker on a database without the schema would fail on every claim: say so."""
    log = structlog.get_logger("pgqueue.cli")
    try:
        current = migrate.current_revision(dsn)
    except migrate.MigrationError:
        return True  # not reachable yet: the worker waits for it and says so
    if current != migrate.head_revision():
        log.error(
            "database_behind",
            current=current,
            head=migrate.head_revision(),
            hint="run `pgqueue migrate` first",
        )
        return False
    return True


class _EarlyStop:
    """A stop asked for before the worker's loop takes the signals over. Noted, not
    raised: an exception raised from a signal handler would surface inside whatever
    library call was running (SQLAlchemy wraps it), instead of reaching us."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def note(self, signum: int, _frame: object) -> None:
        self.signal = signal.Signals(signum).name

    def stopped(self) -> bool:
        if self.signal is None:
            return False
        # It holds no job yet: a clean exit, not a death by signal.
        structlog.get_logger("pgqueue.cli").info("worker_stopped_before_start", signal=self.signal)
        return True


def _worker(app: Queue, dsn: str, args: argparse.Namespace) -> int:
    early = _EarlyStop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, early.note)
    if not _schema_ready(dsn):
        return 1
    if early.stopped():
        return 0
    try:
        worker = Worker(
            app,
            dsn=dsn,
            queues=args.queues,
            concurrency=args.concurrency,
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
        )
    except ValueError as exc:  # an invalid --queue name
        raise UsageError(str(exc)) from exc

    async def work() -> None:
        worker.install_signal_handlers()
        if early.stopped():  # it came before the loop's handlers were in place
            return
        await worker.run()

    asyncio.run(work())
    if worker.abandoned_threads:
        # A sync task outlived the grace period; its thread cannot be stopped, and the
        # interpreter would wait for it at exit. Its job was already handed back.
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
