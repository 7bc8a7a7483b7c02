"""The worker: claims jobs in batches, runs them, reports their outcomes in batches.

One asyncio loop per process. :class:`Worker` holds the settings and the controls
(stop, signals); :meth:`Worker.run` joins the database and then builds a
:class:`_Started`, the parts that exist only while it runs: the claim loop
(``claiming.py``), the jobs in flight and their outcomes (``lifecycle.py``,
``execution.py``, ``completer.py``), the listener (``listener.py``) and the maintenance
services (``maintenance.py``: heartbeat and rescue, pruning, the scheduler).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import structlog

from pgqueue import driver
from pgqueue.checks import validate_queue_name
from pgqueue.executors import AsyncpgExecutor
from pgqueue.pools import acquire
from pgqueue.retention import Retention
from pgqueue.worker.claiming import (
    CLAIM_RETRY_ERRORS,
    Claimer,
    HandBack,
    apply_declared_limits,
    in_flight_limit,
)
from pgqueue.worker.completer import Completer
from pgqueue.worker.execution import ProgressWriter, TaskRunner
from pgqueue.worker.failover import FailoverGuard
from pgqueue.worker.heartbeat import Heartbeat, SelfFence
from pgqueue.worker.lifecycle import Jobs
from pgqueue.worker.listener import Listener
from pgqueue.worker.maintenance import ServiceContext, build_services
from pgqueue.worker.membership import Membership
from pgqueue.worker.pruning import Pruner
from pgqueue.worker.services import PeriodicService, ServiceRunner
from pgqueue.worker.startup_checks import warn_if_autovacuum_off

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import asyncpg

    from pgqueue.app import Queue

_DEFAULT_RETENTION = Retention()
# Jobs in flight at once. An async job costs a coroutine; two claim batches' worth let
# the next claim's round trip overlap with the jobs of the one before (with one batch's
# worth, the loop stands idle while every claim is in flight: 40% fewer no-op jobs/s).
DEFAULT_CONCURRENCY = 200
# Jobs per claim statement.
DEFAULT_BATCH_SIZE = 100
# Plain functions running at once, in the thread pool: threads are not free, and a busy
# thread holds the GIL that the event loop needs.
DEFAULT_THREADS = 10
# How long a stopping worker waits for async failure hooks still running (a report
# being sent): bounded, so that a hung reporter never holds a shutdown.
HOOKS_GRACE_SECONDS = 5.0


@dataclasses.dataclass(slots=True)
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    interrupted: int = 0
    snoozed: int = 0


class Worker:
    def __init__(
        self,
        app: Queue,
        *,
        dsn: str | None = None,
        queues: Sequence[str] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        poll_interval: float = 2.0,
        grace_period: float = 30.0,
        lease: float = 15.0,
        processes: int | None = None,
        retention: Retention | None = _DEFAULT_RETENTION,
        prune_interval: float = 60.0,
        scheduler: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if threads is not None and not 1 <= threads <= concurrency:
            raise ValueError(
                f"threads must be between 1 and concurrency ({concurrency}), got {threads}"
            )
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        # Recorded in pgqueue.workers as an interval of whole microseconds, with its fifth
        # (the heartbeat interval) positive: neither may round to zero or overflow.
        if not 0.001 <= lease <= 365 * 86400:
            raise ValueError(f"lease must be between 0.001 and 31536000 seconds, got {lease!r}")
        if processes is not None and processes < 1:
            raise ValueError("processes must be at least 1")
        if prune_interval <= 0:
            raise ValueError("prune_interval must be positive")
        self.app = app
        self._dsn = dsn
        self.queues = [validate_queue_name(q) for q in (queues or app.queues())]
        self.concurrency = concurrency
        # Plain functions in flight at once (the thread pool's size), within concurrency.
        self.threads = threads if threads is not None else min(DEFAULT_THREADS, concurrency)
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.grace_period = grace_period
        # A running job is this worker's for as long as it heartbeats (every fifth of the
        # lease); a worker silent for a whole lease has its jobs rescued by another. Both
        # are recorded in pgqueue.workers: the rescue judges this worker by its own lease.
        self.lease = lease
        self.heartbeat_interval = lease / 5
        # The process pool of process=True tasks, started with the first such job: at
        # most this many of them in flight at once.
        self.processes = processes or min(self.threads, os.cpu_count() or 1)
        # Finished jobs past their retention are pruned by one worker at a time, every
        # prune_interval seconds; None (or Retention.forever()) leaves it to others.
        self.retention = retention if retention is not None and retention.prunes else None
        self.prune_interval = prune_interval
        # Every worker runs the scheduler of periodic jobs (pgqueue.worker.scheduler)
        # unless told not to; one that runs it writes its app's @queue.periodic schedules.
        self.scheduler = scheduler
        self.stats = WorkerStats()
        # Set when a sync task outlived the stop: its thread is still running.
        self.abandoned_threads = False
        self._membership = Membership(
            queues=self.queues,
            concurrency=concurrency,
            lease=lease,
            heartbeat_interval=self.heartbeat_interval,
        )
        self._log = structlog.get_logger("pgqueue.worker")
        self._stop: asyncio.Event | None = None  # from run() on
        self._started: _Started | None = None  # once joined; kept after the end

    @property
    def dsn(self) -> str:
        return self._dsn or self.app.dsn

    @property
    def worker_id(self) -> str:
        """Its id in pgqueue.workers (a new one after it was declared dead)."""
        return self._membership.worker_id

    @property
    def listening(self) -> asyncio.Event | None:
        """Set while the worker is listening for wake-ups (its LISTEN connection is up);
        None until it has joined the database."""
        return None if self._started is None else self._started.listener.listening

    @property
    def idle(self) -> asyncio.Event | None:
        """Set while the worker is idle: its last claim found less than it could take."""
        return None if self._started is None else self._started.claimer.idle

    @property
    def services(self) -> list[PeriodicService]:
        """Its maintenance services (none until it has joined the database)."""
        return [] if self._started is None else self._started.services.services

    @property
    def heartbeat(self) -> Heartbeat | None:
        return next((s for s in self.services if isinstance(s, Heartbeat)), None)

    @property
    def pruner(self) -> Pruner | None:
        """None when its retention keeps everything."""
        return next((s for s in self.services if isinstance(s, Pruner)), None)

    # --- control -----------------------------------------------------------------------

    def stop(self, *, now: bool = False) -> None:
        """Stop claiming; let running jobs finish (within the grace period, or not at all
        with ``now``). Safe to call from a signal handler on the worker's loop."""
        if now:
            self.grace_period = 0.0
        if self._stop is not None:
            self._stop.set()

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT: a graceful stop; the second one stops at once."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        again = self._stop is not None and self._stop.is_set()
        self._log.info("worker_signal", signal=sig.name, immediate=again)
        self.stop(now=again)
        if again and self._started is not None:
            self._started.jobs.interrupt_all()

    # --- main --------------------------------------------------------------------------

    async def run(self) -> WorkerStats:
        """Work until :meth:`stop` is called; returns what was done."""
        stop = self._stop = asyncio.Event()
        log = self._log.bind(queues=self.queues, concurrency=self.concurrency)
        failover = FailoverGuard()
        pool = await self._membership.join(self.dsn, stop, log, init=failover.on_connect)
        if pool is None:  # stopped before the database ever answered
            return self.stats
        started = self._started = _Started(self, self._membership, pool, stop, failover)
        await apply_declared_limits(pool, self.app.declared_limits, self.queues)
        await warn_if_autovacuum_off(pool, log)
        log.info(
            "worker_started",
            worker_id=self.worker_id,
            threads=self.threads,
            processes=self.processes,
            batch_size=self.batch_size,
            poll_interval=self.poll_interval,
            lease=self.lease,
            maintenance=[s.name for s in started.services.services],
        )
        try:
            await started.claimer.run()
        finally:
            # Jobs still waiting for a thread or a process never started: back to the
            # queue at once, their attempt uncounted. The running ones get the grace.
            await started.claimer.release(started.jobs.withdraw_unstarted())
            await started.jobs.drain(self.grace_period)
            # Async failure hooks still reporting (pgqueue.hooks): a few seconds to end.
            await self.app.hooks.wait_async_hooks(HOOKS_GRACE_SECONDS)
            self.abandoned_threads = await started.close(log, self.grace_period)
            log.info("worker_stopped", **dataclasses.asdict(self.stats), **started.counters())
        return self.stats


