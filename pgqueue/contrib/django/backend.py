"""The ``django.tasks`` backend: jobs written on Django's own database connection.

::

    TASKS = {
        "default": {
            "BACKEND": "pgqueue.contrib.django.PgQueueBackend",
            "QUEUES": ["default", "emails"],      # pgqueue queues; [] allows any name
            "OPTIONS": {"DATABASE": "default", "MAX_ATTEMPTS": 1},
        }
    }

``enqueue`` writes the job with Django's connection of the ``DATABASE`` alias, in
whatever transaction it has open: inside ``transaction.atomic()`` the job commits or
rolls back with the block (and the wake-up NOTIFY goes out only on commit), so no
``transaction.on_commit`` is needed; outside one (autocommit) it is committed at once.
``get_result`` reads the job on that same connection. The web process never opens a
pgqueue connection of its own.

A Django task maps onto a job of the one pgqueue task ``django.tasks``
(:mod:`pgqueue.contrib.django.runner`): ``queue_name`` is the pgqueue queue, ``priority``
(Django's -100..100, higher first) the job's priority as it is (pgqueue's range holds it,
and orders the same way), ``run_after`` its ``run_at``. Arguments must be JSON; anything
else raises :class:`pgqueue.InvalidJobError` before anything is written. The result id is
the job id, as a string.

OPTIONS:

- ``DATABASE``: the ``DATABASES`` alias (default ``"default"``): PostgreSQL on psycopg 3.
- ``MAX_ATTEMPTS``: how many times a failing task is tried (default 1, Django's own
  semantics: a task that raises is FAILED). Above 1, it is retried with pgqueue's backoff
  and reads READY in between, its ``errors`` growing; ``pgqueue.PermanentError`` stops
  the retries. With 1, a job whose worker dies while running it fails as well.
- ``DSN``: the DSN ``manage.py pgqueue_worker`` and ``pgqueue_migrate`` use, when they
  must reach the same database differently from Django (another host, no pooler);
  default: built from the ``DATABASES`` entry. ``manage.py migrate`` always uses the
  database it migrates (a test database under ``manage.py test``).
"""

from __future__ import annotations

from typing import Any

from pgqueue.checks import validate_job_id, validate_queue_name
from pgqueue.contrib.django import compat
from pgqueue.contrib.django.dsn import dsn_from_settings
from pgqueue.contrib.django.results import result_from_job
from pgqueue.contrib.django.runner import TASK_NAME, queue
from pgqueue.errors import InvalidJobError
from pgqueue.limits import MAX_ATTEMPTS_LIMIT

__all__ = ["PgQueueBackend"]


class PgQueueBackend(compat.BaseTaskBackend):  # type: ignore[misc]
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.database: str = self.options.get("DATABASE", "default")
        self.max_attempts: int = self.options.get("MAX_ATTEMPTS", 1)
        if not (
            isinstance(self.max_attempts, int) and 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT
        ):
            raise compat.InvalidTaskBackend(
                f"TASKS[{alias!r}] OPTIONS MAX_ATTEMPTS must be 1 to {MAX_ATTEMPTS_LIMIT}"
            )

    @property
    def dsn(self) -> str:
        """The DSN of the backend's database, for the worker and ``pgqueue_migrate``."""
        from django.db import connections  # noqa: PLC0415

        explicit: str | None = self.options.get("DSN")
        return explicit or dsn_from_settings(connections[self.database].settings_dict)

    def validate_task(self, task: Any) -> None:
        super().validate_task(task)
        try:
            validate_queue_name(task.queue_name)
        except InvalidJobError as exc:
            raise compat.InvalidTask(str(exc)) from exc

    def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
        """Write the job in the current transaction of Django's connection."""
        from django.utils import timezone  # noqa: PLC0415

        self.validate_task(task)
        run_at = task.run_after
        if run_at is not None and timezone.is_naive(run_at):  # USE_TZ = False
            run_at = timezone.make_aware(run_at)
        enqueued = queue.enqueue_sync(
            TASK_NAME,
            {
                "task": task.module_path,
                "args": list(args),
                "kwargs": dict(kwargs),
                "backend": self.alias,
            },
            conn=self._connection(),
            queue=task.queue_name,
            priority=task.priority,
            run_at=run_at,
            max_attempts=self.max_attempts,
        )
        result = compat.TaskResult(
            task=task,
            id=str(enqueued.id),
            status=compat.TaskResultStatus.READY,
            enqueued_at=timezone.now(),
            started_at=None,
            finished_at=None,
            last_attempted_at=None,
            args=list(args),
            kwargs=dict(kwargs),
            backend=self.alias,
            errors=[],
            worker_ids=[],
        )
        if compat.task_enqueued is not None:
            compat.task_enqueued.send(sender=type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> Any:
        """The job ``result_id`` as a ``TaskResult`` (see :mod:`.results`);
        ``TaskResultDoesNotExist`` for an id that is no job of a Django task."""
        try:
            job_id = validate_job_id(int(result_id))
        except (TypeError, ValueError) as exc:
            raise compat.TaskResultDoesNotExist(result_id) from exc
        job = queue.get_job_sync(job_id, conn=self._connection())
        if job is None or job.task != TASK_NAME:
            raise compat.TaskResultDoesNotExist(result_id)
        return result_from_job(job, self.alias)

    def check(self, **kwargs: Any) -> list[Any]:
        """System checks: a PostgreSQL database on psycopg 3, valid queue names."""
        from django.core import checks  # noqa: PLC0415
        from django.db import connections  # noqa: PLC0415

        errors = list(super().check(**kwargs))
        engine = connections[self.database].settings_dict.get("ENGINE", "")
        if "postgresql" not in engine:
            errors.append(
                checks.Error(
                    f"TASKS[{self.alias!r}] needs a PostgreSQL database: DATABASES"
                    f"[{self.database!r}] has ENGINE {engine!r}",
                    id="pgqueue.E001",
                )
            )
        elif not _on_psycopg3():
            errors.append(
                checks.Error(
                    f"TASKS[{self.alias!r}] enqueues on Django's connection, which must be "
                    "psycopg 3 (pip install 'psycopg[binary]'), not psycopg2",
                    id="pgqueue.E003",
                )
            )
        for name in sorted(self.queues):
            try:
                validate_queue_name(name)
            except InvalidJobError as exc:
                errors.append(checks.Error(str(exc), id="pgqueue.E002"))
        return errors

    def _connection(self) -> Any:
        """Django's psycopg connection of the alias, connected, in its current state
        (inside an atomic block: in its transaction)."""
        from django.db import connections  # noqa: PLC0415

        connection = connections[self.database]
        connection.ensure_connection()
        return connection.connection


def _on_psycopg3() -> bool:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3  # noqa: PLC0415

    return bool(is_psycopg3)
