"""A real uvicorn server for the app under test, in a thread of its own, on a free
loopback port: for tests that need requests truly in flight at once, or a browser.
It serves with the protocol ``pgqueue api`` uses, with the limits of the app's
settings."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import TYPE_CHECKING

import uvicorn

from pgqueue.service.http_limits import LimitedHttpToolsProtocol

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from litestar import Litestar


@contextlib.asynccontextmanager
async def serving(app: Litestar, name: str = "test-api") -> AsyncIterator[str]:
    """Serve ``app`` until the block ends; yields its base URL once it accepts."""
    limits = app.state.pgqueue.settings.http
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=0,
            log_level="warning",
            access_log=False,
            http=LimitedHttpToolsProtocol.with_limits(limits),
            ws="none",
        )
    )
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive(), "the server stopped while starting"
            assert time.monotonic() < deadline, "the server did not start"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(20)
