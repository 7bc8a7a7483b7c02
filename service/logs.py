"""Access logs and request metrics: one structlog event per request.

The event, ``http_request``, has ``method``, ``path`` (without the query string),
``route`` (the route's template; ``unmatched`` when no route serves the path or the
method: 404 and 405), ``status``, ``duration_ms``, ``request_id`` and ``key`` (the API
key's *name*; absent when no key was accepted). Never the key, the query string,
headers or bodies (a job's args stay out of the logs). 5xx answers are logged at error
level, the rest at info.

The request id is the caller's ``X-Request-ID`` when it looks like an id (1-128
characters of ``A-Z a-z 0-9 . _ : -``), else a new one; it is echoed in the response's
``X-Request-ID`` and bound in structlog's contextvars for the whole request, so every
other line logged while handling it carries it too.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import TYPE_CHECKING

import structlog
from litestar.enums import ScopeType

from .auth import ApiUser
from .metrics import UNMATCHED_ROUTE

if TYPE_CHECKING:
    from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

    from .metrics import Metrics

REQUEST_ID_HEADER = b"x-request-id"
# Anything else (too long, spaces, control characters) could forge or garble log lines.
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")


def request_id_of(scope: Scope) -> str:
    """The caller's request id when it is sane, else a new one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            if _SANE_REQUEST_ID.fullmatch(value):
                return value.decode("ascii")
            break
    return uuid.uuid4().hex


class RequestObserver:
    """Wraps the whole app rather than being Litestar middleware: that runs only for
    requests that match a route, and 404s and 405s must be logged and counted too."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self._app = app
        self._metrics = metrics
        self._log = structlog.get_logger("pgqueue.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        path = scope["path"]  # before routing, which may rewrite it for mounted apps
        status = 500  # if the app fails before it starts a response

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id.encode())]
                message = {**message, "headers": headers}
            await send(message)

        start = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self._app(scope, receive, send_with_id)
            finally:
                self._done(scope, path, request_id, status, time.perf_counter() - start)

    def _done(
        self, scope: HTTPScope, path: str, request_id: str, status: int, seconds: float
    ) -> None:
        # The router records the matched route's template in the scope.
        route = scope.get("path_template") or UNMATCHED_ROUTE
        method = scope["method"]
        self._metrics.observe_request(method, route, status, seconds)
        user = scope.get("user")
        fields = {
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": round(seconds * 1000, 2),
            # Also bound in the contextvars, but passed here too so that the event has
            # it whatever processors the application configured.
            "request_id": request_id,
        }
        if isinstance(user, ApiUser):
            fields["key"] = user.name
        if status >= 500:
            self._log.error("http_request", **fields)
        else:
            self._log.info("http_request", **fields)
