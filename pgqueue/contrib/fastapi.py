# ruff: noqa: E402
"""FastAPI: a lifespan that closes the app's :class:`~pgqueue.Queue` when the app stops,
a dependency that hands it to endpoints, and the pgqueue service (API and dashboard) as
a sub-application to mount under a path of the app.

::

    queue = pgqueue.Queue(DSN)
    pgq = PgQueue(queue)
    app = FastAPI(lifespan=pgq.lifespan)
    app.mount("/pgqueue", pgq.service())      # optional: /pgqueue/dashboard, /pgqueue/v1

    @app.post("/signup")
    async def signup(queue: QueueDep) -> dict: ...

The mounted service keeps its own API keys (``pgqueue keys create``), as under
``pgqueue api``. Starlette runs no lifespan of a mounted app: ``pgq.lifespan`` starts
and stops the service with the app (without it, the service answers 503).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated, Any

from pgqueue.extras import require

# Without the extra: one line naming what to install, not an ImportError from inside
# (so the imports below come after it: E402 is off for this file for that reason).
require("fastapi", "pgqueue.contrib.fastapi")

from fastapi import Depends, Request

from pgqueue.app import Queue
from pgqueue.contrib import MountedService

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from fastapi import FastAPI

__all__ = ["PgQueue", "QueueDep", "get_queue"]

STATE_KEY = "pgqueue_queue"


class PgQueue:
    """The app's queue and, once :meth:`service` is called, its mounted service."""

    def __init__(self, queue: Queue) -> None:
        self.queue = queue
        self._services: list[MountedService] = []

    def service(self, settings: Any = None) -> MountedService:
        """The pgqueue service as an ASGI app for ``app.mount(path, ...)``: the queue's
        database and API keys on, unless ``settings`` (a
        :class:`pgqueue.service.ServiceSettings`) say otherwise. Started by
        :meth:`lifespan`."""
        mounted = MountedService(self.queue, settings)
        self._services.append(mounted)
        return mounted

    @contextlib.asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """For ``FastAPI(lifespan=...)``: the queue on ``app.state`` (for
        :func:`get_queue`), the mounted services started, everything closed at the end.
        To combine with a lifespan of the app's own, enter it there:
        ``async with pgq.lifespan(app): ...``."""
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.queue.close)
            setattr(app.state, STATE_KEY, self.queue)
            for mounted in self._services:
                await stack.enter_async_context(mounted.running())
            yield


def get_queue(request: Request) -> Queue:
    """A dependency: the queue :meth:`PgQueue.lifespan` put on the app."""
    queue: Queue | None = getattr(request.app.state, STATE_KEY, None)
    if queue is None:
        raise RuntimeError(
            "no pgqueue Queue on the app: use FastAPI(lifespan=PgQueue(queue).lifespan)"
        )
    return queue


QueueDep = Annotated[Queue, Depends(get_queue)]
