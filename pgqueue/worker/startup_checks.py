"""What a worker checks of the database as it starts, beyond the schema's version: the
settings under which the queue slowly degrades rather than fails (logged once, as a
warning with what to do)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pgqueue import driver
from pgqueue.dberrors import DATABASE_ERRORS
from pgqueue.executors import AsyncpgExecutor
from pgqueue.pools import acquire

if TYPE_CHECKING:
    import asyncpg
    from structlog.typing import FilteringBoundLogger


async def warn_if_autovacuum_off(pool: asyncpg.Pool[Any], log: FilteringBoundLogger) -> None:
    """Every job claimed and finished leaves row versions and index entries behind, which
    only VACUUM removes: with autovacuum off (for the server or for pgqueue.jobs) each
    claim walks more of them, the table grows for good, and query plans made while it
    was small are never made again. Say so; a failure to ask is not the worker's
    business (its claims will say what is wrong)."""
    try:
        async with acquire(pool) as conn:
            server, jobs_table = await driver.autovacuum_settings(AsyncpgExecutor(conn))
    except DATABASE_ERRORS:
        return
    if server and jobs_table:
        return
    log.warning(
        "autovacuum_off",
        server=server,
        jobs_table=jobs_table,
        hint="turn autovacuum on (or VACUUM ANALYZE pgqueue.jobs often): "
        "the claim slows down as finished jobs' row versions pile up",
    )
