"""The one place that knows where ``django.tasks`` lives: Django 6's own module, else the
``django-tasks`` backport (module ``django_tasks``, the same API) on Django 5.2, which is
what Python 3.11 gets (Django 6 needs 3.12). Names that differ between the two (the
backport's ``InvalidTaskError`` is Django 6's ``InvalidTask``) are given one name here."""

from __future__ import annotations

import importlib
from typing import Any

from pgqueue.extras import ExtraNotInstalledError


def _tasks_package() -> str:
    for name in ("django.tasks", "django_tasks"):
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        return name
    raise ExtraNotInstalledError(
        "django",
        "pgqueue.contrib.django",
        "pgqueue.contrib.django needs Django 6 (django.tasks), or Django 5.2 with the "
        "django-tasks backport: pip install 'pgqueue-jobs[django]'",
    )


PACKAGE = _tasks_package()
_base: Any = importlib.import_module(f"{PACKAGE}.base")
_backends: Any = importlib.import_module(f"{PACKAGE}.backends.base")
_exceptions: Any = importlib.import_module(f"{PACKAGE}.exceptions")
_signals: Any = importlib.import_module(f"{PACKAGE}.signals")

# Django ships no type hints: these are Any to mypy, real classes at run time.
BaseTaskBackend: Any = _backends.BaseTaskBackend
Task: Any = _base.Task
TaskContext: Any = _base.TaskContext
TaskError: Any = _base.TaskError
TaskResult: Any = _base.TaskResult
TaskResultStatus: Any = _base.TaskResultStatus
InvalidTask: Any = getattr(_exceptions, "InvalidTask", None) or _exceptions.InvalidTaskError
TaskResultDoesNotExist: Any = _exceptions.TaskResultDoesNotExist
InvalidTaskBackend: Any = (
    getattr(_exceptions, "InvalidTaskBackend", None) or _exceptions.InvalidTaskBackendError
)
# Every release sends these; looked up softly all the same (early 6.0 builds had no
# task_started).
task_enqueued: Any = getattr(_signals, "task_enqueued", None)
task_started: Any = getattr(_signals, "task_started", None)
task_finished: Any = getattr(_signals, "task_finished", None)


def task_backends() -> Any:
    """The ``TASKS`` backends by alias (``task_backends[alias]``)."""
    return importlib.import_module(PACKAGE).task_backends
