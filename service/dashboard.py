"""The web dashboard at ``/dashboard``: the queues with their counts, throughput and lag
(refreshed every few seconds), the jobs filtered by queue, state and task, and each job
with its args, result and every attempt's error; admin keys also get retry, cancel,
pause and resume buttons.

Server-rendered Jinja templates (autoescaped) and a few lines of plain JavaScript that
fetch HTML fragments: no build step, and nothing loaded from anywhere else.

Auth: pages need scope ``read``, actions ``admin``. A browser logs in by pasting an API
key into /dashboard/login, which keeps it in an HttpOnly, SameSite=Strict cookie (Secure
over https) sent to /dashboard paths only; ``auth.ApiKeyMiddleware`` accepts it there.
Every POST must carry the session's CSRF token (``dashboard_session``). What the pages
show is computed in ``dashboard_views``; this module holds the handlers.
"""

from __future__ import annotations

import functools
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final
from urllib.parse import urlencode

import structlog
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.template.config import TemplateConfig

from pgqueue.checks import validate_queue_name
from pgqueue.errors import (
    IdempotencyConflictError,
    InvalidJobError,
    JobNotFoundError,
    JobStateError,
)
from pgqueue.states import TERMINAL_STATES, JobState

from .auth import DASHBOARD_COOKIE, DASHBOARD_PATH, ApiUser, dashboard_base, requires
from .dashboard_session import (
    CSRF_FIELD,
    NONCE_COOKIE,
    checked_form,
    csrf_token,
    request_key,
    safe_next,
    session_cookie,
)
from .dashboard_views import (
    JobFilter,
    QueueRow,
    ago,
    attempt_errors,
    duration,
    pretty,
    queue_rows,
    when,
)
from .jobs import parse_job_id
from .problems import ProblemError
from .replica import after_action, banner, read_note

if TYPE_CHECKING:
    from pgqueue.jobs import Job

    from .state import ServiceState

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
STATIC_TYPES: Final = {
    "dashboard.css": "text/css",
    "dashboard.js": "text/javascript",
}
REFRESH_SECONDS = 5
JOB_REFRESH_SECONDS = 3
THROUGHPUT_MINUTES = 15
RECENT_JOBS = 15
PAGE_JOBS = 50
# Pages only load this app's own script and styles, cannot be framed (the admin buttons
# must not be clickjacked) and post forms only back here.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NOTICES: Final = {
    "retried": "Queued again.",
    "cancelled": "Cancelled.",
    "paused": "Paused: workers claim nothing more from it until it is resumed.",
    "resumed": "Resumed.",
}
ERRORS: Final = {
    "conflict": "Not done: that does not apply to the job in the state it is in now.",
    "key_held": "Not retried: a newer job now holds its idempotency key.",
}

_log = structlog.get_logger("pgqueue.service")


@functools.cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every template, whatever its file name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(duration=duration, when=when, ago=ago, pretty=pretty)
    return env


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(_environment()))


def _service(request: Request[Any, Any, Any]) -> ServiceState:
    service: ServiceState = request.app.state.pgqueue
    return service


def dashboard_user(request: Request[Any, Any, Any]) -> ApiUser | None:
    user = request.scope.get("user")
    return user if isinstance(user, ApiUser) else None


def render(
    request: Request[Any, Any, Any],
    template: str,
    *,
    status_code: int = 200,
    **context: Any,
) -> Template:
    """A page or fragment, with what every template uses; a browser without a nonce
    cookie (the CSRF token's secret) gets one."""
    cookies = []
    nonce = request.cookies.get(NONCE_COOKIE)
    if not nonce:
        nonce = secrets.token_urlsafe(32)
        cookies.append(session_cookie(request, NONCE_COOKIE, nonce))
    user = dashboard_user(request)
    base = {
        "base": dashboard_base(request.scope),
        "user": user,
        "admin": user is not None and user.can("admin"),
        "auth_on": _service(request).settings.auth,
        "csrf_field": CSRF_FIELD,
        "csrf": csrf_token(nonce, request_key(request)),
        "refresh_seconds": REFRESH_SECONDS,
        "nav": "",
        "read_banner": banner(read_note(request)),
    }
    return Template(
        template_name=template,
        context={**base, **context},
        status_code=status_code,
        cookies=cookies,
    )


