"""Retry maths: how long to wait before the next attempt. Pure functions, no I/O."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from pgqueue.limits import MAX_SECONDS


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter.

    The n-th retry waits ``base * factor ** (n - 1)`` seconds, capped at ``max_delay``,
    then scaled by a random factor in ``[1 - jitter, 1]`` so that jobs that failed
    together do not all come back in the same instant.
    """

    base: float = 1.0
    factor: float = 2.0
    max_delay: float = 300.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        # The delays become run_at = now() + delay in the database: finite and within
        # the bound every delay keeps (see pgqueue.limits).
        if not (0 <= self.base <= MAX_SECONDS and 0 <= self.max_delay <= MAX_SECONDS):
            raise ValueError(f"retry delays must be from 0 to {MAX_SECONDS} seconds")
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError("retry factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("retry jitter must be between 0 and 1")

    def delay(self, attempt: int, rand: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        exponent = max(attempt - 1, 0)
        # Cap before multiplying out so that large attempt numbers cannot overflow.
        raw = self.max_delay if exponent > 64 else self.base * self.factor**exponent
        capped = min(raw, self.max_delay)
        spread = (rand or random).uniform(1.0 - self.jitter, 1.0)
        return capped * spread


def retry_in(
    attempt: int,
    max_attempts: int,
    policy: RetryPolicy,
    *,
    permanent: bool = False,
    rand: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt, or None when the job has failed for good."""
    if permanent or attempt >= max_attempts:
        return None
    return policy.delay(attempt, rand)