class _Started:
    """A running worker's parts, which exist only once it has joined the database:
    built and started together, by :meth:`Worker.run`."""

    def __init__(
        self,
        worker: Worker,
        membership: Membership,
        pool: asyncpg.Pool[Any],
        stop: asyncio.Event,
        failover: FailoverGuard,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.pool = pool
        self.stop = stop
        self._membership = membership
        self._log = structlog.get_logger("pgqueue.worker")

        def worker_id() -> str:
            return membership.worker_id

        # Set while this worker is in pgqueue.workers (it is, once joined) and not fenced:
        # claims wait.
        self.registered = asyncio.Event()
        self.registered.set()
        self._rejoining = False
        wake = asyncio.Event()
        self.threads = ThreadPoolExecutor(worker.threads, thread_name_prefix="pgqueue-task")
        self.runner = TaskRunner(
            worker.dsn,
            threads=self.threads,
            thread_count=worker.threads,
            processes=worker.processes,
            lease=worker.lease,
        )
        hand_back = self._hand_back = HandBack(wake, worker.stats)
        self.completer = Completer(pool, on_requeued=wake.set, on_dropped=hand_back.outcome_lost)
        self.jobs = Jobs(
            worker.app.tasks,
            runner=self.runner,
            completer=self.completer,
            progress=ProgressWriter(pool, loop),
            stats=worker.stats,
            worker_id=worker_id,
            on_outcome_lost=hand_back.outcome_lost,
            hooks=worker.app.hooks,
        )
        self.listener = Listener(
            worker.dsn,
            queues=frozenset(worker.queues),
            poll_interval=worker.poll_interval,
            stop=stop,
            on_enqueued=wake.set,
            on_cancel=self.jobs.cancel,
            poll=self._poll_cancellations,
        )
        self.claimer = Claimer(
            pool,
            self.jobs,
            self.runner,
            queues=worker.queues,
            concurrency=in_flight_limit(
                worker.app.tasks.values(),
                worker.queues,
                concurrency=worker.concurrency,
                threads=worker.threads,
                processes=worker.processes,
            ),
            batch_size=worker.batch_size,
            poll_interval=worker.poll_interval,
            worker_id=worker_id,
            stats=worker.stats,
            hand_back=hand_back,
            stop=stop,
            wake=wake,
            registered=self.registered,
            written=self.completer.written,
            claims_open=failover.claims_open,
            unwritten=self.completer.unwritten,
            hooks=worker.app.hooks,
        )
        # A write of outcomes refills the slots they free while a queue is limited.
        self.completer.refiller = self.claimer
        context = ServiceContext(
            worker,
            pool,
            stopping=stop.is_set,
            on_declared_dead=functools.partial(_call_on_loop, loop, self._declared_dead),
            failover=failover,
        )
        self.services = ServiceRunner(build_services(context))
        heartbeat = self._heartbeat = next(
            s for s in self.services.services if isinstance(s, Heartbeat)
        )
        heartbeat.renewed(membership.registered_at)  # the lease runs from the registration
        self.failover = failover
        failover.attach(
            pool, self.jobs, worker_id=worker_id, stop=stop, on_checked=heartbeat.renew_withheld
        )
        self.fence = SelfFence(
            heartbeat, lease=worker.lease, on_fence=self._fence, on_renewed=self._unfence
        )
        # Started here: this object exists only while the worker runs.
        self._completer_task = asyncio.create_task(self.completer.run(), name="pgqueue-completer")
        self._tasks = [asyncio.create_task(self.listener.run(), name="pgqueue-listener")]
        self.services.start()
        self.fence.start()

    async def close(self, log: Any, grace_period: float) -> bool:
        """Write the outcomes left, stop the rest, leave; whether task threads were
        abandoned (a sync task outlived an immediate stop)."""
        self.fence.close()
        self.failover.close()
        await self.completer.close()
        try:
            await asyncio.wait_for(self._completer_task, timeout=max(grace_period, 10.0))
        except TimeoutError:
            log.exception("completions_not_written", outstanding=self.completer.outstanding())
        await self.claimer.settle()
        for task in self._tasks:  # the listener, and a rejoin still trying
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.services.stop()
        await self._membership.deregister(self.pool, log)
        await self.pool.close()
        interrupting = self.jobs.interrupting
        await self.runner.close(kill=interrupting)
        busy = any(self.threads._threads) and interrupting  # noqa: SLF001
        self.threads.shutdown(wait=not busy, cancel_futures=True)
        return busy

    def counters(self) -> dict[str, int]:
        return {
            "completion_writes": self.completer.batches,
            "claims": self.claimer.claims,
            "full_scans": self.claimer.full_scans,
            "idle_checks": self.claimer.idle_checks,
            "refills": self.completer.refills,
            "failovers": self.failover.failovers,
            **self.services.counters(),
        }

    def _declared_dead(self, dead_id: str) -> None:
        """Another worker found this one silent for a lease and rescued its jobs (it was
        frozen, or cut off from the database). Give those jobs up, and come back under
        a new id; the claims wait until the new entry is in."""
        if dead_id != self._membership.worker_id:
            return
        self.registered.clear()
        self._rejoining = True
        self._log.error("worker_rejoining", old_worker_id=dead_id, running=len(self.jobs.running))
        self.jobs.abandon_all("this worker was declared dead")
        self._membership.renew()
        self._tasks.append(asyncio.create_task(self._rejoin(), name="pgqueue-rejoin"))

    async def _rejoin(self) -> None:
        if await self._membership.rejoin(self.pool, self.stop, self._log):
            self._heartbeat.renewed(self._membership.registered_at)
            self._rejoining = False
            if not self.fence.fenced:  # else the fence lifts once it sees the renewal
                self.registered.set()

    def _fence(self, silent_for: float) -> None:
        """No beat of ours reached the database for most of a lease (cut off, frozen):
        a rescue may hand our jobs to others as soon as the lease is out. Give them up
        first, as if declared dead, and claim nothing until a beat is taken again."""
        self.registered.clear()
        self._log.error(
            "worker_fenced",
            worker_id=self._membership.worker_id,
            seconds_since_beat=round(silent_for, 3),
            lease=self.fence.lease,
            running=len(self.jobs.running),
        )
        self.jobs.abandon_all("this worker fenced itself: no heartbeat for most of its lease")

    def _unfence(self) -> None:
        """A beat sent after the fence was taken: the database answers again. If no one
        declared us dead meanwhile, the jobs given up are still ours in the database,
        running for no one: they go back to the queue before the next claim (as if
        never claimed: a job that ran when the link went is no one's fault). If we
        were, they were rescued and we rejoined: that hand-back finds nothing."""
        self._log.info("worker_unfenced", worker_id=self._membership.worker_id)
        self._hand_back.outcome_lost()
        if not self._rejoining:
            self.registered.set()

    async def _poll_cancellations(self) -> None:
        """The fallback for a lost cancel NOTIFY: ask which running jobs were cancelled."""
        running = self.jobs.running
        if not running:
            return
        try:
            async with acquire(self.pool) as conn:
                rows = await driver.cancelled_among(AsyncpgExecutor(conn), list(running))
        except CLAIM_RETRY_ERRORS as exc:
            self._log.warning("cancel_poll_failed", error=repr(exc))
            return
        for job_id in rows:
            self.jobs.cancel(job_id)


def _call_on_loop(
    loop: asyncio.AbstractEventLoop, callback: Callable[[str], None], arg: str
) -> None:
    loop.call_soon_threadsafe(callback, arg)
