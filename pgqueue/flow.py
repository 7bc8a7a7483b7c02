"""Flow control: concurrency and rate limits per queue and per ``concurrency_key``, and
turns between keys. Plain values and checks, shared by every face (library, CLI, HTTP);
the enforcement is the claim itself (``claim_jobs`` in sql/queries.sql, then
``claim_jobs_limited`` in sql/flow.sql, a call of ``pgqueue.claim_jobs_limited`` in
sql/schema.sql, whose statements are planned once per session).

How it holds, across every worker on every machine:

* A queue with a row in ``pgqueue.queue_limits`` is *limited*. Each claim of it takes a
  transaction-level advisory lock for that queue (:data:`pgqueue.locks.FLOW`), and only
  then, in statements whose snapshots are taken after the lock was granted, counts the
  queue's running jobs and the starts in its rate window and claims at most what is
  free. Claims of one limited queue therefore run one at a time and never count the same
  free slot twice. Queues without limits are claimed as before, without the lock.
* A running job holds its slot until it leaves ``running``: when it finishes, fails,
  is snoozed or released, or, for a worker that died, when the rescue gives its jobs
  back (one lease after its last heartbeat). Until then the slot stays taken.
* A rate ``N/period`` is a sliding log of start (claim) times, ``pgqueue.job_starts``
  (one row per claim, with how many jobs it started): a claim at ``t`` starts ``k`` jobs
  only if at most ``N - k`` starts lie in ``(t - period, t]``, so no window of that
  length ever holds more than ``N``. ``t`` is the database's clock once the lock is
  granted, and is the claimed jobs' ``started_at``. A start is a claim: a job released
  unstarted, or rescued and run again, counts each time it is claimed.
* A queue whose one limit is its rate (*rate-only*: no concurrency limit, no key limits)
  holds the lock for less. Before its claim, a transaction of its own reserves the
  starts under the lock (``pgqueue.reserve_starts``: counts the window, logs up to the
  claim's size at ``t``, commits); the claim then takes up to that many jobs with
  ``started_at = t`` without the lock and gives back what it did not find as it
  commits. As exact as the locked claim (the log's times still follow the lock's
  order), but claims no longer queue behind each other's commits. A reservation whose
  claim never comes (the worker died) leaves that much of the rate unused until it
  leaves the window; it never lets more start.
* A worker serving a limited queue refills the slots its own jobs free in the statement
  that writes their outcomes (``complete_and_claim_limited`` in sql/flow.sql: the write,
  then the claim under the queue's lock, one round trip and one commit), so its slots
  never stand free between a write and a claim; it also claims on an enqueue's NOTIFY
  and at its poll interval (a slot freed by another worker is seen then); one whose
  limited queues are all rate-only has no slots to refill and claims as its jobs end,
  as an unlimited worker does. When a rate
  is what holds it (a refill found no room), it sleeps until the database says the
  next start is due (``pgqueue.limited_queue_due``), never polling in a loop.
* Queues served by one worker take turns within every claim: candidates are
  interleaved by their rank within their queue (round robin; priority orders jobs
  within a queue, not across queues). There are no weights: a worker that should favour
  a queue can be given it alone, or more workers can serve it.
* Keys take turns: a limited queue's claim walks the distinct keys of its queued jobs
  from where the previous claim stopped (one index descent per key), takes each key's
  jobs in claim order (priority, run_at, id) up to its room, and interleaves them by
  their rank within their key, so a key with a backlog of 100,000 gets one turn per
  round like a key with 100 jobs. Jobs without a key take their turn as one more key.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pgqueue.errors import InvalidLimitError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pgqueue.jobs import ClaimedJob

# A limit fits the tables' CHECKs: 1 to a million jobs, periods of 1 ms to 366 days.
MAX_LIMIT = 1_000_000
MIN_PERIOD = timedelta(milliseconds=1)
MAX_PERIOD = timedelta(days=366)
MAX_KEY_LENGTH = 255

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(?P<count>\d+)\s*/\s*(?P<n>\d+(?:\.\d+)?)?\s*(?P<unit>ms|s|m|h|d)\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` job starts in any window of ``period``."""

    count: int
    period: timedelta

    def __post_init__(self) -> None:
        _check_count("rate count", self.count)
        if not MIN_PERIOD <= self.period <= MAX_PERIOD:
            raise InvalidLimitError(f"a rate's period must be 1 ms to 366 days, got {self.period}")

    @classmethod
    def parse(cls, value: Rate | str) -> Rate:
        """``"100/m"``, ``"5/s"``, ``"10/30s"``, ``"1000/h"``, ``"50/d"``, ``"3/500ms"``."""
        if isinstance(value, Rate):
            return value
        match = _RATE.match(value) if isinstance(value, str) else None
        if match is None:
            raise InvalidLimitError(
                f"a rate is COUNT/PERIOD such as '100/m', '5/s' or '10/30s', got {value!r}"
            )
        seconds = float(match["n"] or 1) * _UNITS[match["unit"]]
        return cls(int(match["count"]), timedelta(seconds=seconds))

    def __str__(self) -> str:
        return f"{self.count}/{_period_text(self.period)}"


