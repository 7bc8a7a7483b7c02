"""``pgqueue api`` and ``pgqueue dev``: the HTTP service on uvicorn.

``api`` is the production command: auth on, any number of server processes, each of
which builds the app from the environment (``pgqueue.service.asgi``). ``dev`` is the
local one: the API without keys, on loopback only, and a worker, in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import tempfile
from typing import TYPE_CHECKING, Any

import structlog
import uvicorn

from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.http_limits import LimitedHttpToolsProtocol
from pgqueue.service.settings import READ_DSN_ENV, HttpLimits
from pgqueue.worker import Worker

if TYPE_CHECKING:
    from collections.abc import Generator

    from pgqueue.app import Queue


HTTP_PROTOCOL = f"{LimitedHttpToolsProtocol.__module__}:{LimitedHttpToolsProtocol.__qualname__}"


def run_api(
    dsn: str,
    *,
    read_dsn: str | None = None,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    log_format: str,
    grace_period: float,
) -> None:
    """Serve the API until SIGTERM/SIGINT, then finish in-flight requests (within
    ``grace_period`` seconds) and stop. ``read_dsn``: a streaming replica for the reads
    that may lag (the service's replica.py)."""
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Request metrics summed over the server's processes, not one process's share.
        metrics_dir = tempfile.mkdtemp(prefix="pgqueue-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # The server's processes are fresh interpreters: they read their settings here.
    os.environ.update(
        PGQUEUE_DSN=dsn,
        PGQUEUE_LOG_LEVEL=log_level,
        PGQUEUE_LOG_FORMAT=log_format,
    )
    if read_dsn:
        os.environ[READ_DSN_ENV] = read_dsn
    # Each server process reads these itself; a bad value fails here, once, instead.
    limits = HttpLimits.from_env(os.environ)
    structlog.get_logger("pgqueue.api").info(
        "api_starting", host=host, port=port, workers=workers, **dataclasses.asdict(limits)
    )
    try:
        uvicorn.run(
            "pgqueue.service.asgi:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=False,  # the app logs each request itself, with its request id
            # Header limits and slow-client timeouts (by name: worker processes import it).
            http=HTTP_PROTOCOL,
            ws="none",  # the app has no websockets: no upgrade path to attack
            timeout_graceful_shutdown=max(int(grace_period), 1),
        )
    finally:
        if metrics_dir is not None:
            # Made for this run alone, and its processes have exited: nothing reads it.
            shutil.rmtree(metrics_dir, ignore_errors=True)


class _Server(uvicorn.Server):
    """uvicorn's server, minus its own signal handling: ``dev`` stops the server and
    the worker together on one signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def run_dev(
    app: Queue | None, dsn: str, *, host: str, port: int, log_level: str, concurrency: int
) -> None:
    """The API (no auth) and, given an app, one worker; until SIGTERM/SIGINT."""
    log = structlog.get_logger("pgqueue.dev")
    log.warning(
        "api_auth_disabled",
        reason="pgqueue dev: local use only, served on loopback without API keys",
        host=host,
    )
    settings = ServiceSettings(dsn=dsn, auth=False, http=HttpLimits.from_env(os.environ))
    server = _Server(
        uvicorn.Config(
            create_app(settings),
            host=host,
            port=port,
            log_level=log_level,
            access_log=False,
            http=LimitedHttpToolsProtocol.with_limits(settings.http),
            ws="none",
        )
    )
    worker = Worker(app, dsn=dsn, concurrency=concurrency) if app is not None else None

    def stop(*_args: Any) -> None:
        server.should_exit = True
        if worker is not None:
            worker.stop()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    runs = [server.serve()] + ([worker.run()] if worker is not None else [])
    log.info(
        "dev_started",
        url=f"http://{host}:{port}",
        dashboard=f"http://{host}:{port}/dashboard",
        worker=worker is not None,
    )
    try:
        await asyncio.gather(*runs)
    finally:
        stop()
