"""What the dashboard's pages show, as plain values: the template filters (durations,
times, JSON), the queue table's rows with their throughput sparklines, a job's attempt
errors, and the job list's filter. No I/O here."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from pgqueue.checks import validate_queue_name, validate_task_name
from pgqueue.errors import InvalidJobError
from pgqueue.states import JobState

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from pgqueue.flow import LimitStatus
    from pgqueue.jobs import QueueStats

SPARK = "▁▂▃▄▅▆▇█"


def duration(seconds: float | None) -> str:
    """A span of time for people: 850 ms, 12 s, 4 min 05 s, 2 h 03 min, 3 d 4 h."""
    if seconds is None:
        return "—"
    value = max(0.0, seconds)
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"
    minutes, secs = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def when(value: datetime | None) -> str:
    return "—" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(value: datetime | None) -> str:
    if value is None:
        return ""
    delta = (datetime.now(UTC) - value).total_seconds()
    return f"{duration(delta)} ago" if delta >= 0 else f"in {duration(-delta)}"


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


@dataclasses.dataclass(frozen=True, slots=True)
class QueueRow:
    stats: QueueStats
    last_minute: int  # jobs finished in the last 60 s
    finished: int  # ... in the whole window
    failed: int  # ... of which failed
    spark: str  # one character per minute, oldest first
    spark_title: str
    # The queue's own limits and what runs against them (pgqueue.flow); None: unlimited.
    limit: LimitStatus | None = None


def queue_rows(
    stats: list[QueueStats],
    throughput: Iterable[tuple[str, int, int, int]],
    minutes: int,
    limits: Iterable[LimitStatus] = (),
) -> list[QueueRow]:
    limited = {lim.queue: lim for lim in limits if lim.concurrency_key is None}
    per_minute: dict[str, list[int]] = {}
    failed: dict[str, int] = {}
    for queue, minutes_ago, count, failures in throughput:
        if 0 <= minutes_ago < minutes:
            per_minute.setdefault(queue, [0] * minutes)[minutes - 1 - minutes_ago] += count
            failed[queue] = failed.get(queue, 0) + failures
    rows = []
    for stat in stats:
        counts = per_minute.get(stat.queue, [0] * minutes)
        top = max(counts)
        spark = "".join(
            SPARK[0 if n == 0 else 1 + round((len(SPARK) - 2) * n / top)] for n in counts
        )
        rows.append(
            QueueRow(
                stats=stat,
                last_minute=counts[-1],
                finished=sum(counts),
                failed=failed.get(stat.queue, 0),
                spark=spark,
                spark_title=(
                    f"jobs finished per minute over the last {minutes} minutes, oldest first: "
                    + ", ".join(map(str, counts))
                ),
                limit=limited.get(stat.queue),
            )
        )
    return rows


@dataclasses.dataclass(frozen=True, slots=True)
class AttemptError:
    attempt: Any
    type: str
    message: str
    traceback: str | None
    at: str
    extra: dict[str, Any]


def attempt_errors(errors: list[Any]) -> list[AttemptError]:
    """The job's error entries as the page shows them, whatever shape each one has."""
    shown = []
    for entry in errors:
        item = entry if isinstance(entry, dict) else {"message": pretty(entry)}
        known = {"attempt", "type", "message", "traceback", "at"}
        traceback = item.get("traceback")
        shown.append(
            AttemptError(
                attempt=item.get("attempt", "?"),
                type=str(item.get("type") or "error"),
                message=str(item.get("message") or ""),
                traceback=None if traceback is None else str(traceback),
                at=_timestamp(item.get("at")),
                extra={k: v for k, v in item.items() if k not in known},
            )
        )
    return shown


def _timestamp(value: object) -> str:
    """An error entry's ``at`` (ISO 8601 text, as jsonb keeps it) like the page's others."""
    try:
        return when(datetime.fromisoformat(str(value)))
    except ValueError:
        return "" if value is None else str(value)


@dataclasses.dataclass(frozen=True, slots=True)
class JobFilter:
    queue: str | None = None
    state: JobState | None = None
    task: str | None = None
    error: str | None = None

    @classmethod
    def parse(cls, queue: str | None, state: str | None, task: str | None) -> JobFilter:
        """The filter the form asks for; a value no job can have is left out of it and
        said so (the page lists the jobs without it)."""
        queue, state, task = (v.strip() if v and v.strip() else None for v in (queue, state, task))
        errors: list[str] = []
        queue = _checked_name(queue, validate_queue_name, errors)
        task = _checked_name(task, validate_task_name, errors)
        job_state = None
        if state is not None:
            try:
                job_state = JobState(state)
            except ValueError:
                names = ", ".join(s.value for s in JobState)
                errors.append(f"There is no state {state!r}: {names}.")
        return cls(queue, job_state, task, " ".join(errors) or None)

    def query_string(self, **extra: Any) -> str:
        """The filter (and ``extra``) as a URL's query string."""
        params = {"queue": self.queue, "state": self.state and self.state.value, "task": self.task}
        return urlencode({k: v for k, v in {**params, **extra}.items() if v is not None})


def _checked_name(value: str | None, check: Callable[[str], str], errors: list[str]) -> str | None:
    """The name if it is one pgqueue allows, else None and why in ``errors``."""
    if value is None:
        return None
    try:
        return check(value)
    except InvalidJobError as exc:
        errors.append(f"No job matches: {exc}.")
        return None