def _period_text(period: timedelta) -> str:
    seconds = period.total_seconds()
    for unit in ("d", "h", "m", "s"):
        n = seconds / _UNITS[unit]
        if n >= 1 and n == int(n):
            return unit if n == 1 else f"{int(n)}{unit}"
    return f"{round(seconds * 1000)}ms"


def _check_count(what: str, value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_LIMIT:
        raise InvalidLimitError(f"{what} must be an integer from 1 to {MAX_LIMIT}, got {value!r}")


def validate_key(key: str) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidLimitError(f"a concurrency key is 1 to {MAX_KEY_LENGTH} characters: {key!r}")
    return key


@dataclass(frozen=True, slots=True)
class KeyLimit:
    """One key's own limits, instead of its queue's key defaults."""

    concurrency: int | None = None
    rate: Rate | None = None

    def __post_init__(self) -> None:
        _check_count("concurrency", self.concurrency)


@dataclass(frozen=True, slots=True)
class QueueLimit:
    """A queue's limits: of the queue as a whole, and (``key_*``) of each of its
    concurrency keys, with per-key overrides in ``keys``. All None still makes the queue
    limited: its keys take turns."""

    queue: str
    concurrency: int | None = None
    rate: Rate | None = None
    key_concurrency: int | None = None
    key_rate: Rate | None = None
    keys: Mapping[str, KeyLimit] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_count("concurrency", self.concurrency)
        _check_count("key_concurrency", self.key_concurrency)
        for key in self.keys:
            validate_key(key)


def build_limit(
    queue: str,
    *,
    concurrency: int | None = None,
    rate: Rate | str | None = None,
    key_concurrency: int | None = None,
    key_rate: Rate | str | None = None,
    keys: Mapping[str, KeyLimit] | None = None,
) -> QueueLimit:
    """A checked QueueLimit from what a caller gives (rates as text or Rate)."""
    from pgqueue.checks import validate_queue_name  # noqa: PLC0415 - keep flow light

    return QueueLimit(
        queue=validate_queue_name(queue),
        concurrency=concurrency,
        rate=None if rate is None else Rate.parse(rate),
        key_concurrency=key_concurrency,
        key_rate=None if key_rate is None else Rate.parse(key_rate),
        keys=dict(keys or {}),
    )


def build_key_limit(*, concurrency: int | None = None, rate: Rate | str | None = None) -> KeyLimit:
    return KeyLimit(concurrency=concurrency, rate=None if rate is None else Rate.parse(rate))


def rate_params(rate: Rate | None) -> tuple[int | None, float | None]:
    """A rate as the (count, seconds) pair the statements take."""
    return (None, None) if rate is None else (rate.count, rate.period.total_seconds())


@dataclass(frozen=True, slots=True)
class LimitStatus:
    """One row of ``pgqueue.limit_status``: a limited queue (``concurrency_key`` None)
    or one of its keys, running against its limits."""

    queue: str
    concurrency_key: str | None
    concurrency: int | None
    running: int
    rate: Rate | None
    recent_starts: int
    queued: int


def limit_status_from_row(row: Any) -> LimitStatus:
    period = row["rate_period"]
    rate = None if row["rate_count"] is None else Rate(row["rate_count"], period)
    return LimitStatus(
        queue=row["queue"],
        concurrency_key=row["concurrency_key"],
        concurrency=row["concurrency"],
        running=row["running"],
        rate=rate,
        recent_starts=row["recent_starts"],
        queued=row["queued"],
    )


@dataclass(frozen=True, slots=True)
class ClaimWait:
    """What an idle worker waits for: the next job or rate slot due (seconds from now;
    None when none is known), and whether any of its queues is limited."""

    due_in: float | None
    limited: bool


@dataclass(frozen=True, slots=True)
class Reservations:
    """Starts reserved for a claim (``reserve_starts`` in sql/flow.sql), by queue in
    name order, as the claim takes them; ``locked``: some limited queue of the claim is
    not rate-only, so takes its lock (and refills pay off for it)."""

    queues: list[str]
    granted: list[int]
    at: list[Any]
    locked: bool

    @classmethod
    def from_rows(cls, rows: list[Any]) -> Reservations:
        """From reserve_starts' rows: one per limited queue, granted NULL if locked."""
        mine = sorted((r[0], r[1], r[2]) for r in rows if r[1] is not None)
        return cls(
            queues=[q for q, _, _ in mine],
            granted=[g for _, g, _ in mine],
            at=[t for _, _, t in mine],
            locked=len(mine) < len(rows),
        )

    def nothing_to_claim(self, queues: list[str]) -> bool:
        """Whether a claim of ``queues`` could take no job: every one of them is
        rate-only and its window full. Then the claim's round trip is not made."""
        full = {q for q, g in zip(self.queues, self.granted, strict=True) if g == 0}
        return bool(queues) and not self.locked and full >= set(queues)

    def params(self) -> tuple[list[str], list[int], list[Any]]:
        return self.queues, self.granted, self.at


@dataclass(frozen=True, slots=True)
class FlowClaim:
    """What a claim took, whether any of its queues is limited now, and whether any
    limited one is claimed under its lock (the refills of a worker pay off only then:
    :meth:`pgqueue.worker.claiming.Claimer.refill`)."""

    jobs: list[ClaimedJob]
    limited: bool
    locked: bool


class FlowDeclarations:
    """The limits a :class:`~pgqueue.Queue` declares in code (``queue.limit(...)``);
    a worker writes those of the queues it serves to the database as it starts, so
    they replace the queue's own limits set at runtime, and the overrides of the keys
    they declare (a runtime override of a key they do not declare stays)."""

    @functools.cached_property
    def declared_limits(self) -> dict[str, QueueLimit]:
        return {}

    def limit(
        self,
        queue: str,
        *,
        concurrency: int | None = None,
        rate: Rate | str | None = None,
        key_concurrency: int | None = None,
        key_rate: Rate | str | None = None,
        keys: Mapping[str, KeyLimit] | None = None,
    ) -> QueueLimit:
        """Declare the limits of ``queue``: ``concurrency`` running jobs at once and
        ``rate`` starts per period (``"100/m"``) for the queue as a whole,
        ``key_concurrency`` and ``key_rate`` for each of its concurrency keys, and
        ``keys`` ({key: KeyLimit(...)}) for keys of their own. Enforced across every
        worker; applied by each worker serving the queue as it starts."""
        declared = build_limit(
            queue,
            concurrency=concurrency,
            rate=rate,
            key_concurrency=key_concurrency,
            key_rate=key_rate,
            keys=keys,
        )
        self.declared_limits[declared.queue] = declared
        return declared