def _job_url(request: Request[Any, Any, Any], job_id: int, **params: str) -> str:
    return f"{dashboard_base(request.scope)}/jobs/{job_id}" + (
        f"?{urlencode(params)}" if params else ""
    )


# --- pages and actions ---------------------------------------------------------------------


class DashboardController(Controller):
    """Everything behind a key: the pages need ``read``, the actions ``admin``."""

    path = DASHBOARD_PATH
    include_in_schema = False
    guards = [requires("read")]  # noqa: RUF012 - Litestar's own class attribute
    response_headers = SECURITY_HEADERS

    @get("/")
    async def overview(self, request: Request[Any, Any, Any]) -> Template:
        queues, jobs = await _overview(request)
        return render(
            request,
            "overview.html.j2",
            nav="queues",
            queues=queues,
            minutes=THROUGHPUT_MINUTES,
            jobs=jobs,
            jobs_refresh=f"{dashboard_base(request.scope)}/partials/jobs?limit={RECENT_JOBS}",
            next_url=None,
            notice=NOTICES.get(request.query_params.get("notice", "")),
        )

    @get("/jobs")
    async def jobs(
        self,
        request: Request[Any, Any, Any],
        queue: FromQuery[str | None] = None,
        state_name: Annotated[str | None, QueryParameter(name="state")] = None,
        task: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
    ) -> Template:
        service = _service(request)
        filters = JobFilter.parse(queue, state_name, task)
        before = None if not cursor else parse_job_id(cursor, "cursor")
        base = dashboard_base(request.scope)
        jobs, next_url = await _job_page(request, base, filters, PAGE_JOBS, before)
        async with service.reading(request) as conn:
            queue_names = [s.queue for s in await service.admin.queue_stats(conn=conn)]
        refresh = None
        if before is None:  # the first page follows new jobs; older pages stay put
            refresh = f"{base}/partials/jobs?{filters.query_string(limit=PAGE_JOBS)}"
        return render(
            request,
            "jobs.html.j2",
            nav="jobs",
            filters=filters,
            states=[s.value for s in JobState],
            queue_names=queue_names,
            jobs=jobs,
            jobs_refresh=refresh,
            next_url=next_url,
        )

    @get("/jobs/{job_id:str}")
    async def job(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> Template:
        ident = parse_job_id(job_id)
        job = await _get_job(request, ident)
        if job is None:
            return render(request, "missing.html.j2", status_code=404, job_id=ident, nav="jobs")
        return render(
            request,
            "job.html.j2",
            nav="jobs",
            refresh_seconds=JOB_REFRESH_SECONDS,
            notice=NOTICES.get(request.query_params.get("notice", "")),
            error=ERRORS.get(request.query_params.get("error", "")),
            **_job_context(job),
        )

    # Fragments the pages' script fetches to refresh themselves.

    @get("/partials/queues")
    async def queues_partial(self, request: Request[Any, Any, Any]) -> Template:
        queues, _ = await _overview(request, jobs=False)
        return render(request, "_queues.html.j2", queues=queues, minutes=THROUGHPUT_MINUTES)

    @get("/partials/jobs")
    async def jobs_partial(
        self,
        request: Request[Any, Any, Any],
        queue: FromQuery[str | None] = None,
        state_name: Annotated[str | None, QueryParameter(name="state")] = None,
        task: FromQuery[str | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=PAGE_JOBS)] = PAGE_JOBS,
    ) -> Template:
        filters = JobFilter.parse(queue, state_name, task)
        base = dashboard_base(request.scope)
        jobs, next_url = await _job_page(request, base, filters, limit, None)
        return render(request, "_jobs.html.j2", jobs=jobs, next_url=next_url)

    @get("/partials/jobs/{job_id:str}")
    async def job_partial(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> Template:
        ident = parse_job_id(job_id)
        job = await _get_job(request, ident)
        if job is None:
            raise JobNotFoundError(f"there is no job {ident}")
        return render(request, "_job.html.j2", **_job_context(job))

    @get("/partials/session", status_code=204)
    async def session(self) -> None:
        """204 while the browser's cookie holds a live key (the login page asks)."""

    # Actions: admin only, each a POST with the CSRF token, then back to the page.

    @post("/jobs/{job_id:str}/retry", guards=[requires("admin")], status_code=303)
    async def retry(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> Redirect:
        return await _job_action(request, job_id, "retry")

    @post("/jobs/{job_id:str}/cancel", guards=[requires("admin")], status_code=303)
    async def cancel(self, request: Request[Any, Any, Any], job_id: FromPath[str]) -> Redirect:
        return await _job_action(request, job_id, "cancel")

    @post("/queues/{name:str}/pause", guards=[requires("admin")], status_code=303)
    async def pause(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Redirect:
        return await _queue_action(request, name, paused=True)

    @post("/queues/{name:str}/resume", guards=[requires("admin")], status_code=303)
    async def resume(self, request: Request[Any, Any, Any], name: FromPath[str]) -> Redirect:
        return await _queue_action(request, name, paused=False)


class DashboardLoginController(Controller):
    """What a browser reaches without a key: logging in and out, and the page assets."""

    path = DASHBOARD_PATH
    include_in_schema = False
    opt = {"exclude_from_auth": True}  # noqa: RUF012 - Litestar's own class attribute
    response_headers = SECURITY_HEADERS

    @get("/login")
    async def login_page(
        self,
        request: Request[Any, Any, Any],
        next_path: Annotated[str | None, QueryParameter(name="next")] = None,
    ) -> Template | Redirect:
        base = dashboard_base(request.scope)
        if not _service(request).settings.auth:
            return Redirect(safe_next(next_path, base), status_code=303)
        return render(request, "login.html.j2", next=safe_next(next_path, base), error=None)

    @post("/login", status_code=303)
    async def login(self, request: Request[Any, Any, Any]) -> Template | Redirect:
        service = _service(request)
        base = dashboard_base(request.scope)
        if not service.settings.auth:
            return Redirect(base, status_code=303)
        form = await checked_form(request)
        target = safe_next(form.get("next"), base)
        key = form.get("key")
        key = key.strip() if isinstance(key, str) else ""
        user = await service.keys.lookup(key) if key else None
        if user is None:
            _log.info("dashboard_login_refused")
            return render(
                request,
                "login.html.j2",
                status_code=401,
                next=target,
                error="That key is unknown or revoked.",
            )
        _log.info("dashboard_login", key_id=user.key_id, key_name=user.name, scope=user.scope)
        return Redirect(
            target, status_code=303, cookies=[session_cookie(request, DASHBOARD_COOKIE, key)]
        )

    @post("/logout", status_code=303)
    async def logout(self, request: Request[Any, Any, Any]) -> Redirect:
        key = request.cookies.get(DASHBOARD_COOKIE)
        if key:
            await checked_form(request, key)
        base = dashboard_base(request.scope)
        response = Redirect(f"{base}/login", status_code=303)
        response.delete_cookie(DASHBOARD_COOKIE, path=base)
        return response

    @get("/static/{name:str}", sync_to_thread=False)
    def static(self, name: FromPath[str]) -> Response[bytes]:
        media_type = STATIC_TYPES.get(name)
        if media_type is None:
            raise ProblemError(404, f"there is no static file {name!r}")
        return Response(
            _static_file(name),
            media_type=media_type,
            headers={"Cache-Control": "public, max-age=300"},
        )


DASHBOARD_HANDLERS = [DashboardController, DashboardLoginController]


@functools.cache
def _static_file(name: str) -> bytes:
    return (STATIC / name).read_bytes()


async def _overview(
    request: Request[Any, Any, Any], *, jobs: bool = True
) -> tuple[list[QueueRow], list[Job]]:
    service = _service(request)
    admin = service.admin
    async with service.reading(request, primary=after_action(request)) as conn:
        stats = await admin.queue_stats(conn=conn)
        throughput = await admin.throughput(THROUGHPUT_MINUTES, conn=conn)
        limits = await admin.list_limits(conn=conn)
        recent = []
        if jobs:
            recent = (await admin.list_jobs(limit=RECENT_JOBS, conn=conn)).jobs
    return queue_rows(stats, throughput, THROUGHPUT_MINUTES, limits), recent


async def _job_page(
    request: Request[Any, Any, Any],
    base: str,
    filters: JobFilter,
    limit: int,
    before: int | None,
) -> tuple[list[Job], str | None]:
    service = _service(request)
    async with service.reading(request) as conn:
        page = await service.admin.list_jobs(
            queue=filters.queue,
            state=filters.state,
            task=filters.task,
            before=before,
            limit=limit,
            conn=conn,
        )
    if page.next_cursor is None:
        return page.jobs, None
    return page.jobs, f"{base}/jobs?{filters.query_string(cursor=page.next_cursor)}"


async def _get_job(request: Request[Any, Any, Any], job_id: int) -> Job | None:
    """The job, from the replica, else the primary (one the replica has not yet)."""
    service = _service(request)
    if after_action(request):
        async with service.reading(request, primary=True) as conn:
            return await service.admin.get_job(job_id, conn=conn)
    return await service.read_one(request, lambda c: service.admin.get_job(job_id, conn=c))


def _job_context(job: Job) -> dict[str, Any]:
    return {
        "job": job,
        "final": job.state in TERMINAL_STATES,
        "can_retry": job.state in {JobState.FAILED, JobState.CANCELLED},
        "can_cancel": job.state in {JobState.QUEUED, JobState.RUNNING, JobState.BLOCKED},
        "errors": attempt_errors(job.errors),
    }


async def _job_action(request: Request[Any, Any, Any], raw_id: str, action: str) -> Redirect:
    await checked_form(request)
    job_id = parse_job_id(raw_id)
    service = _service(request)
    user = dashboard_user(request)
    try:
        async with service.connection() as conn:
            if action == "retry":
                await service.admin.retry_job(job_id, conn=conn)
            else:
                await service.admin.cancel_job(job_id, conn=conn)
    except JobNotFoundError:
        return Redirect(_job_url(request, job_id), status_code=303)
    except JobStateError:
        return Redirect(_job_url(request, job_id, error="conflict"), status_code=303)
    except IdempotencyConflictError:
        return Redirect(_job_url(request, job_id, error="key_held"), status_code=303)
    _log.info(
        f"dashboard_job_{action}",
        job_id=job_id,
        key_id=user and user.key_id,
        key_name=user and user.name,
    )
    notice = "retried" if action == "retry" else "cancelled"
    return Redirect(_job_url(request, job_id, notice=notice), status_code=303)


async def _queue_action(
    request: Request[Any, Any, Any], raw_name: str, *, paused: bool
) -> Redirect:
    await checked_form(request)
    try:
        name = validate_queue_name(raw_name)
    except InvalidJobError as exc:
        raise ProblemError(422, str(exc)) from exc
    service = _service(request)
    async with service.connection() as conn:
        await (service.admin.pause_queue if paused else service.admin.resume_queue)(name, conn=conn)
    user = dashboard_user(request)
    _log.info(
        "dashboard_queue_paused" if paused else "dashboard_queue_resumed",
        queue=name,
        key_id=user and user.key_id,
        key_name=user and user.name,
    )
    notice = "paused" if paused else "resumed"
    return Redirect(f"{dashboard_base(request.scope)}?notice={notice}", status_code=303)
