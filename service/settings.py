"""The service's settings: limits, auth, and where the database is."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class ServiceSettings:
    dsn: str
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

    def __post_init__(self) -> None:
        for field in ("max_body_bytes", "max_args_bytes", "max_batch_jobs", "max_page_size"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1")
        for field in ("max_wait_seconds", "key_cache_seconds", "metrics_cache_seconds"):
            if getattr(self, field) < 0:
                raise ValueError(f"{field} must not be negative")
