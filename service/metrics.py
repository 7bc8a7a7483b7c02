"""``GET /metrics``: Prometheus text (format 0.0.4), behind the ``read`` scope.

Two kinds of figure, from two places:

**Jobs and queues, from the database at scrape time.** The API process never sees a
worker's outcomes, so it reads them from the job counters that the database keeps as
jobs move (migration 0019; the section "Job counters" of pgqueue/sql/schema.sql):
statement-level triggers on ``pgqueue.jobs`` write each statement's changes to an
insert-only table of deltas, which a worker's ``counter_rollup`` service folds into
totals about every second. Two reads per refresh (``Admin.job_counters`` and
``Admin.queue_stats``), each summing totals and pending deltas in one snapshot: exact at
any instant, whichever server process answers, before or after a restart of the API or
of the database. Cached for ``metrics_cache_seconds`` so that concurrent or close
scrapes share one refresh (per server process).

- ``pgqueue_jobs_enqueued_total{queue,task}``: jobs inserted;
- ``pgqueue_jobs_succeeded_total``, ``pgqueue_jobs_failed_total``,
  ``pgqueue_jobs_cancelled_total`` ``{queue,task}``: moves into that state (a job
  retried by hand that fails again counts twice);
- ``pgqueue_jobs_retried_total{queue,task}``: attempts beyond each job's first, counted
  as each ends (automatic retries, rescues after a lost worker, attempts after a retry by
  hand; a snoozed attempt, or one handed back at shutdown, gives its attempt back and is
  not one);
- ``pgqueue_jobs_rescued_total{queue,task}``: jobs the rescue handed back (or failed, on
  their last attempt) after their worker stopped heartbeating (written by the rescue's
  own statement: to the triggers it looks like a retry);
- ``pgqueue_workers_live``: workers whose last heartbeat is within their own lease, by
  the database's clock (the rescue's judgement);
- ``pgqueue_job_duration_seconds{queue,task}`` (histogram; bounds fixed by
  ``pgqueue.job_duration_bounds()``, DURATION_BUCKETS here): the run time of the attempt
  that ended each move into succeeded or failed, from its claim to its end;
- ``pgqueue_queue_depth{queue}``: jobs that could run now (queued and due);
  ``pgqueue_queue_scheduled{queue}``: queued for later (delays, retry backoff);
  ``pgqueue_queue_running{queue}``; ``pgqueue_queue_oldest_claimable_age_seconds{queue}``
  (0 when none is due); ``pgqueue_queue_paused{queue}`` (1 or 0);
- ``pgqueue_metrics_database_up``: 1 when the last refresh's queries worked (0: the job
  figures are left out of the answer rather than shown stale);
  ``pgqueue_metrics_query_seconds``: how long those queries took, to watch their cost.

The ``_total`` figures are true Prometheus counters: they only ever grow. Deleting or
pruning jobs, a retry by hand, a TRUNCATE, a restart of the API or several API
processes never lower them (a job's gauges go when its row goes; its counts stay).
History from before migration 0019 is what rows were left then (the migration counted
them).

Cost: O(queues x tasks + deltas not yet rolled up), whatever the size of ``pgqueue.jobs``:
no query here reads the jobs table but through its claim index, for what time rather
than an event moves (how many queued jobs are due, and the oldest one's age): per queue
with queued jobs, a loose index scan of its priorities in ``jobs_claim_idx`` and per
priority one probe and a count of the jobs scheduled for later. Measured with 5 million
jobs in the table (benchmarks/counters.py, a busy 2-vCPU machine): 2-3 ms for either
read, where the old count over the table took 1.1 s (queue_stats) and 4.4 s (this
query). The price is paid on the write path instead: each statement that inserts, moves
or deletes jobs adds a few delta rows (one per queue, task and figure changed, not one
per job), measured at about +2 us per job enqueued in bulk and +17 us per job claimed
and completed in batches of 100 (+13%). Without a running worker nothing rolls the
deltas up: the figures stay exact but cost more with every job moved until one does (or
until ``SELECT pgqueue.roll_up_job_counters()``; 100,000 pending delta rows cost a read
about 75 ms). The cache and QUERY_SHARE still bound how often the queries run.

**API requests, in the process.** ``pgqueue_api_requests_total{method,route,status}``
and the histogram ``pgqueue_api_request_duration_seconds{method,route}``, recorded by
the access-log wrapper (logs.py) for every request, unmatched ones included. ``route``
is the route's template (``/v1/jobs/{job_id}``), never the raw path, so ids never become
labels; a request no route serves (404, 405) is ``unmatched``. These live in this process's
registry (one per app, never prometheus_client's global one); when the server runs
several processes (``pgqueue api --workers N``) and ``PROMETHEUS_MULTIPROC_DIR`` names
an empty directory, they are summed across the processes (prometheus_client's
multiprocess mode) so that any process answers for all of them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from typing import TYPE_CHECKING, Any

import structlog
from litestar import Request, Response, get
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .auth import requires
from .problems import problem_responses

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from pgqueue.admin import JobCounters
    from pgqueue.jobs import QueueStats

    from .state import ServiceState

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# What the handler declares: Litestar adds the "; charset=utf-8" of CONTENT_TYPE itself.
_MEDIA_TYPE = CONTENT_TYPE.removesuffix("; charset=utf-8")
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Job run times: from no-op jobs (milliseconds) to hour-long batch work. The database
# counts jobs in these buckets (pgqueue.job_duration_bounds(), fixed by migration 0019);
# tests/test_counters.py pins the two together.
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
    300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
# Requests: up to the longest ?wait= a status request may hold (60 s by default).
REQUEST_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
UNMATCHED_ROUTE = "unmatched"
# The queries may take at most this share of one database backend's time: after a refresh
# that took t seconds, the next one waits at least t / QUERY_SHARE (should pending deltas
# pile up with no worker to roll them up, figures get staler, the database no busier).
QUERY_SHARE = 0.1
# A client can send any method token: anything else is "other", so labels stay few.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclasses.dataclass(slots=True)
class TaskFigures:
    enqueued: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    retried: int = 0
    rescued: int = 0
    # Jobs per duration bucket (not cumulative); the last one is above every bound.
    buckets: list[int] = dataclasses.field(
        default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1)
    )
    duration_sum: float = 0.0


@dataclasses.dataclass(slots=True)
class QueueFigures:
    depth: int = 0
    scheduled: int = 0
    running: int = 0
    oldest_claimable_age: float = 0.0
    paused: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class JobFigures:
    tasks: dict[tuple[str, str], TaskFigures]
    queues: dict[str, QueueFigures]
    query_seconds: float
    live_workers: int = 0


def job_figures(
    counters: Sequence[JobCounters],
    stats: Sequence[QueueStats],
    query_seconds: float,
    live_workers: int = 0,
) -> JobFigures:
    """The figures from the admin API's job counters and queue stats."""
    tasks: dict[tuple[str, str], TaskFigures] = {}
    for c in counters:
        buckets = list(c.duration_buckets)
        if len(buckets) != len(DURATION_BUCKETS) + 1:
            raise RuntimeError(
                f"the database has {len(buckets) - 1} duration bounds, metrics.py "
                f"{len(DURATION_BUCKETS)}: pgqueue.job_duration_bounds() changed"
            )
        tasks[(c.queue, c.task)] = TaskFigures(
            enqueued=c.enqueued,
            succeeded=c.succeeded,
            failed=c.failed,
            cancelled=c.cancelled,
            retried=c.retried,
            rescued=c.rescued,
            buckets=buckets,
            duration_sum=c.duration_sum,
        )
    per_queue = {
        s.queue: QueueFigures(
            depth=s.claimable,
            scheduled=s.queued - s.claimable,
            running=s.running,
            oldest_claimable_age=s.oldest_claimable_age or 0.0,
            paused=s.paused,
        )
        for s in stats
    }
    return JobFigures(tasks, per_queue, query_seconds, live_workers)


