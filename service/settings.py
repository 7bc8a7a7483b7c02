"""The service's settings: limits, auth, and where the database is."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping


# The read replica's DSN for the server's processes (``pgqueue api --read-dsn``).
READ_DSN_ENV = "PGQUEUE_READ_DSN"


@dataclasses.dataclass(frozen=True, slots=True)
class HttpLimits:
    """What the server takes from a client before the app sees a request (enforced by
    ``http_limits.LimitedHttpToolsProtocol``; the counts again by the app, for other
    servers). Environment: ``PGQUEUE_API_`` + the field's name in capitals."""

    # The request line and headers together (431 beyond), and how many headers (431).
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    # From a request's first byte (or the connection's opening) to its last header: a
    # slow sender ties up a connection, so it gets 408 and is closed after this long.
    header_timeout_seconds: float = 10.0
    # From the last header to the body's last byte (1 MiB at 17 KiB/s): 408 beyond.
    body_timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        for field in ("max_header_bytes", "max_headers"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1")
        for field in ("header_timeout_seconds", "body_timeout_seconds"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be more than 0")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> HttpLimits:
        values: dict[str, int | float] = {}
        for field in dataclasses.fields(cls):
            raw = env.get(f"PGQUEUE_API_{field.name.upper()}")
            if raw is not None:
                kind = int if field.type == "int" else float
                try:
                    values[field.name] = kind(raw)
                except ValueError:
                    raise ValueError(
                        f"PGQUEUE_API_{field.name.upper()} must be a number; got {raw!r}"
                    ) from None
        return cls(**values)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceSettings:
    dsn: str
    # A streaming replica of ``dsn`` for reads (``--read-dsn``, ``PGQUEUE_READ_DSN``):
    # the dashboard, /metrics, and the GET endpoints read there; writes and waits for a
    # job's finish stay on ``dsn`` (see replica.py). None: everything on ``dsn``.
    read_dsn: str | None = None
    # Off only for `pgqueue dev` on loopback, which says so in its log.
    auth: bool = True
    # Whole request bodies, and a job's args as JSON: larger ones get 413.
    max_body_bytes: int = 1024 * 1024
    max_args_bytes: int = 256 * 1024
    max_batch_jobs: int = 1000
    # The longest ?wait= a status request may hold its connection for.
    max_wait_seconds: float = 60.0
    max_page_size: int = 500
    # How long a looked-up API key is trusted before it is looked up again: a revoked
    # key stops working within this many seconds.
    key_cache_seconds: float = 5.0
    # How long GET /metrics reuses its last look at the jobs table: scrapes within it
    # share one query (see metrics.py for its cost). 0: a query for every scrape.
    metrics_cache_seconds: float = 5.0
    # Header sizes and slow clients: see HttpLimits.
    http: HttpLimits = HttpLimits()

    def __post_init__(self) -> None:
        for field in ("max_body_bytes", "max_args_bytes", "max_batch_jobs", "max_page_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1")
        for field in ("max_wait_seconds", "key_cache_seconds", "metrics_cache_seconds"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must not be negative")
