"""Which maintenance services a worker runs: :data:`MAINTENANCE`, one factory each.

A factory gets the :class:`ServiceContext` of a worker that has just joined and returns
its service, or None when the worker's settings turn it off. A new duty is one service
class and one entry here.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from pgqueue.worker.counters import CounterRollup
from pgqueue.worker.heartbeat import FailoverWatcher, Heartbeat
from pgqueue.worker.pruning import Pruner
from pgqueue.worker.scheduler import Scheduler

if TYPE_CHECKING:
    from collections.abc import Callable

    import asyncpg

    from pgqueue.worker.core import Worker
    from pgqueue.worker.services import PeriodicService


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceContext:
    """What a running worker offers its services."""

    worker: Worker  # its settings (dsn, queues, lease, retention...) and its current id
    pool: asyncpg.Pool[Any]  # the worker's pool, for services that run on its loop
    stopping: Callable[[], bool]  # whether the worker is stopping (cut a long round short)
    on_declared_dead: Callable[[str], None]  # callable from any thread
    failover: FailoverWatcher | None = None  # follows the server's timeline


def heartbeat(ctx: ServiceContext) -> PeriodicService:
    worker = ctx.worker
    return Heartbeat(
        worker.dsn,
        worker_id=lambda: worker.worker_id,
        interval=worker.heartbeat_interval,
        lease=worker.lease,
        on_declared_dead=ctx.on_declared_dead,
        failover=ctx.failover,
    )


def pruner(ctx: ServiceContext) -> PeriodicService | None:
    worker = ctx.worker
    if worker.retention is None:  # keeps everything: leaves pruning to others
        return None
    return Pruner(
        ctx.pool,
        worker.retention,
        interval=worker.prune_interval,
        stopping=ctx.stopping,
        queues=worker.queues,
    )


def scheduler(ctx: ServiceContext) -> PeriodicService | None:
    worker = ctx.worker
    if not worker.scheduler:  # leaves the schedules to other workers
        return None
    return Scheduler(
        ctx.pool, declared=list(worker.app.periodic_schedules.values()), stopping=ctx.stopping
    )


def counter_rollup(ctx: ServiceContext) -> PeriodicService:
    return CounterRollup(ctx.pool)


MAINTENANCE: tuple[Callable[[ServiceContext], PeriodicService | None], ...] = (
    heartbeat,
    pruner,
    scheduler,
    counter_rollup,
)


def build_services(ctx: ServiceContext) -> list[PeriodicService]:
    return [s for factory in MAINTENANCE if (s := factory(ctx)) is not None]
