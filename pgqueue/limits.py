"""The bounds a job's values keep, in one place: the job's validation (pgqueue.jobs), the
retry and snooze delays, the API's schema and the table's CHECK constraints use them.

They keep every value a job can hold inside what both PostgreSQL's column types and
Python can represent, so that a job that could be written can always be read back (by
the worker, the API, the dashboard).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

# run_at: Python's datetime ends at year 9999 (PostgreSQL's timestamptz goes on to
# 294276, and asyncpg stores datetime.max as 'infinity'); a day's margin at each end
# keeps the value representable in every time zone. The same bounds are a CHECK
# constraint on pgqueue.jobs (migration 0009), so rows written from psql keep them too.
RUN_AT_MIN = datetime(1, 1, 2, tzinfo=UTC)
RUN_AT_MAX = datetime(9999, 12, 30, tzinfo=UTC)
# Delays (delay, a retry's backoff, a snooze) and timeouts: at most 100 years. Far
# beyond any real use, and far inside both an interval's range and the largest timeout
# Python's threading accepts, so that now() + delay always lands before RUN_AT_MAX.
MAX_SECONDS = 100 * 365 * 86_400
# The shortest timeout: an interval counts microseconds, so a shorter one would be stored
# as 0, which the table's CHECK refuses.
MIN_TIMEOUT_SECONDS = 1e-6
# Nesting of args (and of a task's result): deep enough for any real document, and well
# inside what Python's json and msgspec decode (about 1,000 levels) and jsonb stores.
MAX_JSON_DEPTH = 100
JOB_ID_MAX = 2**63 - 1  # bigint

# The same patterns as the CHECK constraints on pgqueue.jobs: checked here first so the
# caller gets a clear error instead of a constraint violation.
QUEUE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
TASK_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")
PRIORITY_MIN, PRIORITY_MAX = -32768, 32767  # smallint; higher runs first
MAX_ATTEMPTS_LIMIT = 1000
IDEMPOTENCY_KEY_MAX = 255
CONCURRENCY_KEY_MAX = 255
UNIQUE_KEY_MAX = 255
SEQUENCE_KEY_MAX = 255