class DatabaseCollector(Collector):
    """Renders the figures of the last refresh; never queries by itself (the
    exposition is synchronous, the query is not)."""

    def __init__(self) -> None:
        self.figures: JobFigures | None = None
        self.up = False

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "pgqueue_metrics_database_up",
            "1 when the last query for the job figures worked, else 0 (and they are left out)",
            value=1 if self.up and self.figures is not None else 0,
        )
        figures = self.figures
        if not self.up or figures is None:
            return
        yield GaugeMetricFamily(
            "pgqueue_metrics_query_seconds",
            "How long the last queries for the job figures took (the job counters)",
            value=figures.query_seconds,
        )
        yield GaugeMetricFamily(
            "pgqueue_workers_live",
            "Workers whose last heartbeat is within their lease, by the database's clock",
            value=figures.live_workers,
        )
        yield from self._task_families(figures)
        yield from self._queue_families(figures)

    @staticmethod
    def _task_families(figures: JobFigures) -> Iterable[Metric]:
        counters = {
            "enqueued": "Jobs enqueued",
            "succeeded": "Jobs that succeeded",
            "failed": "Jobs that failed for good",
            "cancelled": "Jobs cancelled",
            "retried": "Attempts beyond each job's first that ended",
            "rescued": "Jobs handed back (or failed) after their worker stopped heartbeating",
        }
        for field, doc in counters.items():
            family = CounterMetricFamily(f"pgqueue_jobs_{field}", doc, labels=["queue", "task"])
            for (queue, task), t in sorted(figures.tasks.items()):
                family.add_metric([queue, task], getattr(t, field))
            yield family
        histogram = HistogramMetricFamily(
            "pgqueue_job_duration_seconds",
            "Run time of the attempt that ended each job succeeded or failed, claim to end",
            labels=["queue", "task"],
        )
        for (queue, task), t in sorted(figures.tasks.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*DURATION_BUCKETS, float("inf")), t.buckets, strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            histogram.add_metric([queue, task], buckets, t.duration_sum)
        yield histogram

    @staticmethod
    def _queue_families(figures: JobFigures) -> Iterable[Metric]:
        gauges = {
            "depth": "Jobs that could run now (queued and due)",
            "scheduled": "Jobs queued for later (a delay or a retry's backoff)",
            "running": "Jobs running",
            "oldest_claimable_age": "Seconds the oldest job that could run now has waited",
            "paused": "1 when the queue is paused",
        }
        for field, doc in gauges.items():
            suffix = "_seconds" if field == "oldest_claimable_age" else ""
            family = GaugeMetricFamily(f"pgqueue_queue_{field}{suffix}", doc, labels=["queue"])
            for queue, q in sorted(figures.queues.items()):
                family.add_metric([queue], float(getattr(q, field)))
            yield family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class Metrics:
    """One app's metrics: its own registry, the request metrics, and the cached job
    figures."""

    def __init__(self, cache_seconds: float) -> None:
        self._cache_seconds = cache_seconds
        self._fresh_until = 0.0
        # One refresh at a time: scrapes that arrive meanwhile wait for its answer
        # instead of running the same queries beside it.
        self._lock = asyncio.Lock()
        self._log = structlog.get_logger("pgqueue.service")
        self.database = DatabaseCollector()
        self.registry = CollectorRegistry()
        if os.environ.get(MULTIPROC_ENV):
            # Request metrics go to files shared by the server's processes, and are
            # shown summed from them; registering them here too would show them twice.
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
            request_registry = CollectorRegistry()
        else:
            request_registry = self.registry
        self.registry.register(self.database)
        self._requests = Counter(
            "pgqueue_api_requests",
            "HTTP requests answered, by method, route template and status",
            ["method", "route", "status"],
            registry=request_registry,
        )
        self._request_seconds = Histogram(
            "pgqueue_api_request_duration_seconds",
            "Time to answer an HTTP request, by method and route template",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=request_registry,
        )
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "other"
        # Every request comes here: the labelled series are looked up once, then kept
        # (methods, route templates and statuses are few).
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = self._series[key] = (
                self._requests.labels(method, route, str(status)),
                self._request_seconds.labels(method, route),
            )
        series[0].inc()
        series[1].observe(seconds)

    async def refresh(self, service: ServiceState) -> None:
        """Query the job figures again unless the last answer is recent enough."""
        async with self._lock:
            if time.monotonic() < self._fresh_until:
                return
            start = time.perf_counter()
            try:
                async with service.reading() as conn:
                    counters = await service.admin.job_counters(conn=conn)
                    stats = await service.admin.queue_stats(conn=conn)
                    live = await service.admin.live_workers(conn=conn)
            except Exception as exc:  # a scrape still answers, saying the database did not
                self._log.warning("metrics_query_failed", error=repr(exc))
                self.database.up = False
            else:
                took = time.perf_counter() - start
                self.database.figures = job_figures(counters, stats, took, live)
                self.database.up = True
            # A failure is cached too: a database in trouble is not asked on every scrape.
            # metrics_cache_seconds = 0 turns both off (tests that must see every change).
            took = time.perf_counter() - start
            wait = max(self._cache_seconds, took / QUERY_SHARE) if self._cache_seconds else 0.0
            self._fresh_until = time.monotonic() + wait

    def render(self) -> bytes:
        return generate_latest(self.registry)


@get(
    "/metrics",
    guards=[requires("read")],
    summary="Prometheus metrics",
    tags=["operations"],
    media_type=_MEDIA_TYPE,
    responses=problem_responses(401, 403),
)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Job, queue and request figures in Prometheus' text format (see the service's
    metrics.py for what each one means). Needs a key with the read scope: Prometheus
    sends it with ``authorization: {credentials: KEY}`` in its scrape config."""
    metrics: Metrics = request.app.state.pgqueue_metrics
    await metrics.refresh(request.app.state.pgqueue)
    return Response(metrics.render(), media_type=_MEDIA_TYPE)
