"""The ``pgqueue`` command's arguments (:func:`build_parser`) and its description, which
``pgqueue --help`` prints (:data:`DESCRIPTION`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from pgqueue._version import __version__
from pgqueue.connect import LISTEN_DSN_ENV, POOLER_ENV
from pgqueue.retention import Retention, parse_duration
from pgqueue.worker.core import DEFAULT_BATCH_SIZE, DEFAULT_CONCURRENCY, DEFAULT_THREADS

if TYPE_CHECKING:
    from datetime import timedelta

DESCRIPTION = """The ``pgqueue`` command: migrate the database, run a worker, serve the HTTP API
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

# The API's read replica (pgqueue.service.settings.READ_DSN_ENV; not imported from
# there: the service's modules load only for the commands that serve it).
READ_DSN_ENV = "PGQUEUE_READ_DSN"


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


def _port(text: str) -> int:
    value = int(text)
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"must be a TCP port (1-65535), got {value}")
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

    parser = argparse.ArgumentParser(prog="pgqueue", description=DESCRIPTION)
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
