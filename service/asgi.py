"""The app for ASGI servers, configured from the environment (``pgqueue api`` sets it
for its worker processes, which start fresh interpreters):

- ``PGQUEUE_DSN`` (required): the database.
- ``PGQUEUE_READ_DSN``: a streaming replica of it for the dashboard, ``/metrics`` and
  the GET endpoints (see replica.py).
- ``PGQUEUE_API_MAX_BODY_BYTES``, ``PGQUEUE_API_MAX_ARGS_BYTES``,
  ``PGQUEUE_API_MAX_WAIT_SECONDS``: limits (see ServiceSettings).
- ``PGQUEUE_API_MAX_HEADER_BYTES``, ``PGQUEUE_API_MAX_HEADERS``,
  ``PGQUEUE_API_HEADER_TIMEOUT_SECONDS``, ``PGQUEUE_API_BODY_TIMEOUT_SECONDS``: what
  the server takes from a client (see HttpLimits; the timeouts need ``--http
  pgqueue.service.http_limits:LimitedHttpToolsProtocol``).
- ``PGQUEUE_LOG_LEVEL``, ``PGQUEUE_LOG_FORMAT`` (``json``, ``console`` or ``auto``).

``uvicorn --factory pgqueue.service.asgi:app_from_env``

Auth is always on here: only ``pgqueue dev``, which builds its app itself and serves it
on loopback, runs without keys.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from pgqueue.logs import configure_logging

from .app import create_app
from .settings import READ_DSN_ENV, HttpLimits, ServiceSettings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from litestar import Litestar


def settings_from_env(env: Mapping[str, str]) -> ServiceSettings:
    dsn = env.get("PGQUEUE_DSN")
    if not dsn:
        raise RuntimeError("PGQUEUE_DSN must name the database the API serves")
    defaults = ServiceSettings(dsn=dsn)
    return ServiceSettings(
        dsn=dsn,
        read_dsn=env.get(READ_DSN_ENV) or None,
        max_body_bytes=int(env.get("PGQUEUE_API_MAX_BODY_BYTES", defaults.max_body_bytes)),
        max_args_bytes=int(env.get("PGQUEUE_API_MAX_ARGS_BYTES", defaults.max_args_bytes)),
        max_wait_seconds=float(env.get("PGQUEUE_API_MAX_WAIT_SECONDS", defaults.max_wait_seconds)),
        http=HttpLimits.from_env(env),
    )


def app_from_env() -> Litestar:
    fmt = os.environ.get("PGQUEUE_LOG_FORMAT", "auto")
    configure_logging(
        os.environ.get("PGQUEUE_LOG_LEVEL", "info"),
        json={"auto": None, "json": True, "console": False}.get(fmt),
    )
    return create_app(settings_from_env(os.environ))
