"""Retention: how long finished jobs are kept.

Workers enforce it as part of their maintenance (:mod:`pgqueue.worker.pruning`), in
batches of :data:`PRUNE_BATCH` rows so that no transaction grows large. ``Queue.prune``
and the SQL function ``pgqueue.prune_jobs`` do the same on demand.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from pgqueue.limits import MAX_SECONDS

if TYPE_CHECKING:
    from collections.abc import Sequence

# Rows deleted per statement: large enough to be cheap per row, small enough that each
# batch is a short transaction.
PRUNE_BATCH = 10_000

# The prune_jobs statements' parameters: retentions in seconds (None: forever), batch,
# queues (None: every queue).
PruneParams = tuple[float | None, float | None, float | None, int | None, list[str] | None]


@dataclass(frozen=True, slots=True)
class Retention:
    """How long finished jobs are kept, per state, before they are pruned; ``None``
    keeps that state's jobs forever. Failed and cancelled jobs are kept longer by
    default: they are the ones people come back to inspect and retry."""

    succeeded: timedelta | None = timedelta(days=7)
    failed: timedelta | None = timedelta(days=30)
    cancelled: timedelta | None = timedelta(days=30)

    def __post_init__(self) -> None:
        for state in ("succeeded", "failed", "cancelled"):
            value = getattr(self, state)
            if value is not None and (
                not isinstance(value, timedelta) or not timedelta(0) <= value <= _LONGEST
            ):
                raise ValueError(
                    f"retention for {state} jobs must be a timedelta from 0 to 100 years, or "
                    f"None (forever), got {value!r}"
                )

    @classmethod
    def forever(cls) -> Retention:
        """Keep every finished job (pruning off)."""
        return cls(succeeded=None, failed=None, cancelled=None)

    @property
    def prunes(self) -> bool:
        """Whether any state's jobs are ever pruned."""
        return any(v is not None for v in (self.succeeded, self.failed, self.cancelled))

    def params(self, max_rows: int | None, queues: Sequence[str] | None = None) -> PruneParams:
        """Parameters of the ``prune_jobs`` statements: retentions in seconds, the batch
        and the queues to prune (None: every queue)."""
        return (
            _seconds(self.succeeded),
            _seconds(self.failed),
            _seconds(self.cancelled),
            max_rows,
            None if queues is None else list(queues),
        )


_LONGEST = timedelta(seconds=MAX_SECONDS)  # a retention, like every delay (pgqueue.limits)


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else value.total_seconds()


_DURATION_RE = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>[smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta | None:
    """A retention as people write it: ``90s``, ``30m``, ``12h``, ``7d``, ``2w``, a plain
    number of seconds, or ``forever`` (``None``). ValueError for anything else."""
    cleaned = text.strip().lower()
    if cleaned == "forever":
        return None
    match = _DURATION_RE.fullmatch(cleaned)
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: a number with an optional unit s, m, h, d or w "
            "(7d, 12h, 90s), or 'forever'"
        )
    seconds = float(match["number"]) * _UNIT_SECONDS[match["unit"]]
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise ValueError(f"duration {text!r} is over 100 years; use 'forever' to keep jobs")
    return timedelta(seconds=seconds)
