"""The dashboard's flow page: every limited queue and key running against its limits,
with a form for admin keys to set or clear a queue's limits, and the sequences with
unfinished jobs and the job the rest of each waits for. Through :class:`pgqueue.Admin`,
like the rest of the dashboard."""

from __future__ import annotations

from typing import Any

import structlog
from litestar import Controller, Request, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template

from pgqueue.checks import validate_queue_name
from pgqueue.errors import InvalidJobError

from .auth import DASHBOARD_PATH, requires, under_root
from .dashboard import REFRESH_SECONDS, SECURITY_HEADERS, dashboard_user, render
from .dashboard_session import checked_form
from .problems import ProblemError
from .replica import after_action
from .state import service_state

FLOW_PATH = f"{DASHBOARD_PATH}/flow"
NOTICES = {
    "set": "Limits set: claims that start from now on keep to them.",
    "cleared": "Limits cleared: the queue is claimed without limits from now on.",
}
# How many sequences the page lists (the busiest first would need a sort; by key).
SEQUENCES_SHOWN = 200

_log = structlog.get_logger("pgqueue.service")


class DashboardFlowController(Controller):
    """The page needs ``read``, the changes ``admin``."""

    path = FLOW_PATH
    include_in_schema = False
    guards = [requires("read")]  # noqa: RUF012 - Litestar's own class attribute
    response_headers = SECURITY_HEADERS

    @get("/")
    async def flow(self, request: Request[Any, Any, Any]) -> Template:
        service = service_state(request)
        async with service.reading(request, primary=after_action(request)) as conn:
            limits = await service.admin.list_limits(conn=conn)
            sequences = await service.admin.list_sequences(limit=SEQUENCES_SHOWN, conn=conn)
        return render(
            request,
            "flow.html.j2",
            nav="flow",
            limits=limits,
            sequences=sequences,
            sequences_shown=SEQUENCES_SHOWN,
            refresh_seconds=REFRESH_SECONDS,
            notice=NOTICES.get(request.query_params.get("notice", "")),
        )

    @post("/limits", guards=[requires("admin")], status_code=303)
    async def set_limit(self, request: Request[Any, Any, Any]) -> Redirect:
        form = await checked_form(request)
        queue = _queue_name(form.get("queue"))
        concurrency = _optional_int(form.get("concurrency"), "concurrency")
        key_concurrency = _optional_int(form.get("key_concurrency"), "key_concurrency")
        rate, key_rate = _optional_text(form.get("rate")), _optional_text(form.get("key_rate"))
        service = service_state(request)
        # A bad rate or count: InvalidLimitError, a 422 (problems.py).
        async with service.connection() as conn:
            await service.admin.set_limit(
                queue,
                concurrency=concurrency,
                rate=rate,
                key_concurrency=key_concurrency,
                key_rate=key_rate,
                conn=conn,
            )
        _logged(
            request,
            "dashboard_limit_set",
            queue=queue,
            concurrency=concurrency,
            rate=rate,
            key_concurrency=key_concurrency,
            key_rate=key_rate,
        )
        return Redirect(under_root(request.scope, f"{FLOW_PATH}?notice=set"), status_code=303)

    @post("/limits/{queue:str}/clear", guards=[requires("admin")], status_code=303)
    async def clear_limit(self, request: Request[Any, Any, Any], queue: FromPath[str]) -> Redirect:
        await checked_form(request)
        name = _queue_name(queue)
        service = service_state(request)
        async with service.connection() as conn:
            await service.admin.clear_limit(name, conn=conn)
        _logged(request, "dashboard_limit_cleared", queue=name)
        return Redirect(under_root(request.scope, f"{FLOW_PATH}?notice=cleared"), status_code=303)


def _logged(request: Request[Any, Any, Any], event: str, **fields: Any) -> None:
    user = dashboard_user(request)
    _log.info(event, key_id=user and user.key_id, key_name=user and user.name, **fields)


def _queue_name(value: object) -> str:
    try:
        return validate_queue_name(value if isinstance(value, str) else "")
    except InvalidJobError as exc:
        raise ProblemError(422, str(exc), field="queue") from exc


def _optional_text(value: object) -> str | None:
    text = value.strip() if isinstance(value, str) else ""
    return text or None


def _optional_int(value: object, field: str) -> int | None:
    text = _optional_text(value)
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise ProblemError(
            422, f"{field} must be a whole number, got {text!r}", field=field
        ) from None
