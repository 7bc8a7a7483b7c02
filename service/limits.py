"""``/v1/limits``: concurrency and rate limits of queues and of their concurrency keys,
each beside what runs against it (read scope), set and cleared (admin scope). Through
:class:`pgqueue.Admin`, like every other endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from litestar import Controller, Request, Response, delete, get, put
from litestar.params import JSONBody, PathParameter

from pgqueue.flow import MAX_KEY_LENGTH
from pgqueue.job_options import QUEUE_NAME_RULES

from .auth import requires
from .jobs import check_json_types
from .limit_schemas import KeyLimitIn, LimitList, LimitOut, QueueLimitIn
from .problems import ProblemError, problem_responses
from .routing import allow, options_route
from .state import service_state

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from pgqueue.flow import LimitStatus

QueueNamePath = Annotated[str, PathParameter(schema_extra=QUEUE_NAME_RULES)]
KeyPath = Annotated[str, PathParameter(schema_extra={"minLength": 1, "maxLength": MAX_KEY_LENGTH})]


class LimitsController(Controller):
    path = "/v1/limits"
    tags = ["limits"]  # noqa: RUF012 - Litestar's own class attribute

    # Litestar's automatic OPTIONS answer of a path keeps the methods of its first
    # handler only (see JobsController.allow): these, first by name, stand in for it.
    @options_route("/")
    def allow(self) -> Response[None]:
        return allow("GET, OPTIONS")

    @options_route("/{queue:str}")
    def allow_queue(self) -> Response[None]:
        return allow("DELETE, GET, OPTIONS, PUT")

    @options_route("/{queue:str}/keys/{key:str}")
    def allow_key(self) -> Response[None]:
        return allow("DELETE, OPTIONS, PUT")

    @get(
        "/",
        guards=[requires("read")],
        summary="Limited queues and keys, running against their limits",
        responses=problem_responses(401, 403, 503),
    )
    async def list_limits(self, request: Request[Any, Any, Any]) -> LimitList:
        service = service_state(request)
        async with service.reading(request) as conn:
            found = await service.admin.list_limits(conn=conn)
        return LimitList(limits=[LimitOut.of(s) for s in found])

    @get(
        "/{queue:str}",
        guards=[requires("read")],
        summary="One queue's limits and its keys'",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
    )
    async def get_limit(self, request: Request[Any, Any, Any], queue: QueueNamePath) -> LimitList:
        service = service_state(request)
        found = await service.read_one(
            request, lambda c: _or_none(service.admin.list_limits(queue, conn=c))
        )
        if not found:
            raise ProblemError(404, f"queue {queue} has no limits")
        return LimitList(limits=[LimitOut.of(s) for s in found])

    @put(
        "/{queue:str}",
        guards=[requires("admin")],
        status_code=200,
        summary="Set a queue's limits",
        responses=problem_responses(400, 401, 403, 422, 503),
    )
    async def set_limit(
        self, request: Request[Any, Any, Any], queue: QueueNamePath, data: JSONBody[QueueLimitIn]
    ) -> LimitList:
        """All of the queue's limits are replaced; a worker that declares limits for
        the queue in code writes those again as it starts."""
        await check_json_types(request, QueueLimitIn)
        service = service_state(request)
        async with service.connection() as conn:
            found = await service.admin.set_limit(
                queue,
                concurrency=data.concurrency,
                rate=data.rate,
                key_concurrency=data.key_concurrency,
                key_rate=data.key_rate,
                conn=conn,
            )
        return LimitList(limits=[LimitOut.of(s) for s in found])

    @delete(
        "/{queue:str}",
        guards=[requires("admin")],
        status_code=204,
        summary="Clear a queue's limits",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
    )
    async def clear_limit(self, request: Request[Any, Any, Any], queue: QueueNamePath) -> None:
        service = service_state(request)
        async with service.connection() as conn:
            gone = await service.admin.clear_limit(queue, conn=conn)
        if not gone:
            raise ProblemError(404, f"queue {queue} has no limits")

    @put(
        "/{queue:str}/keys/{key:str}",
        guards=[requires("admin")],
        status_code=200,
        summary="Set one concurrency key's own limits",
        responses=problem_responses(400, 401, 403, 422, 503),
    )
    async def set_key_limit(
        self,
        request: Request[Any, Any, Any],
        queue: QueueNamePath,
        key: KeyPath,
        data: JSONBody[KeyLimitIn],
    ) -> LimitList:
        await check_json_types(request, KeyLimitIn)
        service = service_state(request)
        async with service.connection() as conn:
            found = await service.admin.set_key_limit(
                queue, key, concurrency=data.concurrency, rate=data.rate, conn=conn
            )
        return LimitList(limits=[LimitOut.of(s) for s in found])

    @delete(
        "/{queue:str}/keys/{key:str}",
        guards=[requires("admin")],
        status_code=204,
        summary="Clear one key's own limits",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
    )
    async def clear_key_limit(
        self, request: Request[Any, Any, Any], queue: QueueNamePath, key: KeyPath
    ) -> None:
        service = service_state(request)
        async with service.connection() as conn:
            gone = await service.admin.clear_key_limit(queue, key, conn=conn)
        if not gone:
            raise ProblemError(404, f"key {key} of queue {queue} has no limits of its own")


async def _or_none(found: Awaitable[list[LimitStatus]]) -> list[LimitStatus] | None:
    """No limits as None: ``read_one`` asks the primary then (one just set)."""
    return (await found) or None
