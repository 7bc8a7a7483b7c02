"""The limit endpoints' bodies (service/limits.py), as msgspec structs documented with
the same rules the library checks (see schemas.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec

if TYPE_CHECKING:
    from litestar.openapi.spec import OpenAPI

    from pgqueue.flow import LimitStatus

from .schemas import documented

# What the HTTP API documents of a rate: the count within its bounds, the period a
# whole number of one unit within 1 ms to 366 days (pgqueue.flow.Rate.parse also takes
# spaces and decimals, which the description leaves out).
RATE_RULES: dict[str, Any] = {
    "pattern": r"^(1000000|[1-9][0-9]{0,5})/"
    r"((([1-9][0-9]{0,2})?(ms|s|m|h))|(([1-9]|[1-9][0-9]|[12][0-9]{2}|3[0-5][0-9]|36[0-6])?d))$",
}
RATE_TEXT = (
    "COUNT/PERIOD: at most COUNT job starts in any window of PERIOD, such as 100/m, 5/s, "
    "10/30s, 1000/h; "
)
LIMIT_RULES: dict[str, Any] = {"minimum": 1, "maximum": 1_000_000}


class QueueLimitIn(msgspec.Struct, forbid_unknown_fields=True):
    """A queue's limits, all replaced; left out or null: no limit of that kind. With
    none at all the queue is still limited: its concurrency keys take turns."""

    concurrency: Annotated[int | None, documented("running jobs of the queue", **LIMIT_RULES)] = (
        None
    )
    rate: Annotated[str | None, documented(RATE_TEXT + "job starts of the queue", **RATE_RULES)] = (
        None
    )
    key_concurrency: Annotated[
        int | None, documented("running jobs of each concurrency key", **LIMIT_RULES)
    ] = None
    key_rate: Annotated[
        str | None, documented(RATE_TEXT + "job starts of each key", **RATE_RULES)
    ] = None


class KeyLimitIn(msgspec.Struct, forbid_unknown_fields=True):
    """One concurrency key's own limits, instead of its queue's key defaults."""

    concurrency: Annotated[int | None, documented("running jobs of the key", **LIMIT_RULES)] = None
    rate: Annotated[str | None, documented(RATE_TEXT + "job starts of the key", **RATE_RULES)] = (
        None
    )


class LimitOut(msgspec.Struct):
    """A limited queue (``concurrency_key`` null) or one of its keys: running against
    its concurrency limit, starts in the current window against its rate."""

    queue: str
    concurrency_key: str | None
    concurrency: int | None
    running: int
    rate: str | None
    recent_starts: int
    queued: int

    @classmethod
    def of(cls, status: LimitStatus) -> LimitOut:
        return cls(
            queue=status.queue,
            concurrency_key=status.concurrency_key,
            concurrency=status.concurrency,
            running=status.running,
            rate=None if status.rate is None else str(status.rate),
            recent_starts=status.recent_starts,
            queued=status.queued,
        )


class LimitList(msgspec.Struct):
    limits: list[LimitOut]


def document_limits(openapi: OpenAPI) -> None:
    """What Litestar cannot say of the limits' bodies by itself: no other members."""
    schemas = openapi.components.schemas if openapi.components else {}
    for struct in ("QueueLimitIn", "KeyLimitIn"):
        schemas[struct].additional_properties = False
