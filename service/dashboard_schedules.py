"""The dashboard's schedules page: every periodic schedule with its rule, its next tick
and its last run (the job, and how it went), and for admin keys the buttons to pause,
resume or trigger one. Through :class:`pgqueue.Admin`, like the rest of the dashboard."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Controller, Request, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template

from pgqueue.errors import InvalidJobError
from pgqueue.scheduling.specs import validate_schedule_name

from .auth import DASHBOARD_PATH, requires, under_root
from .dashboard import REFRESH_SECONDS, SECURITY_HEADERS, dashboard_user, render
from .dashboard_session import checked_form
from .problems import ProblemError
from .replica import after_action
from .state import service_state

SCHEDULES_PATH = f"{DASHBOARD_PATH}/schedules"
NOTICES = {
    "paused": "Paused: no job for its ticks until it is resumed.",
    "resumed": "Resumed: from its next tick.",
    "triggered": "Triggered: a job of it was enqueued now.",
}

_log = structlog.get_logger("pgqueue.service")


class DashboardSchedulesController(Controller):
    """The page needs ``read``, the actions ``admin``."""

    path = SCHEDULES_PATH
    include_in_schema = False
    guards = [requires("read")]  # noqa: RUF012 - Litestar's own class attribute
    response_headers = SECURITY_HEADERS

    @get("/")
    async def schedules(self, request: Request[Any, Any, Any]) -> Template:
        service = service_state(request)
        async with service.reading(request, primary=after_action(request)) as conn:
            schedules = await service.admin.list_schedules(conn=conn)
        return render(
            request,
            "schedules.html.j2",
            nav="schedules",
            schedules=schedules,
            refresh_seconds=REFRESH_SECONDS,
            notice=NOTICES.get(request.query_params.get("notice", "")),
        )

    @post("/{name:str}/pause", guards=[requires("admin")], status_code=303)
    async def pause(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Redirect:
        return await _schedule_action(request, name, "pause")

    @post("/{name:str}/resume", guards=[requires("admin")], status_code=303)
    async def resume(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Redirect:
        return await _schedule_action(request, name, "resume")

    @post("/{name:str}/trigger", guards=[requires("admin")], status_code=303)
    async def trigger(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Redirect:
        return await _schedule_action(request, name, "trigger")


async def _schedule_action(request: Request[Any, Any, Any], raw_name: str, action: str) -> Redirect:
    await checked_form(request)
    try:
        name = validate_schedule_name(raw_name)
    except InvalidJobError as exc:
        raise ProblemError(422, str(exc)) from exc
    service = service_state(request)
    admin = service.admin
    call = {
        "pause": admin.pause_schedule,
        "resume": admin.resume_schedule,
        "trigger": admin.trigger_schedule,
    }[action]
    async with service.connection() as conn:
        await call(name, conn=conn)  # ScheduleNotFoundError: a 404 (problems.py)
    user = dashboard_user(request)
    _log.info(
        f"dashboard_schedule_{action}",
        schedule=name,
        key_id=user and user.key_id,
        key_name=user and user.name,
    )
    done = {"pause": "paused", "resume": "resumed", "trigger": "triggered"}[action]
    return Redirect(under_root(request.scope, f"{SCHEDULES_PATH}?notice={done}"), status_code=303)
