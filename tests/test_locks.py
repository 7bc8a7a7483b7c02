"""Advisory-lock keys: each declared once, in pgqueue.locks, with the service owning it;
statements get them as parameters, never as literals."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pgqueue
from pgqueue import locks
from pgqueue.worker.maintenance import MAINTENANCE
from pgqueue.worker.services import PeriodicService

PACKAGE = Path(pgqueue.__file__).parent
LOCK_CALL = re.compile(r"pg_(?:try_)?advisory_(?:xact_)?(?:un)?lock(?:_shared)?\s*\(([^)]*)\)")


def _resolve(dotted: str) -> object:
    module, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return importlib.import_module(dotted)


def test_every_key_and_name_is_unique():
    assert len({lock.key for lock in locks.ALL}) == len(locks.ALL)
    assert len({lock.name for lock in locks.ALL}) == len(locks.ALL)
    # Each fits PostgreSQL's bigint, the type of a single-key advisory lock.
    assert all(-(2**63) <= lock.key < 2**63 for lock in locks.ALL)


def test_every_lock_statement_takes_its_key_as_a_parameter():
    sql = (PACKAGE / "sql" / "queries.sql").read_text()
    calls = LOCK_CALL.findall(sql)
    assert calls, "the queries take advisory locks (the rescue's, the pruning's)"
    for argument in calls:
        assert re.fullmatch(r"\$\d+(::bigint)?", argument.strip()), argument


def test_no_key_is_written_anywhere_but_in_pgqueue_locks():
    spellings = {str(lock.key) for lock in locks.ALL} | {hex(lock.key) for lock in locks.ALL}
    sources = [*PACKAGE.rglob("*.py"), *PACKAGE.rglob("*.sql")]
    for path in sources:
        if path == PACKAGE / "locks.py" or "migrations" in path.parts:
            continue
        text = path.read_text().lower()
        found = [s for s in spellings if s in text]
        assert not found, f"{path.relative_to(PACKAGE)} writes the advisory-lock key {found}"


def test_every_owner_is_real_and_every_elected_service_owns_its_lock():
    owners = {lock.name: _resolve(lock.owner) for lock in locks.ALL}
    for lock in locks.ALL:
        owner = owners[lock.name]
        if isinstance(owner, type) and issubclass(owner, PeriodicService):
            assert owner.election is lock, f"{lock.owner} does not elect by {lock.name}"
    # The other way round: a service that elects names its lock's owner as itself.
    services = {type(s) for s in _services()}
    for service in services:
        if service.election is not None:
            assert _resolve(service.election.owner) is service
    assert {s.election for s in services} >= {locks.RESCUE, locks.PRUNE, locks.COUNTERS}


def _services() -> list[PeriodicService]:
    """One of each maintenance service, built as a worker builds them (not started)."""
    from pgqueue.worker.maintenance import ServiceContext

    worker = pgqueue.Worker(pgqueue.Queue("postgresql://nowhere/x"), queues=["q"])
    context = ServiceContext(
        worker,
        pool=None,  # type: ignore[arg-type] - not started: nothing connects
        stopping=lambda: False,
        on_declared_dead=lambda _id: None,
    )
    built = [factory(context) for factory in MAINTENANCE]
    return [s for s in built if s is not None]
