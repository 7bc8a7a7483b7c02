"""Probes: ``/healthz`` (the process answers) and ``/readyz`` (the database answers and
its schema is at the head of the migration chain)."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from litestar import Request, Response, get

from pgqueue import migrate

from .problems import problem_response, problem_responses


# security=[{}]: no key needed, against the app-wide bearer requirement in the OpenAPI
# description (an empty list would be dropped and inherit it).
@get("/healthz", summary="Liveness", tags=["health"], security=[{}], sync_to_thread=False)
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    summary="Readiness",
    tags=["health"],
    security=[{}],
    responses=problem_responses(503),
)
async def readyz(request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """200 when the database answers and is migrated to head; 503 saying why not."""
    dsn = request.app.state.pgqueue.settings.dsn
    try:
        current = await asyncio.to_thread(migrate.current_revision, dsn)
    except migrate.MigrationError as exc:
        # The cause (host, port, role, server message) goes to the log, not to a caller
        # who needs no key to ask.
        structlog.get_logger("pgqueue.service").warning("readiness_failed", error=str(exc))
        return problem_response(503, "the database does not answer; see the service's log")
    head = migrate.head_revision()
    if current != head:
        return problem_response(
            503, f"the database is at migration {current}, not {head}: run `pgqueue migrate`"
        )
    return Response({"status": "ready", "migration": head})
