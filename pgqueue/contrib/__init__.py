"""pgqueue inside the web frameworks its users already run.

``pgqueue.contrib.litestar`` (a Litestar plugin) and ``pgqueue.contrib.fastapi`` (a
lifespan helper and a dependency) each open and close a :class:`~pgqueue.Queue` with the
app, hand it to handlers, and can mount the pgqueue service (the HTTP API and the
dashboard) under a path of the app. This module holds what both share: the mounted
service, which is the service's own Litestar app (``pip install 'pgqueue-jobs[service]'``)
with its own API-key auth. Nothing here imports a framework until it is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping

    from pgqueue.app import Queue

    Scope = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
    Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

__all__ = ["MountedService", "validate_mount_path"]

# A path of the app: "/pgqueue", "/admin/queue"; no trailing slash, no parameters.
_MOUNT_PATH = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
_NOT_STARTED = json.dumps(
    {
        "status": 503,
        "title": "Service Unavailable",
        "detail": "the pgqueue service is not running: the app's lifespan did not start it",
    }
).encode()


def validate_mount_path(path: str) -> str:
    """``path`` if it can hold the service (``/pgqueue``), else ValueError."""
    if not isinstance(path, str) or not _MOUNT_PATH.fullmatch(path):
        raise ValueError(
            f"mount_path must be a path like '/pgqueue' (segments of letters, digits and "
            f"._~-, no trailing slash); got {path!r}"
        )
    return path


class MountedService:
    """The pgqueue service (``/v1`` API, ``/dashboard``, probes, ``/metrics``) as an
    ASGI app mounted under a prefix of another app.

    ``settings`` is a :class:`pgqueue.service.ServiceSettings`; by default one for the
    queue's database with API-key auth on, as ``pgqueue api`` runs it. It is built when
    the app starts (:meth:`running`), so the queue's DSN is only resolved then. The
    service has a pool of its own: a few connections, opened on demand.

    Called with an ASGI scope whose ``root_path`` is the prefix and whose ``path`` is
    the whole path (the ASGI spec, what Starlette's ``Mount`` gives). Links, redirects
    and the login cookie of the dashboard follow ``root_path``.
    """

    def __init__(self, queue: Queue, settings: Any = None, *, key_auth: bool = True) -> None:
        self._queue = queue
        self._settings = settings
        self._key_auth = key_auth
        self._app: Any = None

    @property
    def app(self) -> Any:
        """The service's Litestar app, while the host app runs."""
        if self._app is None:
            raise RuntimeError(
                "the pgqueue service is not running: the app's lifespan has not started"
            )
        return self._app

    def _build(self, dsn: str) -> Any:
        # Imported here: the service needs the [service] extra, the rest of pgqueue not.
        from pgqueue.extras import require  # noqa: PLC0415

        require("service", "mounting the pgqueue service in an app")
        from pgqueue.service import ServiceSettings, create_app  # noqa: PLC0415

        settings = self._settings if self._settings is not None else ServiceSettings(dsn=dsn)
        if not self._key_auth:
            settings = dataclasses.replace(settings, auth=False)
        return create_app(settings)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """The service's app built and started (its pool), for the host app's lifespan."""
        dsn = "" if self._settings is not None else await asyncio.to_thread(lambda: self._queue.dsn)
        app = self._build(dsn)
        async with app.lifespan():
            self._app = app
            try:
                yield
            finally:
                self._app = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # the host app runs ours (running())
            return
        if self._app is None:
            # Mounted, but the host app's lifespan did not start it: say so, not a 500.
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/problem+json"),
                        (b"content-length", str(len(_NOT_STARTED)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": _NOT_STARTED})
            return
        await self._app(scope, receive, send)
