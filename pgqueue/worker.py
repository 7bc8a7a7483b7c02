"""The worker: claims jobs in batches, runs them, reports their outcomes in batches.

One asyncio loop per process. Async tasks run on it; plain functions run in a thread
pool of ``concurrency`` threads, so they never block the loop. At most ``concurrency``
jobs are in flight. An idle worker sleeps on LISTEN and is woken by the NOTIFY that an
enqueue's commit sends; a poll every ``poll_interval`` seconds is the safety net for a
lost notification or a dropped LISTEN connection. Beside it run the listener
(``listener.py``), the heartbeat and rescue (``heartbeat.py``) and pruning
(``retention.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import os
import signal
import socket
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import structlog

from pgqueue import driver
from pgqueue.completer import Completer, reconnect_delay
from pgqueue.connect import asyncpg_pool
from pgqueue.context import RunningJob
from pgqueue.dberrors import DATABASE_ERRORS, connection_failed
from pgqueue.errors import PermanentError, Snooze
from pgqueue.execution import (
    CommitOutcomeUnknownError,
    OwnershipLostError,
    ProgressWriter,
    Ran,
    TaskRunner,
)
from pgqueue.executors import AsyncpgExecutor
from pgqueue.heartbeat import Heartbeat
from pgqueue.jobs import ClaimedJob, validate_queue_name
from pgqueue.listener import Listener, first_of, unless_set
from pgqueue.pools import acquire, keep_session
from pgqueue.retention import Pruner, Retention
from pgqueue.retry import RetryPolicy, retry_in

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import asyncpg

    from pgqueue.app import Queue
    from pgqueue.tasks import Task

# However sure a worker is of what it holds, it checks against the database this often
# (one indexed statement): a job it lost track of, whatever the cause, goes back to the
# queue within this time instead of staying running under a live worker for good.
RECONCILE_SECONDS = 30.0
# A claim that fails with one of these claimed nothing: back off and claim again.
CLAIM_RETRY_ERRORS = DATABASE_ERRORS
_DEFAULT_RETRY = RetryPolicy()
_DEFAULT_RETENTION = Retention()


@dataclasses.dataclass(slots=True)
class WorkerStats:
    claimed: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    released: int = 0
    interrupted: int = 0
    snoozed: int = 0


def error_entry(attempt: int, exc: BaseException) -> str:
    """The JSON of one ``errors`` entry (the database adds ``at``)."""
    return json.dumps(
        {
            "attempt": attempt,
            "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
            "message": storable_text(str(exc) or type(exc).__name__),
            "traceback": storable_text("".join(traceback.format_exception(exc))),
        }
    )


def storable_text(text: str) -> str:
    """Text jsonb stores: a task's error message is whatever it raised, and a NUL or a
    lone surrogate in it would make the database refuse the whole batch of outcomes
    it is written with. A NUL becomes U+FFFD, a lone surrogate "?"."""
    if text.isascii() and "\x00" not in text:
        return text
    return text.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


class _Interrupted(Exception):  # noqa: N818 - it is a reason, recorded as the error
    """A job still running when the grace period ended."""


class Worker:
    def __init__(
        self,
        app: Queue,
        *,
        dsn: str | None = None,
        queues: Sequence[str] | None = None,
        concurrency: int = 10,
        batch_size: int = 100,
        poll_interval: float = 2.0,
        grace_period: float = 30.0,
        lease: float = 15.0,
        processes: int | None = None,
        retention: Retention | None = _DEFAULT_RETENTION,
        prune_interval: float = 60.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
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
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.grace_period = grace_period
        # A running job is this worker's for as long as it heartbeats (every fifth of the
        # lease); a worker silent for a whole lease has its jobs rescued by another. Both
        # are recorded in pgqueue.workers: the rescue judges this worker by its own lease.
        self.lease = lease
        self.heartbeat_interval = lease / 5
        # The process pool of process=True tasks, started with the first such job.
        self.processes = processes or min(concurrency, os.cpu_count() or 1)
        # Finished jobs past their retention are pruned by one worker at a time, every
        # prune_interval seconds; None (or Retention.forever()) leaves it to others.
        self.retention = retention if retention is not None and retention.prunes else None
        self.prune_interval = prune_interval
        self.pruner: Pruner | None = None
        self.worker_id = str(uuid.uuid4())
        self.heartbeat: Heartbeat | None = None
        self.stats = WorkerStats()
        self._queue_set = frozenset(self.queues)
        self._log = structlog.get_logger("pgqueue.worker")
        self._running: dict[int, asyncio.Task[None]] = {}
        self._threads: ThreadPoolExecutor | None = None
        self._runner: TaskRunner | None = None
        self._progress: ProgressWriter | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._slot_freed: asyncio.Event | None = None
        self._interrupting = False
        self._registered: asyncio.Event | None = None
        # Jobs given up when this worker learnt it had been declared dead: rescued and
        # perhaps running elsewhere already, so their outcomes are not ours to write.
        self._lost: set[int] = set()
        # Jobs cancelled while running here (by NOTIFY or the poll): already marked
        # cancelled in the database, so their outcomes are not written.
        self._cancelled: set[int] = set()
        self._claim_unsure = False
        self._reconcile_at = time.monotonic() + RECONCILE_SECONDS
        self._contexts: dict[int, RunningJob] = {}
        self._completer: Completer | None = None
        # Set while the worker is listening for wake-ups (its LISTEN connection is up),
        # and while it is idle: its last claim found less than it could take.
        self.listening: asyncio.Event | None = None
        self.idle: asyncio.Event | None = None
        self.abandoned_threads = False

    @property
    def dsn(self) -> str:
        return self._dsn or self.app.dsn

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
        if again:
            self._interrupting = True
            for task in self._running.values():
                task.cancel()

    # --- main --------------------------------------------------------------------------

    async def run(self) -> WorkerStats:
        """Work until :meth:`stop` is called; returns what was done."""
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self.idle = asyncio.Event()
        self._registered = asyncio.Event()
        log = self._log.bind(queues=self.queues, concurrency=self.concurrency)
        pool = await self._connect(log)
        if pool is None:  # stopped before the database ever answered
            return self.stats
        self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="pgqueue-task")
        self._progress = ProgressWriter(pool, asyncio.get_running_loop())
        self._runner = TaskRunner(
            self.dsn,
            threads=self._threads,
            concurrency=self.concurrency,
            processes=self.processes,
            lease=self.lease,
        )
        self._completer = Completer(
            pool, on_requeued=self._wake.set, on_dropped=self._forget_outcomes
        )
        completer_task = asyncio.create_task(self._completer.run(), name="pgqueue-completer")
        listener = Listener(
            self.dsn,
            queues=self._queue_set,
            poll_interval=self.poll_interval,
            stop=self._stop,
            on_enqueued=self._wake.set,
            on_cancel=self._cancel_running,
            poll=self._poll_cancellations,
        )
        self.listening = listener.listening
        maintenance = [asyncio.create_task(listener.run(), name="pgqueue-listener")]
        if self.retention is not None:
            self.pruner = Pruner(
                pool,
                self.retention,
                interval=self.prune_interval,
                stopping=self._stop.is_set,
                queues=self.queues,
            )
            maintenance.append(asyncio.create_task(self.pruner.run(), name="pgqueue-pruner"))
        loop = asyncio.get_running_loop()
        self.heartbeat = Heartbeat(
            self.dsn,
            worker_id=lambda: self.worker_id,
            interval=self.heartbeat_interval,
            lease=self.lease,
            on_declared_dead=functools.partial(_call_on_loop, loop, self._declared_dead),
        )
        self.heartbeat.start()
        log.info(
            "worker_started",
            worker_id=self.worker_id,
            poll_interval=self.poll_interval,
            lease=self.lease,
        )
        try:
            await self._claim_loop(pool)
        finally:
            await self._drain()
            await self._completer.close()
            try:
                await asyncio.wait_for(completer_task, timeout=max(self.grace_period, 10.0))
            except TimeoutError:
                log.exception("completions_not_written", outstanding=self._completer.outstanding())
            for task in maintenance:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self.heartbeat.stop()
            await asyncio.to_thread(self.heartbeat.join, 10.0)
            await self._deregister(pool, log)
            await pool.close()
            await self._runner.close(kill=self._interrupting)
            busy = any(self._threads._threads) and self._interrupting  # noqa: SLF001
            self.abandoned_threads = busy
            self._threads.shutdown(wait=not busy, cancel_futures=True)
            log.info("worker_stopped", **self._stats_dict())
        return self.stats

    async def _connect(self, log: Any) -> asyncpg.Pool[Any] | None:
        """The worker's pool, waiting (with backoff) for a database that is not up yet,
        as happens when workers and the database start together."""
        assert self._stop is not None  # noqa: S101 - set in run()
        failures = 0
        while not self._stop.is_set():
            try:
                # Raced against a stop: a server that never answers must not hold up
                # SIGTERM for a connect timeout (asyncpg cleans up what it opened).
                pool = await unless_set(
                    self._stop, asyncpg_pool(self.dsn, min_size=2, max_size=4, reset=keep_session)
                )
            except DATABASE_ERRORS as exc:
                if not connection_failed(exc):
                    raise  # refused for good: an unknown database or role, a bad password
                failures += 1
                delay = reconnect_delay(failures)
                log.warning(
                    "database_unreachable",
                    error=repr(exc),
                    attempt=failures,
                    retry_in=round(delay, 3),
                )
                await first_of(self._stop, timeout=delay)
            else:
                if pool is None:  # stopped while connecting
                    return None
                self._pool = pool
                if await unless_set(self._stop, self._register(pool, log)):
                    return pool
                await pool.close()
                failures += 1  # not in a tight loop: back off as for a connection
                await first_of(self._stop, timeout=reconnect_delay(failures))
        return None

    async def _register(self, pool: asyncpg.Pool[Any], log: Any) -> bool:
        """Enter this worker in pgqueue.workers; its claims wait until it is there."""
        assert self._registered is not None  # noqa: S101 - set in run()
        try:
            async with acquire(pool) as conn:
                await driver.register_worker(
                    AsyncpgExecutor(conn),
                    self.worker_id,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    queues=self.queues,
                    concurrency=self.concurrency,
                    lease=self.lease,
                    heartbeat_interval=self.heartbeat_interval,
                )
        except CLAIM_RETRY_ERRORS as exc:
            log.warning("worker_register_failed", error=repr(exc))
            return False
        self._registered.set()
        return True

    async def _deregister(self, pool: asyncpg.Pool[Any], log: Any) -> None:
        try:
            async with acquire(pool) as conn:
                await driver.deregister_worker(AsyncpgExecutor(conn), self.worker_id)
        except CLAIM_RETRY_ERRORS as exc:  # the rescue drops the row after our lease
            log.warning("worker_deregister_failed", error=repr(exc))

    def _declared_dead(self, dead_id: str) -> None:
        """Another worker found this one silent for a lease and rescued its jobs (it was
        frozen, or cut off from the database). Give those jobs up, and come back under
        a new id; the claims wait until the new entry is in."""
        if dead_id != self.worker_id or self._registered is None:
            return
        self._registered.clear()
        self._log.error("worker_rejoining", old_worker_id=dead_id, running=len(self._running))
        for job_id, task in self._running.items():
            self._lost.add(job_id)
            task.cancel()
        self.worker_id = str(uuid.uuid4())
        self._rejoin = asyncio.create_task(self._rejoin_loop())

    async def _rejoin_loop(self) -> None:
        assert self._stop is not None  # noqa: S101
        failures = 0
        while not self._stop.is_set() and self._pool is not None:
            if await self._register(self._pool, self._log):
                self._log.info("worker_rejoined", worker_id=self.worker_id)
                return
            failures += 1
            await first_of(self._stop, timeout=reconnect_delay(failures))

    def _stats_dict(self) -> dict[str, int]:
        writes = self._completer.batches if self._completer is not None else 0
        pruned = self.pruner.pruned if self.pruner is not None else 0
        return {**dataclasses.asdict(self.stats), "completion_writes": writes, "pruned": pruned}

    async def _claim_loop(self, pool: asyncpg.Pool[Any]) -> None:
        assert self._stop is not None  # noqa: S101 - all three are set in run()
        assert self._wake is not None  # noqa: S101
        assert self._slot_freed is not None  # noqa: S101
        assert self.idle is not None  # noqa: S101
        assert self._registered is not None  # noqa: S101
        stop, wake, slot_freed = self._stop, self._wake, self._slot_freed
        failures = 0
        while not stop.is_set():
            if not self._registered.is_set():
                await first_of(self._registered, stop, timeout=None)
                continue
            free = self.concurrency - len(self._running)
            if free <= 0:
                slot_freed.clear()
                await first_of(slot_freed, stop, timeout=None)
                continue
            want = min(free, self.batch_size)
            # Clear before claiming: a NOTIFY that lands during the claim must not be lost.
            wake.clear()
            try:
                async with acquire(pool) as conn:
                    ex = AsyncpgExecutor(conn)
                    if self._claim_unsure or time.monotonic() >= self._reconcile_at:
                        await self._hand_back_unknown(ex)
                    jobs = await driver.claim(ex, self.queues, want, self.worker_id)
                failures = 0
            except CLAIM_RETRY_ERRORS as exc:
                # A lost connection, or an error of the server's (a statement timeout, a
                # missing schema). The claim may even have committed with its answer
                # lost: before the next one, hand back whatever we hold without knowing.
                self._claim_unsure = True
                failures += 1
                delay = reconnect_delay(failures)
                self._log.warning("claim_failed", error=repr(exc), retry_in=round(delay, 3))
                await first_of(stop, timeout=delay)
                continue
            if stop.is_set():
                await self._release(pool, jobs)
                return
            self.stats.claimed += len(jobs)
            for job in jobs:
                self._running[job.id] = asyncio.create_task(self._execute(job))
            if len(jobs) < want:
                idle_for = await self._idle_timeout(pool)
                self.idle.set()
                await first_of(wake, stop, timeout=idle_for)
                self.idle.clear()

    def _forget_outcomes(self) -> None:
        """The completer gave up writing some outcomes: hand their jobs back before the
        next claim, like those of a claim whose answer was lost."""
        self._claim_unsure = True
        if self._wake is not None:
            self._wake.set()

    async def _hand_back_unknown(self, ex: AsyncpgExecutor) -> None:
        """Jobs the database says this worker holds, but that it is neither running nor
        about to report on: claimed by a claim whose answer never arrived, or whose
        outcome was lost. They go back as if never claimed. Run before a claim after
        such a loss, and every RECONCILE_SECONDS whatever happened."""
        assert self._completer is not None  # noqa: S101 - set in run()
        # Cleared before the snapshot of what we know, not after the release: an outcome
        # lost while the release is in flight (a job among ``known`` now, unknown by the
        # time the release answers) must bring another pass, or its job would stay
        # running under this live worker for good. A failed release sets it again.
        unsure, self._claim_unsure = self._claim_unsure, False
        known = [*self._running, *self._completer.pending_ids()]
        released = await driver.release_unknown(ex, self.worker_id, known)
        self._reconcile_at = time.monotonic() + RECONCILE_SECONDS
        if released:
            self.stats.released += len(released)
            self._log.warning(
                "unknown_jobs_released",
                job_ids=released,
                reason="a claim or an outcome was lost" if unsure else "periodic check",
            )

    async def _idle_timeout(self, pool: asyncpg.Pool[Any]) -> float:
        """Sleep until the poll comes round, or until the next delayed job is due."""
        try:
            async with acquire(pool) as conn:
                due_in = await driver.seconds_until_next_job(AsyncpgExecutor(conn), self.queues)
        except CLAIM_RETRY_ERRORS:
            return self.poll_interval  # the next claim will say what is wrong
        if due_in is None:
            return self.poll_interval
        return min(max(due_in, 0.005), self.poll_interval)

    async def _release(self, pool: asyncpg.Pool[Any], jobs: list[ClaimedJob]) -> None:
        """Claimed but never started (the stop came during the claim): hand them back."""
        if not jobs:
            return
        try:
            async with acquire(pool) as conn:
                await driver.release(AsyncpgExecutor(conn), [j.id for j in jobs], self.worker_id)
        except CLAIM_RETRY_ERRORS as exc:  # handed back by the rescue once we deregister
            self._log.warning("jobs_release_failed", job_ids=[j.id for j in jobs], error=repr(exc))
            return
        self.stats.released += len(jobs)
        self._log.info("jobs_released", job_ids=[j.id for j in jobs])

    # --- one job -----------------------------------------------------------------------

    async def _execute(self, job: ClaimedJob) -> None:
        log = self._log.bind(job_id=job.id, queue=job.queue, task=job.task, attempt=job.attempt)
        task = self.app.tasks.get(job.task)
        started = time.perf_counter()
        log.info("job_started")
        try:
            ran = await self._call(task, job)
        except asyncio.CancelledError:
            if not self._after_cancellation(log, task, job):
                raise
        except Snooze as snooze:
            assert self._completer is not None  # noqa: S101
            self._completer.snoozed(job.id, job.attempt, snooze.after)
            self.stats.snoozed += 1
            log.info("job_snoozed", after=snooze.after)
        except OwnershipLostError:
            # Rescued or cancelled while it ran: its transaction was rolled back.
            log.warning("job_abandoned", reason="no longer this worker's job at commit")
        except CommitOutcomeUnknownError as exc:
            # Committed or not, we cannot tell: if the job is still ours in the
            # database it goes back to the queue before the next claim.
            log.warning("job_outcome_unknown", error=str(exc))
            self._forget_outcomes()
        except Exception as exc:
            self._record_failure(log, task, job, exc)
        else:
            assert self._completer is not None  # noqa: S101
            if not ran.committed:
                self._completer.succeeded(job.id, job.attempt, ran.result_json)
            self.stats.succeeded += 1
            log.info("job_succeeded", duration_ms=round((time.perf_counter() - started) * 1e3, 3))
        finally:
            del self._running[job.id]
            self._contexts.pop(job.id, None)
            assert self._slot_freed is not None  # noqa: S101
            self._slot_freed.set()

    def _after_cancellation(self, log: Any, task: Task[Any, Any] | None, job: ClaimedJob) -> bool:
        """Account for a job whose run was cancelled; False if the cancellation was not
        ours (the worker's own task is being cancelled) and must go on up."""
        if job.id in self._cancelled:
            self._cancelled.discard(job.id)
            log.info("job_cancelled")
        elif job.id in self._lost:
            self._lost.discard(job.id)
            log.warning("job_abandoned", reason="this worker was declared dead")
        elif self._interrupting:
            self.stats.interrupted += 1
            self._record_failure(
                log, task, job, _Interrupted("worker stopped before the job finished")
            )
        else:
            return False
        return True

    async def _call(self, task: Task[Any, Any] | None, job: ClaimedJob) -> Ran:
        if task is None:
            raise PermanentError(
                f"unknown task {job.task!r}: no task of that name is registered with this "
                "worker's Queue"
            )
        if not task.accepts(job.args):
            try:
                task.signature.bind(**job.args)
            except TypeError as exc:
                raise PermanentError(f"job arguments do not match task {job.task}: {exc}") from exc
        running = RunningJob(
            job.id, job.queue, job.task, job.attempt, job.max_attempts, _progress=self._progress
        )
        self._contexts[job.id] = running
        assert self._runner is not None  # noqa: S101 - set in run()
        return await self._runner.run(task, job, running, self.worker_id)

    def _record_failure(
        self,
        log: Any,
        task: Task[Any, Any] | None,
        job: ClaimedJob,
        exc: BaseException,
    ) -> None:
        assert self._completer is not None  # noqa: S101
        permanent = isinstance(exc, PermanentError)
        if isinstance(exc, _Interrupted):
            # Not the task's fault: come back at once if attempts are left.
            wait = None if job.attempt >= job.max_attempts else 0.0
        else:
            policy = task.retry if task is not None else _DEFAULT_RETRY
            wait = retry_in(job.attempt, job.max_attempts, policy, permanent=permanent)
        self._completer.failed(job.id, job.attempt, error_entry(job.attempt, exc), wait)
        message = f"{type(exc).__name__}: {exc}"
        if wait is None:
            self.stats.failed += 1
            log.error("job_failed", error=message, permanent=permanent)
        else:
            self.stats.retried += 1
            log.warning("job_retry_scheduled", error=message, retry_in=round(wait, 3))

    # --- shutdown ----------------------------------------------------------------------

    async def _drain(self) -> None:
        if not self._running:
            return
        tasks = list(self._running.values())
        self._log.info("worker_draining", running=len(tasks), grace_period=self.grace_period)
        _, pending = await asyncio.wait(tasks, timeout=self.grace_period or None)
        if self.grace_period == 0:
            pending = {t for t in tasks if not t.done()}
        if pending:
            self._interrupting = True
            for t in pending:
                t.cancel()
            await asyncio.wait(pending, timeout=5.0)

    # --- cancel requests ---------------------------------------------------------------

    def _cancel_running(self, job_id: int) -> None:
        task = self._running.get(job_id)
        if task is None or job_id in self._cancelled:
            return
        self._cancelled.add(job_id)
        context = self._contexts.get(job_id)
        if context is not None:
            context.request_cancel()  # what a sync task can see
        task.cancel()

    async def _poll_cancellations(self) -> None:
        """The fallback for a lost cancel NOTIFY: ask which running jobs were cancelled."""
        if not self._running or self._pool is None:
            return
        try:
            async with acquire(self._pool) as conn:
                rows = await driver.cancelled_among(AsyncpgExecutor(conn), list(self._running))
        except CLAIM_RETRY_ERRORS as exc:
            self._log.warning("cancel_poll_failed", error=repr(exc))
            return
        for job_id in rows:
            self._cancel_running(job_id)


def _call_on_loop(
    loop: asyncio.AbstractEventLoop, callback: Callable[[str], None], arg: str
) -> None:
    loop.call_soon_threadsafe(callback, arg)
