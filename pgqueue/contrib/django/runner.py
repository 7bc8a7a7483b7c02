"""What a pgqueue worker runs for Django: one pgqueue task, :data:`TASK_NAME`, whose job
names the Django task by its module path and carries its arguments.

Every Django task goes through this one pgqueue task, so a worker needs no list of them:
it imports each by the path its job names, as Django's own ``Task.module_path`` gives
it (the module attribute is the ``Task`` that ``@task`` made). A job's arguments::

    {"task": "shop.tasks.send_welcome", "args": [7], "kwargs": {"email": "a@b.c"},
     "backend": "default"}

``backend`` is the ``TASKS`` alias that enqueued it: its ``get_result`` builds the
``TaskResult`` that ``TaskContext`` and the ``task_started`` / ``task_finished`` signals
carry (one read of the job per run, on the thread's Django connection).

``manage.py pgqueue_worker`` runs a pgqueue worker on :data:`queue`; so does
``pgqueue worker pgqueue.contrib.django.runner:queue`` with ``DJANGO_SETTINGS_MODULE``
set (Django is set up on the first job then).
"""

from __future__ import annotations

import traceback
from typing import Any

from pgqueue.app import Queue
from pgqueue.context import current_job
from pgqueue.contrib.django import compat

__all__ = ["TASK_NAME", "queue", "run_django_task"]

TASK_NAME = "django.tasks"

# The worker's app (and the backend's, for building jobs: it only ever enqueues and
# reads on Django's own connection, so it never opens connections of its own). The
# DSN is the worker's --dsn.
queue = Queue()


@queue.task(name=TASK_NAME)
def run_django_task(task: str, args: list[Any], kwargs: dict[str, Any], backend: str) -> Any:
    """Run the Django task at module path ``task``: in one of the worker's threads, so
    the ORM works as in a view. Old database connections are closed before and after,
    as Django does around a request (``CONN_MAX_AGE`` applies). An exception propagates
    to pgqueue, which records it in the job's ``errors`` (and retries while the job has
    attempts left: the backend's ``MAX_ATTEMPTS``)."""
    from django.db import close_old_connections  # noqa: PLC0415 - after setup

    _setup_django()
    close_old_connections()
    try:
        return _execute(task, args, kwargs, backend)
    finally:
        close_old_connections()


def import_task(module_path: str) -> Any:
    """The Django ``Task`` at ``module_path``; a clear error when it is something else."""
    from django.utils.module_loading import import_string  # noqa: PLC0415

    found = import_string(module_path)
    if not isinstance(found, compat.Task):
        raise TypeError(f"{module_path} is not a Django task (decorate it with @task)")
    return found


def _setup_django() -> None:
    from django.apps import apps  # noqa: PLC0415

    if not apps.ready:
        import django  # noqa: PLC0415

        django.setup()


def _execute(path: str, args: list[Any], kwargs: dict[str, Any], alias: str) -> Any:
    from django.utils import timezone  # noqa: PLC0415

    django_task = import_task(path)
    backend = compat.task_backends()[alias]
    # The job as stored (state running): enqueued_at, attempts... for the context.
    result = backend.get_result(str(current_job().id))
    _send(compat.task_started, backend, result)
    try:
        if django_task.takes_context:
            value = django_task.call(compat.TaskContext(task_result=result), *args, **kwargs)
        else:
            value = django_task.call(*args, **kwargs)
    except BaseException as exc:
        error = compat.TaskError(
            exception_class_path=f"{type(exc).__module__}.{type(exc).__qualname__}",
            traceback="".join(traceback.format_exception(exc)),
        )
        _finish(result, compat.TaskResultStatus.FAILED, timezone.now())
        result.errors.append(error)
        _send(compat.task_finished, backend, result)
        raise
    _finish(result, compat.TaskResultStatus.SUCCESSFUL, timezone.now())
    object.__setattr__(result, "_return_value", value)
    _send(compat.task_finished, backend, result)
    return value


def _finish(result: Any, status: Any, at: Any) -> None:
    # TaskResult is a frozen dataclass; Django's own backends set its outcome this way.
    object.__setattr__(result, "status", status)
    object.__setattr__(result, "finished_at", at)


def _send(signal: Any, backend: Any, result: Any) -> None:
    if signal is not None:
        signal.send(sender=type(backend), task_result=result)
