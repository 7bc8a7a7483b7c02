# ruff: noqa: E402
"""A Litestar plugin: the app's :class:`~pgqueue.Queue`, closed with the app, handed to
handlers, and optionally the pgqueue service (API and dashboard) under a path of the app.

::

    queue = pgqueue.Queue(DSN)
    app = Litestar(
        route_handlers=[signup],
        plugins=[PgQueuePlugin(queue, mount_path="/pgqueue")],
    )

    @post("/signup")
    async def signup(queue: QueueDep, data: JSONBody[Signup]) -> dict: ...

Handlers get the queue through a parameter named ``queue`` (``dependency_key``), marked
``QueueDep`` (``NamedDependency[Queue]``).
With ``mount_path``, ``/pgqueue/v1/...`` is the HTTP API and ``/pgqueue/dashboard`` the
dashboard, each behind the service's own API keys (``pgqueue keys create``), as under
``pgqueue api``. ``guards`` are Litestar guards run before any request reaches it; with
``key_auth=False`` they replace the keys, and whoever they let through is an admin.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from pgqueue.extras import require

# Without the extra: one line naming what to install, not an ImportError from inside
# (so the imports below come after it: E402 is off for this file for that reason).
require("service", "pgqueue.contrib.litestar")

from litestar.di import NamedDependency, Provide
from litestar.handlers import asgi
from litestar.plugins import InitPlugin

from pgqueue.app import Queue  # at runtime: QueueDep, and the provider's hints Litestar reads
from pgqueue.contrib import MountedService, validate_mount_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from litestar import Litestar
    from litestar.config.app import AppConfig
    from litestar.types import Guard, Receive, Scope, Send

__all__ = ["PgQueuePlugin", "QueueDep"]

# A handler's parameter for the queue, by its name (``queue`` unless dependency_key says
# otherwise): ``async def signup(queue: QueueDep) -> ...``.
QueueDep = NamedDependency[Queue]

# ASGI's own keys of a connection scope: the service gets these and no state of the host.
_ASGI_KEYS = (
    "type",
    "asgi",
    "http_version",
    "method",
    "scheme",
    "query_string",
    "headers",
    "client",
    "server",
    "subprotocols",
    "extensions",
)


class PgQueuePlugin(InitPlugin):
    """Open ``queue`` with the app, close it when the app stops, inject it as
    ``dependency_key``; with ``mount_path``, serve the pgqueue service under it.

    ``service_settings``: a :class:`pgqueue.service.ServiceSettings` for the mounted
    service (default: the queue's database, API keys on). ``guards``: Litestar guards
    on every request to the mounted service. ``key_auth=False`` turns its API keys off
    and needs ``guards`` (the service is never mounted open).
    """

    __slots__ = ("_guards", "dependency_key", "mount_path", "queue", "service")

    def __init__(
        self,
        queue: Queue,
        *,
        dependency_key: str = "queue",
        mount_path: str | None = None,
        service_settings: Any = None,
        guards: Sequence[Guard] = (),
        key_auth: bool = True,
    ) -> None:
        if mount_path is None and (guards or service_settings is not None or not key_auth):
            raise ValueError("guards, service_settings and key_auth apply to a mount_path")
        if not key_auth and not guards:
            raise ValueError(
                "key_auth=False would mount the service open: give guards that check the user"
            )
        self.queue = queue
        self.dependency_key = dependency_key
        self.mount_path = None if mount_path is None else validate_mount_path(mount_path)
        self.service = (
            None
            if mount_path is None
            else MountedService(queue, service_settings, key_auth=key_auth)
        )
        self._guards = list(guards)

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        queue = self.queue

        def provide_queue() -> Queue:
            return queue

        app_config.dependencies[self.dependency_key] = Provide(
            provide_queue, sync_to_thread=False, use_cache=True
        )
        app_config.lifespan.append(self._lifespan)
        if self.mount_path is not None:
            app_config.route_handlers.append(self._mount(self.mount_path))
        return app_config

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Litestar) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self.queue.close)
            if self.service is not None:
                await stack.enter_async_context(self.service.running())
            yield

    def _mount(self, prefix: str) -> Any:
        service = self.service
        assert service is not None  # noqa: S101 - built with the mount path

        async def pgqueue_service(scope: Scope, receive: Receive, send: Send) -> None:
            # Litestar hands a mount the rest of the path; the service gets what the
            # ASGI spec (and Starlette's Mount) gives: the whole path and the prefix as
            # root_path, in a scope of its own (none of this app's state leaks in).
            root = f"{scope.get('root_path', '').rstrip('/')}{prefix}"
            inner: dict[str, Any] = {k: scope[k] for k in _ASGI_KEYS if k in scope}  # type: ignore[literal-required]
            path = scope["path"]
            if len(path) > 1 and path.endswith("/") and not scope["raw_path"].endswith(b"/"):
                path = path[:-1]  # the slash Litestar adds to a mount's rest of the path
            inner["root_path"] = root
            inner["path"] = root + (path if path.startswith("/") else f"/{path}")
            inner["raw_path"] = inner["path"].encode("utf-8")
            inner["state"] = {}
            await service(inner, receive, send)  # type: ignore[arg-type]

        return asgi(
            prefix,
            is_mount=True,
            copy_scope=True,
            guards=self._guards or None,
            include_in_schema=False,
        )(pgqueue_service)
