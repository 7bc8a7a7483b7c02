"""``/v1/schedules``: periodic schedules, listed and read (read scope), added, changed,
paused, resumed, triggered and removed (admin scope). Through :class:`pgqueue.Admin`,
like every other endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.params import JSONBody, PathParameter

from pgqueue.scheduling.specs import validate_schedule_name

from .auth import requires
from .jobs import check_json_types
from .problems import ProblemError, problem_responses
from .routing import allow, options_route
from .schedule_schemas import (
    SCHEDULE_NAME_RULES,
    ScheduleIn,
    ScheduleList,
    ScheduleOut,
    SchedulePatch,
)
from .schemas import JobOut
from .state import service_state

if TYPE_CHECKING:
    from pgqueue.scheduling.specs import Schedule


ScheduleNamePath = Annotated[str, PathParameter(schema_extra=SCHEDULE_NAME_RULES)]


class SchedulesController(Controller):
    path = "/v1/schedules"
    tags = ["schedules"]  # noqa: RUF012 - Litestar's own class attribute

    # Litestar's automatic OPTIONS answer of a path keeps the methods of its first
    # handler only (see JobsController.allow): these, first by name, stand in for it.
    @options_route("/")
    def allow(self) -> Response[None]:
        return allow("GET, OPTIONS, POST")

    @options_route("/{name:str}")
    def allow_one(self) -> Response[None]:
        return allow("DELETE, GET, OPTIONS, PATCH")

    @get(
        "/",
        guards=[requires("read")],
        summary="Schedules, with their next and last runs",
        responses=problem_responses(401, 403, 503),
    )
    async def list_schedules(self, request: Request[Any, Any, Any]) -> ScheduleList:
        service = service_state(request)
        async with service.reading(request) as conn:
            schedules = await service.admin.list_schedules(conn=conn)
        return ScheduleList(schedules=[ScheduleOut.of(s) for s in schedules])

    @post(
        "/",
        guards=[requires("admin")],
        status_code=200,
        summary="Add or replace a schedule",
        responses=problem_responses(400, 401, 403, 413, 422, 503),
    )
    async def set_schedule(
        self, request: Request[Any, Any, Any], data: JSONBody[ScheduleIn]
    ) -> ScheduleOut:
        """The schedule as stored. Its pause, if any, is kept; a new rule or time zone
        counts its ticks from the first after a worker's scheduler sees it."""
        service = service_state(request)
        await check_json_types(request, ScheduleIn)
        async with service.connection() as conn:
            schedule = await service.admin.set_schedule(
                data.name,
                data.task,
                cron=data.cron,
                every=data.every_seconds,
                timezone=data.timezone,
                args=data.args,
                queue=data.queue,
                priority=data.priority,
                max_attempts=data.max_attempts,
                timeout=data.timeout_seconds,
                catch_up=data.catch_up,
                conn=conn,
            )
        return ScheduleOut.of(schedule)

    @get(
        "/{name:str}",
        guards=[requires("read")],
        summary="One schedule",
        responses=problem_responses(401, 403, 404, 422, 503),
    )
    async def get_schedule(
        self, request: Request[Any, Any, Any], name: ScheduleNamePath
    ) -> ScheduleOut:
        service = service_state(request)
        name = validate_schedule_name(name)
        found = await service.read_one(request, lambda c: service.admin.get_schedule(name, conn=c))
        return ScheduleOut.of(found)

    @patch(
        "/{name:str}",
        guards=[requires("admin")],
        summary="Change a schedule",
        responses=problem_responses(400, 401, 403, 404, 413, 422, 503),
    )
    async def change_schedule(
        self,
        request: Request[Any, Any, Any],
        name: ScheduleNamePath,
        data: JSONBody[SchedulePatch],
    ) -> ScheduleOut:
        """Members given replace the schedule's; the others stay. The last of two
        changes made at once wins whole."""
        service = service_state(request)
        name = validate_schedule_name(name)
        await check_json_types(request, SchedulePatch)
        async with service.connection() as conn:
            current = await service.admin.get_schedule(name, conn=conn)
            changed = await service.admin.set_schedule(name, conn=conn, **_merged(current, data))
        return ScheduleOut.of(changed)

    @delete(
        "/{name:str}",
        guards=[requires("admin")],
        status_code=204,
        summary="Remove a schedule",
        responses=problem_responses(401, 403, 404, 422, 503),
    )
    async def remove_schedule(
        self, request: Request[Any, Any, Any], name: ScheduleNamePath
    ) -> None:
        """Its jobs stay. A schedule declared in code comes back when a worker of that
        code starts: pause it instead."""
        service = service_state(request)
        name = validate_schedule_name(name)
        async with service.connection() as conn:
            if not await service.admin.remove_schedule(name, conn=conn):
                raise ProblemError(404, f"there is no schedule {name}")

    @post(
        "/{name:str}/pause",
        guards=[requires("admin")],
        status_code=200,
        summary="Pause a schedule",
        responses=problem_responses(401, 403, 404, 422, 503),
    )
    async def pause(self, request: Request[Any, Any, Any], name: ScheduleNamePath) -> ScheduleOut:
        """No job for its ticks until it is resumed (those ticks are skipped)."""
        service = service_state(request)
        name = validate_schedule_name(name)
        async with service.connection() as conn:
            return ScheduleOut.of(await service.admin.pause_schedule(name, conn=conn))

    @post(
        "/{name:str}/resume",
        guards=[requires("admin")],
        status_code=200,
        summary="Resume a schedule",
        responses=problem_responses(401, 403, 404, 422, 503),
    )
    async def resume(self, request: Request[Any, Any, Any], name: ScheduleNamePath) -> ScheduleOut:
        """From its first tick after a worker's scheduler sees it."""
        service = service_state(request)
        name = validate_schedule_name(name)
        async with service.connection() as conn:
            return ScheduleOut.of(await service.admin.resume_schedule(name, conn=conn))

    @post(
        "/{name:str}/trigger",
        guards=[requires("admin")],
        status_code=202,
        summary="Enqueue a job of the schedule now",
        responses=problem_responses(401, 403, 404, 422, 503),
    )
    async def trigger(self, request: Request[Any, Any, Any], name: ScheduleNamePath) -> JobOut:
        """Paused or not; its ticks do not move. The job as enqueued."""
        service = service_state(request)
        name = validate_schedule_name(name)
        async with service.connection() as conn:
            return JobOut.of(await service.admin.trigger_schedule(name, conn=conn))


def _merged(current: Schedule, patch: SchedulePatch) -> dict[str, Any]:
    """``Admin.set_schedule``'s arguments: the patch's members over the schedule's."""
    cron, every = current.cron, None if current.every is None else current.every.total_seconds()
    if patch.cron is not None or patch.every_seconds is not None:
        cron, every = patch.cron, patch.every_seconds
    return {
        "task": current.task if patch.task is None else patch.task,
        "cron": cron,
        "every": every,
        "timezone": current.timezone if patch.timezone is None else patch.timezone,
        "args": current.args if patch.args is None else patch.args,
        "queue": current.queue if patch.queue is None else patch.queue,
        "priority": current.priority if patch.priority is None else patch.priority,
        "max_attempts": current.max_attempts if patch.max_attempts is None else patch.max_attempts,
        "timeout": current.timeout if patch.timeout_seconds is None else patch.timeout_seconds,
        "catch_up": current.catch_up if patch.catch_up is None else patch.catch_up,
    }
