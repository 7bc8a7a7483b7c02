"""What the HTTP server takes from a client before the app sees a request, and what the
app takes as a body.

``LimitedHttpToolsProtocol`` is uvicorn's httptools protocol (its speed kept) with the
limits of ``HttpLimits``: a request line and headers over ``max_header_bytes`` or with
more than ``max_headers`` headers get 431, a head not complete ``header_timeout_seconds``
after its first byte (or the connection's opening) and a body not complete
``body_timeout_seconds`` after the head get 408; each then closes the connection. A
head is never buffered much beyond the limit: the parser's input is counted as it
comes. Stock uvicorn has none of these: a client sending a byte a second keeps its
connection forever (each byte also restarts the keep-alive timer).

``pgqueue api`` and ``pgqueue dev`` serve with it; with uvicorn yourself:
``uvicorn --factory pgqueue.service.asgi:app_from_env --ws none
--http pgqueue.service.http_limits:LimitedHttpToolsProtocol``, which reads the limits
from the environment (``HttpLimits.from_env``). Under another server, ``RequestLimits``
(in the app) still answers 431 to too many or too large headers, after that server
has read them.

``JsonBodyMiddleware``: an API request with a body must say it is JSON (415 else):
Litestar would decode any body as JSON, whatever its Content-Type.
"""

from __future__ import annotations

import json
import os
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar

import httptools
import structlog
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from .auth import DASHBOARD_PATH
from .problems import PROBLEM_JSON, ProblemError
from .settings import HttpLimits

if TYPE_CHECKING:
    import asyncio

    from litestar.types import ASGIApp, Receive, ReceiveMessage, Scope, Send
    from uvicorn.config import Config
    from uvicorn.server import ServerState

_log = structlog.get_logger("pgqueue.service")
# A header line's bytes beyond its name and value: ": " and CRLF.
_LINE_OVERHEAD = 4
# After a refusal, how long what the client still sends is read and dropped before the
# connection closes: closing on unread input resets it, which can destroy the answer
# before the client reads it.
LINGER_SECONDS = 2.0
# Where the protocol leaves its 408 for a request the app is reading the body of, so
# that the app answers (and logs and counts) 408 too, not a failed read.
REFUSED_SCOPE_KEY = "pgqueue.refused"


def problem_body(status: int, detail: str) -> bytes:
    """The body ``problems.problem_response`` would send, for answers given outside the
    app."""
    problem = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    return json.dumps(problem).encode()


def too_many_headers(limits: HttpLimits) -> str:
    return f"more than {limits.max_headers} request headers"


def too_large_head(limits: HttpLimits) -> str:
    return f"the request line and headers are larger than {limits.max_header_bytes} bytes"


