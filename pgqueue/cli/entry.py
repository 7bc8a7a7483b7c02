"""``pgqueue``'s entry point (:func:`main`): parse the arguments, choose the database,
run the command, and turn a failure into one line and an exit status."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import structlog

from pgqueue import extras
from pgqueue.cli.commands import (
    ADMIN_COMMANDS,
    cmd_api,
    cmd_dev,
    cmd_migrate,
    cmd_psql,
    cmd_worker,
    is_loopback,
    load_app,
)
from pgqueue.cli.database import describe_database, select_database
from pgqueue.cli.errors import EXIT_USAGE, FAILURES, UsageError, failed, not_installed
from pgqueue.cli.options import build_parser
from pgqueue.cli.signals import Interrupted, Signals
from pgqueue.connect import LISTEN_DSN_ENV, POOLER_ENV, behind_pooler
from pgqueue.logs import configure_logging

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from pgqueue.app import Queue
    from pgqueue.cli.database import Database
    from pgqueue.embedded import EmbeddedServer

# The commands that serve the HTTP service: the `service` extra's.
_SERVICE_COMMANDS = frozenset({"api", "dev"})


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    json_logs = {"auto": None, "json": True, "console": False}[args.log_format]
    configure_logging(args.log_level, json=json_logs)
    log = structlog.get_logger("pgqueue.cli")
    signals = Signals()
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
        return not_installed(log, exc)
    except Interrupted as stop:
        return _stopped(args, log, stop)
    except FAILURES as exc:
        return failed(log, exc)
    finally:
        if embedded is not None:
            embedded.stop()


def _stopped(args: argparse.Namespace, log: Any, stop: Interrupted) -> int:
    if args.command == "worker":
        log.info("worker_stopped_before_start", signal=stop.name)
        return 0  # it held no job yet: a clean exit, not a death by signal
    if args.command in {"api", "dev"}:
        log.info("stopped_before_start", command=args.command, signal=stop.name)
        return 0
    log.warning("interrupted", command=_command_name(args), signal=stop.name)
    return 128 + stop.signum


def _command_name(args: argparse.Namespace) -> str:
    if args.command == "keys":
        return f"keys {args.keys_command}"
    if args.command == "schedules":
        return f"schedules {args.schedules_command}"
    return str(args.command)


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


def _run(args: argparse.Namespace, app: Queue | None, database: Database, signals: Signals) -> int:
    dsn = database.dsn
    if args.command == "migrate":
        return cmd_migrate(dsn, signals, check=args.check)
    if args.command in ADMIN_COMMANDS:  # keys, schedules
        return ADMIN_COMMANDS[args.command](dsn, args, signals)
    if args.command == "api":
        return cmd_api(dsn, args, signals)
    if args.command == "dev":
        return cmd_dev(app, dsn, args, signals)
    if args.command == "psql":
        return cmd_psql(dsn, args.psql_args, embedded=database.server is not None)
    assert app is not None  # noqa: S101 - the worker's parser requires APP
    return cmd_worker(app, dsn, args, signals)
