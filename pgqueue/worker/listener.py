"""The worker's notifier: one LISTEN connection for wake-ups and cancel requests.

Enqueues send ``NOTIFY pgqueue_enqueued, '<queue>'`` and ``pgqueue.cancel_job`` sends
``NOTIFY pgqueue_cancel, '<id>'``. The listener turns them into calls on the worker, and
every ``poll_interval`` seconds runs the worker's poll, the fallback for a notification
that was lost. A dropped connection is re-established with backoff; while it is down
the listener says so (``listening`` is clear) and the worker's own poll keeps claiming.

The LISTEN connection goes to :func:`pgqueue.connect.listen_dsn`: the worker's DSN, or
the direct one given beside a transaction pooler (``--listen-dsn``), where a LISTEN
would be lost with the server connection it ran on. With a pooler and no direct DSN the
listener says once that the worker relies on polling (``listener_polling_only``) and
only polls (for cancel requests; the claim loop polls for jobs on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from pgqueue.connect import asyncpg_connect, listen_dsn
from pgqueue.dberrors import DATABASE_ERRORS, reconnect_delay

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import asyncpg

T = TypeVar("T")

ENQUEUED_CHANNEL = "pgqueue_enqueued"
CANCEL_CHANNEL = "pgqueue_cancel"


class Listener:
    def __init__(
        self,
        dsn: str,
        *,
        queues: frozenset[str],
        poll_interval: float,
        stop: asyncio.Event,
        on_enqueued: Callable[[], None],
        on_cancel: Callable[[int], None],
        poll: Callable[[], Awaitable[None]],
    ) -> None:
        self._dsn = dsn
        self._queues = queues
        self._poll_interval = poll_interval
        self._stop = stop
        self._on_enqueued = on_enqueued
        self._on_cancel_request = on_cancel
        self._poll = poll
        self._log = structlog.get_logger("pgqueue.worker")
        # Set while the LISTEN connection is up.
        self.listening = asyncio.Event()

    async def run(self) -> None:
        """Hold a LISTEN connection until stopped; re-establish it whenever it drops.
        Only poll when there is no DSN to LISTEN on (behind a transaction pooler)."""
        dsn = listen_dsn(self._dsn)
        if dsn is None:
            await self._poll_only()
            return
        await self._listen(dsn)

    async def _poll_only(self) -> None:
        self._log.warning(
            "listener_polling_only",
            reason="the DSN leads to a transaction pooler, and no direct DSN to LISTEN on "
            "was given: wake-ups and cancel requests wait for the poll",
            poll_interval=self._poll_interval,
            hint="give --listen-dsn (PGQUEUE_LISTEN_DSN): a direct DSN to the same database",
        )
        while not self._stop.is_set():
            await first_of(self._stop, timeout=self._poll_interval)
            if not self._stop.is_set():
                await self._poll()

    async def _listen(self, dsn: str) -> None:
        failures = 0
        while not self._stop.is_set():
            conn: asyncpg.Connection[Any] | None = None
            try:
                conn = await asyncpg_connect(dsn)
                lost = asyncio.Event()
                conn.add_termination_listener(functools.partial(set_event, lost))
                await conn.add_listener(ENQUEUED_CHANNEL, self._on_notify)
                await conn.add_listener(CANCEL_CHANNEL, self._on_cancel)
                failures = 0
                # Anything enqueued while we were not listening: look now.
                self._on_enqueued()
                self.listening.set()
                self._log.info("listener_connected", backend_pid=conn.get_server_pid())
                while not conn.is_closed() and not lost.is_set():
                    await first_of(lost, timeout=self._poll_interval)
                    await self._poll()
                self.listening.clear()
                self._log.warning("listener_lost")
            except DATABASE_ERRORS as exc:  # a server error too (too many connections)
                self.listening.clear()
                failures += 1
                delay = reconnect_delay(failures)
                self._log.warning(
                    "listener_failed", error=repr(exc), attempt=failures, retry_in=round(delay, 3)
                )
                await first_of(self._stop, timeout=delay)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        if payload in self._queues:
            self._on_enqueued()

    def _on_cancel(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            job_id = int(str(payload))
        except ValueError:
            return
        self._on_cancel_request(job_id)


def set_event(event: asyncio.Event, *_args: object) -> None:
    event.set()


async def first_of(*events: asyncio.Event, timeout: float | None) -> None:
    """Wait until any of the events is set, or the timeout passes."""
    waiters = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def unless_set(stop: asyncio.Event, awaitable: Awaitable[T]) -> T | None:
    """``awaitable``'s result, or None if ``stop`` is set first: then it is cancelled
    (a connection attempt to a server that never answers must not hold up a stop)."""
    task = asyncio.ensure_future(awaitable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, *DATABASE_ERRORS):
                await task
    if task.cancelled():
        return None
    return task.result()