class _RefusedError(Exception):
    """Raised from a parser callback to stop parsing: httptools re-raises it as
    HttpParserCallbackError."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with ``HttpLimits`` (see the module)."""

    # None: read from the environment by the first connection (``pgqueue api``'s worker
    # processes are fresh interpreters, which get the class by name).
    limits: ClassVar[HttpLimits | None] = None

    @classmethod
    def with_limits(cls, limits: HttpLimits) -> type[LimitedHttpToolsProtocol]:
        """The protocol with these limits, for one server process (``http=`` of
        uvicorn.Config)."""
        return type(cls.__name__, (cls,), {"limits": limits})

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        cls = type(self)
        if cls.limits is None:
            cls.limits = HttpLimits.from_env(os.environ)
        self._limits: HttpLimits = cls.limits
        # Between a request's end (or the connection's opening) and its last header.
        self._head_open = True
        self._head_received = 0  # bytes fed to the parser while the head is open
        self._head_size = 0  # the request line's and complete headers' bytes
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None
        self._lingering = False
        self._linger_timer: asyncio.TimerHandle | None = None

    # --- the connection --------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte is closed too.
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self._cancel_timers()  # the connection is the websocket protocol's from here
        super().handle_websocket_upgrade()

    def data_received(self, data: bytes) -> None:
        # uvicorn's, but a refusal answers with its own status instead of 400.
        if self._lingering:
            return
        self._unset_keepalive_if_required()
        if self._head_open:
            self._head_received += len(data)
            if self._head_timer is None:
                self._arm_head_timer()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        # A head still incomplete: everything fed since it began is head (a header
        # line is reported only once complete, so this bounds one that never ends).
        if self._head_open and self._head_received > self._limits.max_header_bytes:
            self._refuse(431, too_large_head(self._limits))

    # --- parser callbacks ------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_size = 0
        self._header_count = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        if self._head_size > self._limits.max_header_bytes:
            self._stop(431, too_large_head(self._limits))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + _LINE_OVERHEAD
        if self._header_count > self._limits.max_headers:
            self._stop(431, too_many_headers(self._limits))
        if self._head_size > self._limits.max_header_bytes:
            self._stop(431, too_large_head(self._limits))
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_open = False
        self._cancel_head_timer()
        self._body_timer = self.loop.call_later(
            self._limits.body_timeout_seconds, self._body_timed_out
        )
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        self._head_open = True
        self._head_received = 0
        super().on_message_complete()
        if self.cycle.response_complete and not self.transport.is_closing():
            # Answered before its body was all in (a 401, say): uvicorn's keep-alive
            # timer, armed then, was stopped by the body's bytes; the next request
            # has the head's time instead.
            self._arm_head_timer()

    # --- limits ----------------------------------------------------------------------

    def _stop(self, status: int, detail: str) -> None:
        self._refusal = (status, detail)
        raise _RefusedError(detail)

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(
            self._limits.header_timeout_seconds, self._head_timed_out
        )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()

    def _server_busy(self) -> bool:
        """Whether the server, not the client, holds the request up: reading is paused
        while a pipelined request waits for the one before it, or while the app has not
        taken the body read so far."""
        return self.flow is not None and self.flow.read_paused

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self._server_busy():
            self._arm_head_timer()
            return
        if not self._head_received:
            # Nothing asked, nothing to answer: an idle connection is just closed.
            self.transport.close()
            return
        self._refuse(
            408,
            "the request line and headers did not arrive within "
            f"{self._limits.header_timeout_seconds:g} seconds",
        )

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        if self._server_busy():
            self._body_timer = self.loop.call_later(
                self._limits.body_timeout_seconds, self._body_timed_out
            )
            return
        self._refuse(
            408,
            f"the request body did not arrive within {self._limits.body_timeout_seconds:g} "
            "seconds of its headers",
        )

    def _refuse(self, status: int, detail: str) -> None:
        """Answer ``status`` unless a response is under way, and end the connection."""
        self._cancel_timers()
        client = self.client[0] if self.client else None
        _log.info("http_request_refused", status=status, detail=detail, client=client)
        cycle: RequestResponseCycle | None = self.cycle
        if self._head_open:
            # The request has no cycle yet: one still answering is a request before it
            # (pipelined), cut short rather than have a 431 or 408 written into it.
            answer = cycle is None or cycle.response_complete
        else:
            answer = cycle is not None and not cycle.response_started
        if cycle is not None and not cycle.response_complete:
            # The app sees the client gone (if it is reading the body) and whatever it
            # sends from now on is dropped: the connection is ours.
            if not self._head_open:
                cycle.scope[REFUSED_SCOPE_KEY] = (status, detail)  # type: ignore[literal-required]
            cycle.disconnected = True
            cycle.message_event.set()
        if answer:
            body = problem_body(status, detail)
            content = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                content.extend([name, b": ", value, b"\r\n"])
            content.extend(
                [
                    b"content-type: " + PROBLEM_JSON.encode() + b"\r\n",
                    b"content-length: " + str(len(body)).encode() + b"\r\n",
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
            self.transport.write(b"".join(content))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._lingering = True
        self.flow.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)


class RequestLimits:
    """Around the app: 431 for too many or too large headers, under servers without
    LimitedHttpToolsProtocol (which refuses them before they are all read); and the
    protocol's 408 for a body, raised where the app reads it."""

    def __init__(self, app: ASGIApp, limits: HttpLimits) -> None:
        self._app = app
        self._limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == ScopeType.HTTP:
            headers = list(scope["headers"])
            detail = None
            if len(headers) > self._limits.max_headers:
                detail = too_many_headers(self._limits)
            else:
                size = len(scope.get("raw_path") or b"") + len(scope["query_string"])
                size += sum(len(name) + len(value) + _LINE_OVERHEAD for name, value in headers)
                if size > self._limits.max_header_bytes:
                    detail = too_large_head(self._limits)
            if detail is not None:
                body = problem_body(431, detail)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 431,
                        "headers": [
                            (b"content-type", PROBLEM_JSON.encode()),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body, "more_body": False})
                return

            async def receive_checked() -> ReceiveMessage:
                message = await receive()
                refused = scope.get(REFUSED_SCOPE_KEY)
                if message["type"] == "http.disconnect" and isinstance(refused, tuple):
                    raise ProblemError(*refused)
                return message

            await self._app(scope, receive_checked, send)
            return
        await self._app(scope, receive, send)


def is_json(content_type: bytes) -> bool:
    """``application/json`` or ``application/*+json``, any parameters."""
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )


class JsonBodyMiddleware(ASGIMiddleware):
    """415 for a request with a body that is not JSON. The dashboard, whose forms post
    ``application/x-www-form-urlencoded``, is left out."""

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        path = scope["path"]
        if path == DASHBOARD_PATH or path.startswith(DASHBOARD_PATH + "/"):
            await next_app(scope, receive, send)
            return
        content_type = None
        has_body = False
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                has_body = has_body or value.strip() not in (b"0", b"")
            elif name == b"transfer-encoding":
                has_body = True
        if has_body and (content_type is None or not is_json(content_type)):
            got = "none" if content_type is None else repr(content_type.decode("latin-1"))
            raise ProblemError(
                415,
                f"the body must be JSON, sent with Content-Type: application/json; got {got}",
                headers={"Accept-Post": "application/json"},
            )
        await next_app(scope, receive, send)
