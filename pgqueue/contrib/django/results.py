"""A pgqueue job read back as Django's ``TaskResult``.

==================  ========================================================
pgqueue             Django
==================  ========================================================
queued, blocked     READY (waiting, or waiting to be tried again)
running             RUNNING
succeeded           SUCCESSFUL, ``return_value`` the job's ``result``
failed, cancelled   FAILED
created_at          enqueued_at
started_at          started_at and last_attempted_at (the latest attempt's start)
finished_at         finished_at
errors              errors: one ``TaskError`` per failed attempt, its
                    ``exception_class_path`` the error's ``type`` (module and
                    qualified name), its ``traceback`` the traceback (or the
                    message, for an error pgqueue wrote itself, without one)
attempts            worker_ids: one entry per attempt, so that ``attempts``
                    (their number) is the job's; see :func:`worker_ids`
==================  ========================================================
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from pgqueue.contrib.django import compat
from pgqueue.contrib.django.runner import import_task
from pgqueue.states import JobState

if TYPE_CHECKING:
    from pgqueue.jobs import Job

_STATUS = {
    JobState.QUEUED: "READY",
    JobState.BLOCKED: "READY",
    JobState.RUNNING: "RUNNING",
    JobState.SUCCEEDED: "SUCCESSFUL",
    JobState.FAILED: "FAILED",
    JobState.CANCELLED: "FAILED",
}


def result_from_job(job: Job, alias: str) -> Any:
    """The ``TaskResult`` of ``job`` (a job of the ``django.tasks`` pgqueue task) for the
    backend ``alias``. Its ``task`` is the Django task imported from the job's module
    path, with the job's priority and queue."""
    args = job.args
    # A copy with the job's own values, not Task.using(): that would validate it against
    # today's settings, and a job enqueued on a queue since removed must still read.
    task = copy.copy(import_task(str(args["task"])))
    for name, value in (("priority", job.priority), ("queue_name", job.queue), ("backend", alias)):
        object.__setattr__(task, name, value)
    status = compat.TaskResultStatus[_STATUS[job.state]]
    result = compat.TaskResult(
        task=task,
        id=str(job.id),
        status=status,
        enqueued_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        last_attempted_at=job.started_at,
        args=list(args.get("args") or []),
        kwargs=dict(args.get("kwargs") or {}),
        backend=alias,
        errors=[_task_error(entry) for entry in job.errors if isinstance(entry, dict)],
        worker_ids=worker_ids(job),
    )
    if job.state is JobState.SUCCEEDED:
        object.__setattr__(result, "_return_value", job.result)
    return result


def worker_ids(job: Job) -> list[str]:
    """One entry per attempt. pgqueue's ``Job`` does not say which worker ran each
    attempt; an error entry of a rescued attempt does (``worker_id``), and the others
    read ``"pgqueue"``."""
    by_attempt = {
        entry.get("attempt"): str(entry["worker_id"])
        for entry in job.errors
        if isinstance(entry, dict) and entry.get("worker_id")
    }
    return [by_attempt.get(attempt, "pgqueue") for attempt in range(1, job.attempts + 1)]


def _task_error(entry: dict[str, Any]) -> Any:
    return compat.TaskError(
        exception_class_path=str(entry.get("type") or "Exception"),
        traceback=str(entry.get("traceback") or entry.get("message") or ""),
    )
