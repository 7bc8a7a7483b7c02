"""Every error as ``application/problem+json`` (RFC 9457), with a ``detail`` that says
what was wrong, mapped here, in one place.

400 or 422: a request that does not decode into what the endpoint takes (malformed
JSON, a string where a number goes, an unknown member, a number no float can hold) is
a 400, found by msgspec. A request that decodes but breaks a rule on a value (a name's
pattern, a range, a length, a date's bounds, an id) is a 422, found by pgqueue's one
validation of a job (``pgqueue.jobs``: build_job, validate_*), naming the ``field``. The
OpenAPI description documents those rules from the same constants but msgspec does not
enforce them, so that an input never gets a 400 from one layer and a 422 from another
for the same mistake. A body nested deeper than the decoder goes is a 422 too, like
args nested deeper than MAX_JSON_DEPTH that did decode."""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import structlog
from litestar import Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from pgqueue.errors import (
    DatabaseUnavailableError,
    IdempotencyConflictError,
    InvalidJobError,
    InvalidLimitError,
    JobNotFoundError,
    JobStateError,
    OutcomeUnknownError,
    PgQueueError,
    PoolTimeoutError,
    ScheduleNotFoundError,
    SchemaNotReadyError,
)
from pgqueue.limits import MAX_JSON_DEPTH
from pgqueue.workflows import ParentNotFoundError

from .schemas import Problem

if TYPE_CHECKING:
    from litestar import Request
    from litestar.types import ExceptionHandlersMap

PROBLEM_JSON = "application/problem+json"


class ProblemError(Exception):
    """An error response: its status, a short title and the detail for this case."""

    def __init__(
        self, status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    status: int,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **(extra or {}),
    }
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _on_problem(_request: Request[Any, Any, Any], exc: ProblemError) -> Response[dict[str, Any]]:
    return problem_response(exc.status, exc.detail, headers=exc.headers, extra=exc.extra)


def _on_validation(
    _request: Request[Any, Any, Any], exc: ValidationException
) -> Response[dict[str, Any]]:
    # The body or a parameter did not decode into what the endpoint takes.
    errors = exc.extra if isinstance(exc.extra, list) else None
    return problem_response(400, str(exc.detail), extra={"errors": errors} if errors else None)


def _on_http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    detail = exc.detail or HTTPStatus(exc.status_code).phrase
    if exc.status_code == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
        limit = request.app.state.pgqueue.settings.max_body_bytes
        detail = f"the request body is larger than the limit of {limit} bytes"
    return problem_response(exc.status_code, detail, headers=dict(exc.headers or {}))


# Each pgqueue error a handler can meet, as the status that tells the client what it
# means. Their messages are written for the caller (errors.py), so they are the detail.
PGQUEUE_ERROR_STATUSES: dict[type[PgQueueError], int] = {
    # depends_on naming no job: a valid request that conflicts with what is stored.
    ParentNotFoundError: 409,
    InvalidJobError: 422,
    InvalidLimitError: 422,
    JobNotFoundError: 404,
    ScheduleNotFoundError: 404,
    JobStateError: 409,
    # A retry of a job whose idempotency key a newer job now holds, and the like.
    IdempotencyConflictError: 409,
    SchemaNotReadyError: 503,
    DatabaseUnavailableError: 503,
    PoolTimeoutError: 503,
    OutcomeUnknownError: 503,
}


def _on_pgqueue_error(
    _request: Request[Any, Any, Any], exc: PgQueueError
) -> Response[dict[str, Any]]:
    status = next(s for cls, s in PGQUEUE_ERROR_STATUSES.items() if isinstance(exc, cls))
    extra: dict[str, Any] = {}
    if isinstance(exc, InvalidJobError):
        extra = {k: v for k, v in (("field", exc.field), ("index", exc.index)) if v is not None}
    return problem_response(status, str(exc), extra=extra)


def _decoding_request(exc: BaseException) -> bool:
    """Whether the error was raised while Litestar decoded the request into the
    handler's arguments (its kwargs extraction), not in a handler."""
    frame = exc.__traceback__
    while frame is not None:
        if "/litestar/_kwargs/" in frame.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        frame = frame.tb_next
    return False


def nested_too_deeply() -> ProblemError:
    return ProblemError(
        422, f"the body is nested too deeply to decode; args may nest {MAX_JSON_DEPTH} levels"
    )


def _on_recursion(request: Request[Any, Any, Any], exc: RecursionError) -> Response[dict[str, Any]]:
    if not _decoding_request(exc):
        return _on_unexpected(request, exc)
    return _on_problem(request, nested_too_deeply())


def _on_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    structlog.get_logger("pgqueue.service").exception(
        "request_failed", path=request.url.path, error=repr(exc)
    )
    return problem_response(500, "the server failed to handle the request; see its log")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ProblemError: _on_problem,
    ValidationException: _on_validation,
    HTTPException: _on_http,
    **dict.fromkeys(PGQUEUE_ERROR_STATUSES, _on_pgqueue_error),
    RecursionError: _on_recursion,
    Exception: _on_unexpected,
}

# What each error status means wherever it is documented (see problem_responses).
PROBLEM_DESCRIPTIONS = {
    400: "The body or a parameter could not be decoded",
    401: "No API key, or an unknown or revoked one",
    403: "The API key's scope does not allow this",
    404: "No such job",
    409: "The job's state or an idempotency key conflicts with the request",
    413: "The body or a job's args is larger than the limit",
    415: "The body is not JSON: send it with Content-Type: application/json",
    422: "The request decoded but is not valid (names, ranges, parameters)",
    503: "Not ready: the database does not answer, or is not migrated to this version",
}


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """OpenAPI descriptions of error responses, for a handler's ``responses=``: without
    them the schema would promise Litestar's own JSON error shape, not ours."""
    if 413 in statuses and 415 not in statuses:
        # 413 marks a handler that takes a body, which must be JSON (http_limits).
        statuses = (*statuses, 415)
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_JSON,
            description=PROBLEM_DESCRIPTIONS[status],
            generate_examples=False,
        )
        for status in statuses
    }


__all__ = [
    "EXCEPTION_HANDLERS",
    "PROBLEM_JSON",
    "ProblemError",
    "problem_response",
    "problem_responses",
]
