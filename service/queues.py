"""``/v1/queues``: per-queue counts, and pausing."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get, post
from litestar.params import PathParameter

from pgqueue.checks import validate_queue_name
from pgqueue.job_options import QUEUE_NAME_RULES

from .auth import requires
from .problems import problem_responses
from .schemas import QueueList, QueueOut

QueueNamePath = Annotated[str, PathParameter(schema_extra=QUEUE_NAME_RULES)]


class QueuesController(Controller):
    path = "/v1/queues"
    tags = ["queues"]  # noqa: RUF012 - Litestar's own class attribute

    @get(
        "/",
        guards=[requires("read")],
        summary="Queues and their counts",
        responses=problem_responses(401, 403, 503),
    )
    async def list_queues(self, request: Request[Any, Any, Any]) -> QueueList:
        """Per queue: jobs by state, the oldest claimable job's age, paused or not."""
        service = request.app.state.pgqueue
        async with service.reading(request) as conn:
            stats = await service.admin.queue_stats(conn=conn)
        return QueueList(queues=[QueueOut.of(s) for s in stats])

    @post(
        "/{name:str}/pause",
        guards=[requires("admin")],
        status_code=200,
        summary="Pause",
        responses=problem_responses(400, 401, 403, 422, 503),
    )
    async def pause(self, request: Request[Any, Any, Any], name: QueueNamePath) -> QueueOut:
        """Workers claim nothing more from the queue (running jobs finish)."""
        return await self._set(request, validate_queue_name(name), paused=True)

    @post(
        "/{name:str}/resume",
        guards=[requires("admin")],
        status_code=200,
        summary="Resume",
        responses=problem_responses(400, 401, 403, 422, 503),
    )
    async def resume(self, request: Request[Any, Any, Any], name: QueueNamePath) -> QueueOut:
        return await self._set(request, validate_queue_name(name), paused=False)

    @staticmethod
    async def _set(request: Request[Any, Any, Any], name: str, *, paused: bool) -> QueueOut:
        admin = request.app.state.pgqueue.admin
        async with request.app.state.pgqueue.connection() as conn:
            await (admin.pause_queue if paused else admin.resume_queue)(name, conn=conn)
            stats = {s.queue: s for s in await admin.queue_stats(conn=conn)}
        return QueueOut.of(stats[name])
