"""The server's timeline, as a worker follows it across a failover (no I/O here).

A promoted standby writes on a new timeline. With asynchronous replication it may lack
the old primary's last commits, claims among them: a job its worker still runs is
``queued`` there, and another claim would run it a second time beside the first. So a
worker notes the timeline at each new connection of its pool and at each heartbeat
(``pgqueue.note_timeline()``, see the section "Failover: the server's timeline" of
pgqueue/sql/schema.sql); the first worker to see a new one records when, and for the
longest lease of the workers registered every worker:

* claims nothing (the hold), and
* checks that the database still shows each job it runs as its own, giving up those it
  does not (their claims were lost; they run again once the hold ends).

A worker that cannot check within its lease gets no heartbeat renewed meanwhile, so it
fences itself (pgqueue.worker.heartbeat) and gives up every job: once the hold ends, no
run of a lost claim goes on. The driver-facing parts live in
:mod:`pgqueue.worker.failover`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timeline:
    """What ``pgqueue.note_timeline()`` answered."""

    #: The timeline the server writes on (1 for a server never promoted).
    timeline: int
    #: Seconds claims must still wait because the timeline changed (0: none).
    claims_held_for: float


class TimelineWatch:
    """One worker's view: the timeline its running jobs were checked against, and until
    when (by its monotonic clock) its claims wait."""

    def __init__(self) -> None:
        #: The timeline this worker's running jobs are known to be claimed on; None
        #: before the first note.
        self.checked: int | None = None
        self.hold_until = -math.inf

    def note(self, noted: Timeline, now: float) -> bool:
        """Take a note made at ``now``; whether the running jobs must be checked (the
        timeline is not the one they were checked against)."""
        self.hold_until = max(self.hold_until, now + noted.claims_held_for)
        if self.checked is None:  # the first note: nothing runs yet
            self.checked = noted.timeline
        return noted.timeline != self.checked

    def held_for(self, now: float) -> float:
        """Seconds the claims still wait (0: none)."""
        return max(0.0, self.hold_until - now)
