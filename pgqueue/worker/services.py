"""Maintenance services: a worker's periodic duties beside the claim loop.

Each duty (the heartbeat and rescue, pruning, and whatever comes next) is a
:class:`PeriodicService`: a name, an interval (with jitter, so that workers started
together do not all act at once), the advisory lock that elects the one worker doing
its elected part (:mod:`pgqueue.locks`; None when every worker does every round), what
it does in one round, and the counters it reports when the worker stops. A service runs
either on the worker's event loop (:class:`LoopService`, async rounds) or in a thread of
its own (:class:`ThreadService`, blocking rounds: the heartbeat, so that a task blocking
the loop cannot stop a live worker's beats).

A worker builds its services from :data:`pgqueue.worker.maintenance.MAINTENANCE`, a list of
factories, and hands them to one :class:`ServiceRunner`, which runs the rounds, logs a
failed round as ``<name>_failed`` (and ``<name>_restored`` once one succeeds again) and
goes on: a maintenance duty never stops because one round failed.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
import threading
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pgqueue.locks import AdvisoryLock


class PeriodicService(abc.ABC):
    """One maintenance duty, done in rounds every ``interval`` seconds."""

    #: The duty's name: its log events (``<name>_failed``) and its thread or task.
    name: ClassVar[str]
    #: The lock whose holder does the elected part of a round; None: no election.
    election: ClassVar[AdvisoryLock | None] = None
    #: Each wait is ``interval`` times a random factor from ``1 - jitter`` to 1.
    jitter: ClassVar[float] = 0.0

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.log = structlog.get_logger("pgqueue.worker")
        self.failed_event = f"{self.name}_failed"
        self.restored_event = f"{self.name}_restored"

    def next_wait(self, rng: random.Random) -> float:
        return self.interval * rng.uniform(1.0 - self.jitter, 1.0) if self.jitter else self.interval

    def after_failure(self, exc: Exception) -> None:  # noqa: B027 - an optional hook
        """Called after a round raised ``exc`` (to drop a broken connection, say)."""

    def counters(self) -> dict[str, int]:
        """What the service has done, for the worker's ``worker_stopped`` line."""
        return {}


class LoopService(PeriodicService):
    """A service whose rounds run on the worker's event loop."""

    @abc.abstractmethod
    async def run_round(self) -> None: ...


class ThreadService(PeriodicService):
    """A service whose rounds run in a thread of its own, never held up by the loop."""

    @abc.abstractmethod
    def run_round(self) -> None: ...

    def close(self) -> None:
        """Release what the rounds opened; called in the service's thread at the end."""


class ServiceRunner:
    """Runs a worker's services from :meth:`start` until :meth:`stop`."""

    def __init__(self, services: Sequence[PeriodicService]) -> None:
        self.services = list(services)
        self._tasks: list[asyncio.Task[None]] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    def start(self) -> None:
        """Start every service's rounds (on the running loop, or in its thread)."""
        for service in self.services:
            if isinstance(service, ThreadService):
                thread = threading.Thread(
                    target=self._in_thread, args=(service,), name=f"pgqueue-{service.name}"
                )
                thread.daemon = True  # never holds up the interpreter's exit
                thread.start()
                self._threads.append(thread)
            elif isinstance(service, LoopService):
                task = asyncio.create_task(self._on_loop(service), name=f"pgqueue-{service.name}")
                self._tasks.append(task)
            else:
                raise TypeError(f"{service!r} is neither a LoopService nor a ThreadService")

    async def stop(self, timeout: float = 10.0) -> None:
        """End every service: a round on the loop is cancelled, a thread finishes its
        round (waited for up to ``timeout`` seconds)."""
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for thread in self._threads:
            await asyncio.to_thread(thread.join, timeout)

    def counters(self) -> dict[str, int]:
        return {k: v for service in self.services for k, v in service.counters().items()}

    async def _on_loop(self, service: LoopService) -> None:
        rng = random.Random()  # noqa: S311 - jitter, not secrets
        failures = 0
        while True:
            await asyncio.sleep(service.next_wait(rng))
            try:
                await service.run_round()
            except Exception as exc:  # reported; the next round tries again
                failures = _failed(service, exc, failures)
            else:
                failures = _succeeded(service, failures)

    def _in_thread(self, service: ThreadService) -> None:
        rng = random.Random()  # noqa: S311 - jitter, not secrets
        failures = 0
        try:
            while not self._stopping.wait(service.next_wait(rng)):
                try:
                    service.run_round()
                except Exception as exc:  # reported; the next round tries again
                    failures = _failed(service, exc, failures)
                else:
                    failures = _succeeded(service, failures)
        finally:
            service.close()


def _failed(service: PeriodicService, exc: Exception, failures: int) -> int:
    # Whatever went wrong, the service goes on: a worker whose heartbeat stopped would
    # keep claiming while its jobs were rescued from it. While the database is away (a
    # restart) each round tries again, so the duty is back soon after the database is.
    failures += 1
    fields: dict[str, Any] = {"error": repr(exc), "sqlstate": getattr(exc, "sqlstate", None)}
    service.log.warning(service.failed_event, failures=failures, **fields)
    service.after_failure(exc)
    return failures


def _succeeded(service: PeriodicService, failures: int) -> int:
    if failures:
        service.log.info(service.restored_event, failures=failures)
    return 0
