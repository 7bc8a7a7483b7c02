"""What one call of a job's function came to, as the worker's parts pass it on."""

from __future__ import annotations

import dataclasses
from typing import Any

from pgqueue.checks import encode_json
from pgqueue.errors import InvalidJobError, PermanentError


class OwnershipLostError(Exception):
    """A transactional task finished, but its job was no longer this worker's to
    complete (rescued or cancelled meanwhile): its transaction was rolled back."""


class CommitOutcomeUnknownError(Exception):
    """A transactional task's connection was lost around its commit: the job may have
    succeeded or may still be running in the database. The worker hands such a job
    back (if it is still running under it) instead of writing an outcome."""


@dataclasses.dataclass(frozen=True, slots=True)
class Ran:
    """A call that returned: its result as JSON, and whether the job was already marked
    succeeded in the task's own transaction."""

    result_json: str | None
    committed: bool = False


def encode_result(value: Any) -> str | None:
    if value is None:
        return None
    # Running the task again would give the same value: fail for good, not retry.
    try:
        return encode_json(value, "task result")
    except InvalidJobError as exc:
        raise PermanentError(str(exc)) from exc
