"""Every PostgreSQL advisory-lock key pgqueue takes, declared once, with what takes it.

Keys share one space per database with every other user of advisory locks, so they are
large, fixed numbers, and fixed for good: changing one would let old and new releases
take different locks for the same duty. Statements receive a key as a parameter
(``pg_try_advisory_xact_lock($2)``), never as a literal: this module is the only place a
key is written. tests/test_locks.py checks that the keys are unique and that every
owner is real.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AdvisoryLock:
    """One advisory lock: its name, its key, and the dotted name of what takes it."""

    name: str
    key: int
    owner: str


# Held for one statement by the worker elected to rescue dead workers' jobs.
RESCUE = AdvisoryLock("rescue", 7215408337251730690, owner="pgqueue.worker.heartbeat.Heartbeat")
# Held for one batch by the worker elected to prune (not the rescue's: pruning must never
# hold up a rescue).
PRUNE = AdvisoryLock("prune", 7215408337251730691, owner="pgqueue.worker.pruning.Pruner")
# Held for a whole migration run (transaction-level: the run is one transaction, which
# also holds behind a transaction pooler) by every migrator: b"pgqueue" read as a
# big-endian integer. Fixed for good: changing it would let old and new migrators race.
MIGRATION = AdvisoryLock("migration", 0x70677175657565, owner="pgqueue.migrate")

# The lock space of the claims of limited queues (pgqueue.claim_limited_queues): the two-key form
# pg_advisory_xact_lock(FLOW.key, hashtext(queue)), held by each claim of a queue with
# limits until it commits, so that claims of that queue count and claim one at a time.
# A 32-bit key ("pgqf"): the two-key form takes two integers.
FLOW = AdvisoryLock("flow", 0x70677166, owner="pgqueue.worker.claiming.Claimer")

# Held for one rollup by the worker elected to fold the job counters' deltas into their
# totals (pgqueue.roll_up_job_counters; two at once would be safe, one is enough).
COUNTERS = AdvisoryLock(
    "counters", 7215408337251730692, owner="pgqueue.worker.counters.CounterRollup"
)

ALL: tuple[AdvisoryLock, ...] = (RESCUE, PRUNE, MIGRATION, FLOW, COUNTERS)
