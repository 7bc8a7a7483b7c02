"""``manage.py pgqueue_worker``: a pgqueue worker for the Django tasks of a ``TASKS``
backend, on the backend's database (``OPTIONS["DSN"]``, else its ``DATABASES`` entry).

It is ``pgqueue worker`` itself (:func:`pgqueue.cli.main`) on the app
``pgqueue.contrib.django.runner:queue``: the same logs, schema check, exit statuses and
shutdown (SIGTERM or SIGINT: stop claiming, let running tasks finish within
``--grace-period``, exit 0).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError
from django.db import connections

from pgqueue import cli
from pgqueue.contrib.django import compat
from pgqueue.contrib.django.backend import PgQueueBackend

WORKER_APP = "pgqueue.contrib.django.runner:queue"


class Command(BaseCommand):  # type: ignore[misc]
    help = "Run a pgqueue worker that executes the Django tasks of a pgqueue TASKS backend."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--backend", default="default", help="the TASKS alias (default: default)"
        )
        parser.add_argument(
            "--queues",
            action="append",
            metavar="NAME[,NAME...]",
            help="queues to work, comma-separated or repeated (default: the backend's QUEUES)",
        )
        parser.add_argument("--concurrency", type=int, help="jobs in flight at once")
        parser.add_argument(
            "--threads", type=int, help="tasks running at once, each in a thread (default 10)"
        )
        parser.add_argument(
            "--grace-period",
            type=float,
            help="seconds running tasks get to finish after SIGTERM (default 30)",
        )
        parser.add_argument("--lease", type=float, help="pgqueue worker lease, seconds")
        parser.add_argument(
            "--log-level", choices=["debug", "info", "warning", "error"], default="info"
        )
        parser.add_argument("--log-format", choices=["auto", "json", "console"], default="auto")

    def handle(self, *args: Any, **options: Any) -> None:  # noqa: ARG002 - Django's signature
        alias = options["backend"]
        try:
            backend = compat.task_backends()[alias]
        except Exception as exc:
            raise CommandError(f"no TASKS backend {alias!r}: {exc}") from exc
        if not isinstance(backend, PgQueueBackend):
            raise CommandError(f"TASKS[{alias!r}] is not pgqueue.contrib.django.PgQueueBackend")
        queues = [name for item in options["queues"] or [] for name in item.split(",") if name]
        queues = queues or sorted(backend.queues)
        if not queues:
            raise CommandError(
                f"TASKS[{alias!r}] allows any queue (QUEUES is empty): name the queues "
                "to work with --queues"
            )
        argv = ["worker", WORKER_APP, "--dsn", backend.dsn]
        for name in queues:
            argv += ["--queue", name]
        for flag in ("concurrency", "threads", "grace_period", "lease"):
            if options[flag] is not None:
                argv += [f"--{flag.replace('_', '-')}", str(options[flag])]
        argv += ["--log-level", options["log_level"], "--log-format", options["log_format"]]
        # The worker's threads open connections of their own; this one is not used again.
        connections.close_all()
        status = cli.main(argv)
        if status:
            raise SystemExit(status)
