"""The retry loop of a call on the Queue's own connections: the async source of
``pool_calls_sync.py`` (see ``scripts/async_to_sync.py``), a mixin of
:class:`~pgqueue.pools.AsyncConnections`."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, TypeVar

from pgqueue.call_retry import ACQUIRING, DONE, RUNNING, CallRetrier, outcome_unknown, retry_reason
from pgqueue.dberrors import connection_failed

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AbstractAsyncContextManager

    from pgqueue.executors import AsyncExecutor

T = TypeVar("T")


class PoolCalls:
    """``run``, on top of the class's ``connection()`` and ``executor()``."""

    _pool_timeout: float

    def connection(self, deadline: float | None = None) -> AbstractAsyncContextManager[Any]:
        """A live connection, waiting for one at most until ``deadline``."""
        raise NotImplementedError

    def executor(self, conn: Any) -> AsyncExecutor:
        """The executor pgqueue's statements run through on one of these connections."""
        raise NotImplementedError

    async def run(
        self, op: Callable[[AsyncExecutor], Awaitable[T]], *, idempotent: bool = False
    ) -> T:
        """``op`` on one of our connections, made again (with backoff, until the pool
        timeout) when that is safe: the database could not be reached or the connection
        was found dead before anything was sent, or the server rolled the statement back
        (see :data:`~pgqueue.dberrors.RETRY_SAFE_SQLSTATES`); and, when ``idempotent``,
        after a connection lost mid-statement too. Otherwise a lost connection raises
        :class:`~pgqueue.OutcomeUnknownError`."""
        retrier = CallRetrier(self._pool_timeout)
        while True:
            stage = ACQUIRING
            try:
                async with self.connection(retrier.deadline) as conn:
                    stage = RUNNING
                    result = await op(self.executor(conn))
                    stage = DONE
            except Exception as exc:
                if stage == DONE:  # only giving the connection back failed
                    return result
                reason = retry_reason(exc, stage, idempotent=idempotent)
                if reason is None:
                    if stage == RUNNING and connection_failed(exc):
                        raise outcome_unknown(exc) from exc
                    raise
                await asyncio.sleep(retrier.pause(exc, reason))
                continue
            retrier.succeeded()
            return result
