"""Jobs read back: a row of either driver, decoded by column name, as a :class:`Job`,
:class:`ClaimedJob`, :class:`QueueStats` or :class:`SequenceStatus`."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from pgqueue.job_options import JOB_KEPT
from pgqueue.jobs import ClaimedJob, Job, JobSpec, QueueStats, SequenceStatus
from pgqueue.states import JobState


def decode_json(text: str | None) -> Any:
    """A JSON column as read back. Whatever a row holds must stay readable (a job with
    args nested deeper than Python's decoder goes, written from psql, must not break
    every listing): such a value reads as a dict saying so instead of failing."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except RecursionError:
        return {"pgqueue_undecodable": f"JSON nested too deeply to decode ({len(text)} characters)"}


def job_from_row(row: Any) -> Job:
    """A ``get_job`` / ``list_jobs`` row (either driver's) as a Job, by column name."""
    args = decode_json(row["args"])
    errors = decode_json(row["errors"])
    return Job(
        id=row["id"],
        task=row["task"],
        args=args if isinstance(args, dict) else {"pgqueue_undecodable": args},
        state=JobState(row["state"]),
        attempts=row["attempts"],
        result=decode_json(row["result"]),
        errors=errors if isinstance(errors, list) else [errors],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        progress=decode_json(row["progress"]),
        **_kept_options(row),
    )


def _kept_options(row: Any) -> dict[str, Any]:
    # Every statement whose rows are jobs returns every kept column: one left out fails
    # here rather than reading as None.
    kept = {name: row[name] for name in JOB_KEPT}
    if kept["depends_on"] is not None:  # an array comes back as a list
        kept["depends_on"] = tuple(kept["depends_on"])
    kept["trace_context"] = trace_context_of(kept["trace_context"])
    return kept


def trace_context_of(text: str | None) -> dict[str, str] | None:
    """A ``trace_context`` column (JSON text) as the carrier dict; None for anything that
    is not an object of strings (a row written from psql must not break a read, nor a
    worker: a bad carrier is no trace context)."""
    if text is None:
        return None
    value = decode_json(text)
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return None
    return value


def new_job(spec: JobSpec, row: Any) -> Job:
    """The job an enqueue of ``spec`` has just written, as it stands: queued, never
    tried; ``row`` is the enqueue's, with the values the database decided (``id``,
    ``created_at``, ``run_at``)."""
    kept = {name: getattr(spec, name) for name in JOB_KEPT}
    kept["run_at"] = row["run_at"]
    kept["trace_context"] = trace_context_of(spec.trace_context)
    return Job(
        id=row["id"],
        task=spec.task,
        args=json.loads(spec.args_json),
        # A job of a sequence waits blocked behind an unfinished one, a dependant for its
        # parents (or is queued or cancelled at once when they had all ended).
        state=JobState.QUEUED
        if spec.sequence_key is None and spec.depends_on is None
        else JobState(row["state"]),
        attempts=0,
        result=None,
        errors=[],
        created_at=row["created_at"],
        started_at=None,
        finished_at=None,
        **kept,
    )


def claimed_from_row(row: Any) -> ClaimedJob:
    """A ``claim_jobs`` row as a ClaimedJob."""
    return ClaimedJob(
        id=row["id"],
        queue=row["queue"],
        task=row["task"],
        args=decode_json(row["args"]),
        priority=row["priority"],
        attempt=row["attempt"],
        max_attempts=row["max_attempts"],
        timeout=row["timeout"],
        trace_context=trace_context_of(row["trace_context"]),
        run_at=row.get("run_at"),
    )


_QUEUE_STATS_FIELDS = tuple(f.name for f in dataclasses.fields(QueueStats))


def sequence_status_from_row(row: Any) -> SequenceStatus:
    """A ``sequence_status`` row as SequenceStatus, by column name."""
    state = row["head_state"]
    return SequenceStatus(
        sequence_key=row["sequence_key"],
        unfinished=row["unfinished"],
        head_job_id=row["head_job_id"],
        head_state=None if state is None else JobState(state),
        head_queue=row["head_queue"],
    )


def queue_stats_from_row(row: Any) -> QueueStats:
    """A ``queue_stats`` row as QueueStats, by column name."""
    return QueueStats(**{name: row[name] for name in _QUEUE_STATS_FIELDS})
