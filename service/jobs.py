"""``/v1/jobs``: enqueue (one or a batch), status (with long-polling), list, cancel
and retry."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIType
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter

from pgqueue.checks import validate_job_id, validate_queue_name, validate_task_name
from pgqueue.errors import InvalidJobError, JobNotFoundError
from pgqueue.job_options import (
    OPTIONS_BY_NAME,
    QUEUE_NAME_RULES,
    TASK_NAME_RULES,
    TRACESTATE_MAX,
    valid_traceparent,
)
from pgqueue.limits import JOB_ID_MAX
from pgqueue.states import TERMINAL_STATES, JobState

from .auth import requires
from .problems import ProblemError, nested_too_deeply, problem_responses
from .routing import allow, options_route
from .schemas import (
    IDEMPOTENCY_HEADER_RULES,
    STATE_NAMES,
    BatchIn,
    BatchItemOut,
    EnqueuedBatch,
    JobIn,
    JobOut,
    JobPage,
    api_description,
    id_schema,
    json_types,
    parameter,
)
from .state import RECHECK_SECONDS, service_state

if TYPE_CHECKING:
    from collections.abc import Mapping

    from pgqueue.jobs import Job, JobSpec

    from .state import ServiceState

# No id has more digits: checked before int(), which refuses strings of more than 4,300
# digits (CPython's guard against quadratic parsing) with a ValueError of its own.
JOB_ID_DIGITS = len(str(JOB_ID_MAX))
STRING = OpenAPIType.STRING
JobIdPath = Annotated[str, PathParameter(schema_extra=id_schema("the job's id"))]
QueueFilter = Annotated[
    str | None, QueryParameter(schema_extra=parameter(STRING, **QUEUE_NAME_RULES))
]
TaskFilter = Annotated[
    str | None, QueryParameter(schema_extra=parameter(STRING, **TASK_NAME_RULES))
]
StateFilter = Annotated[
    str | None, QueryParameter(name="state", schema_extra=parameter(STRING, enum=STATE_NAMES))
]


def parse_job_id(raw: str, what: str = "job_id") -> int:
    """A job id from a path, a query or a form (the API's and the dashboard's): an
    integer from 1 to 2**63 - 1 in decimal digits, else InvalidJobError (a 422)."""
    # isascii: str.isdigit() is also true of digits int() refuses, such as "²".
    digits = raw.lstrip("0")
    if raw.isascii() and raw.isdigit() and len(digits) <= JOB_ID_DIGITS:
        with contextlib.suppress(InvalidJobError):
            return validate_job_id(int(digits or "0"))
    shown = raw if len(raw) <= 40 else f"{raw[:20]}...({len(raw)} characters)"
    raise InvalidJobError(
        f"{what} must be an integer from 1 to {JOB_ID_MAX}, got {shown!r}", field=what
    )


async def check_json_types(request: Request[Any, Any, Any], struct: type[msgspec.Struct]) -> None:
    """400 for a body whose JSON types are not the description's, though Litestar's lax
    decode took them (see schemas.json_types)."""
    try:
        msgspec.json.decode(await request.body(), type=json_types(struct))
    except msgspec.ValidationError as exc:
        raise ProblemError(
            400,
            f"Validation failed for {request.method} {request.url.path}",
            errors=[{"message": str(exc), "key": "data", "source": "body"}],
        ) from exc
    except RecursionError as exc:
        raise nested_too_deeply() from exc


def trace_context_of(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The W3C trace context of a request (its ``traceparent`` and ``tracestate``
    headers), for the jobs it enqueues: the caller's trace goes on in the job's run,
    whatever language the caller is written in. As the W3C recommendation has it, an
    invalid traceparent is ignored (not refused), and so is a tracestate pgqueue would
    not store (over TRACESTATE_MAX characters, or not printable ASCII)."""
    parent = headers.get("traceparent")
    if parent is None or not valid_traceparent(parent):
        return None
    carrier = {"traceparent": parent}
    state = headers.get("tracestate")
    if state and len(state) <= TRACESTATE_MAX and state.isascii() and state.isprintable():
        carrier["tracestate"] = state
    return carrier


def build_spec(
    service: ServiceState,
    item: JobIn,
    *,
    header_key: str | None = None,
    trace_context: dict[str, str] | None = None,
) -> JobSpec:
    """The job a request asks for, checked (InvalidJobError -> 422, too big -> 413). The
    request's ``trace_context`` (:func:`trace_context_of`) goes with the job when the body
    gives none."""
    limit = service.settings.max_args_bytes
    size = len(msgspec.json.encode(item.args))
    if size > limit:
        raise ProblemError(413, f"args are {size} bytes as JSON; the limit is {limit}")
    key = item.idempotency_key
    if header_key is not None:
        if key is not None and key != header_key:
            # 409, not 422: each key alone is valid (the description cannot say that two
            # parts of a request must agree); together they conflict.
            raise ProblemError(
                409,
                "the Idempotency-Key header and the body's idempotency_key differ: give one key",
                field="idempotency_key",
            )
        others = (item.unique_for_seconds, item.debounce_seconds, item.sequence_key,
                  item.depends_on)  # fmt: skip
        if any(other is not None for other in others):
            # 409 as above: the header cannot be described beside the body's options.
            raise ProblemError(
                409,
                "the Idempotency-Key header excludes unique_for_seconds, debounce_seconds, "
                "sequence_key and depends_on: give one",
                field="idempotency_key",
            )
        key = header_key
    options = item.options()
    if key is not None:
        options["idempotency_key"] = key
    if trace_context is not None and "trace_context" not in options:
        options["trace_context"] = trace_context
    try:
        return service.queue.build(item.task, item.args, **options)
    except InvalidJobError as exc:
        raise in_api_terms(exc) from exc


def in_api_terms(exc: InvalidJobError) -> InvalidJobError:
    """The error naming the options as the request did (``timeout_seconds``, not the
    library's ``timeout``), in its ``field`` and its message."""
    option = OPTIONS_BY_NAME.get(exc.field or "")
    field = exc.field if option is None else option.api_name
    message = api_description(str(exc))
    if (field, message) == (exc.field, str(exc)):
        return exc
    return InvalidJobError(message, field=field, index=exc.index)


def _same_request(job: Job, spec: JobSpec) -> bool:
    return (job.task, job.queue, job.args) == (spec.task, spec.queue, json.loads(spec.args_json))


class JobsController(Controller):
    path = "/v1/jobs"
    tags = ["jobs"]  # noqa: RUF012 - Litestar's own class attribute

    # Litestar (2.25) registers a controller's handlers one by one, and the automatic
    # OPTIONS answer of /v1/jobs keeps the methods of the first (Allow: OPTIONS, POST):
    # this one, registered first (Litestar orders them by name), stands in for it.
    @options_route("/")
    def allow(self) -> Response[None]:
        return allow("GET, OPTIONS, POST")

    @post(
        "/",
        guards=[requires("enqueue")],
        status_code=202,
        summary="Enqueue a job",
        responses={
            200: ResponseSpec(
                JobOut, description="The job already holding the idempotency or unique key"
            ),
            **problem_responses(400, 401, 403, 409, 413, 422, 503),
        },
    )
    async def enqueue(
        self,
        request: Request[Any, Any, Any],
        data: JSONBody[JobIn],
        idempotency_key: Annotated[
            str | None,
            HeaderParameter(
                name="Idempotency-Key", schema_extra=parameter(STRING, **IDEMPOTENCY_HEADER_RULES)
            ),
        ] = None,
    ) -> Response[JobOut]:
        """202 with the new job and its Location. With an idempotency key (in the body or
        the Idempotency-Key header) that a job already holds: 200 with that job when the
        request is the same, 409 when it differs. 200 too with the job that holds the
        unique key (unique_for_seconds: the window's first job, as it stands;
        debounce_seconds: the pending job, which took this request's args). The W3C
        traceparent and tracestate headers are the job's trace_context when the body
        gives none: its run joins the caller's trace."""
        service = service_state(request)
        await check_json_types(request, JobIn)
        spec = build_spec(
            service,
            data,
            header_key=idempotency_key,
            trace_context=trace_context_of(request.headers),
        )
        async with service.connection() as conn:
            # One round trip for a new job; a duplicate's holder is read back.
            result = await service.admin.enqueue_job(spec, conn=conn)
        job = result.job
        if job is None:  # the holder was deleted meanwhile: nothing sensible to show
            raise ProblemError(409, f"job {result.id} was deleted as it was enqueued")
        location = {"Location": f"/v1/jobs/{job.id}"}
        if not result.duplicate:
            return Response(JobOut.of(job), status_code=202, headers=location)
        # A unique window returns its first job whatever was asked now, and a debounced
        # job has just taken this request's args: only an idempotency key must match.
        if spec.idempotency_key is not None and not _same_request(job, spec):
            raise ProblemError(
                409,
                f"idempotency key {spec.idempotency_key!r} is held by job {job.id}, which was "
                "enqueued with a different task, queue or args",
                job_id=job.id,
            )
        return Response(JobOut.of(job), status_code=200, headers=location)

    @post(
        "/batch",
        guards=[requires("enqueue")],
        status_code=202,
        summary="Enqueue many jobs",
        responses=problem_responses(400, 401, 403, 409, 413, 422, 503),
    )
    async def enqueue_batch(
        self, request: Request[Any, Any, Any], data: JSONBody[BatchIn]
    ) -> EnqueuedBatch:
        """All the jobs in one transaction, or none: a bad item is a 4xx naming it. The
        W3C traceparent and tracestate headers go with every job whose body gives no
        trace_context, as for one job."""
        service = service_state(request)
        await check_json_types(request, BatchIn)
        if not data.jobs:
            raise ProblemError(422, "jobs must hold at least one job", field="jobs")
        if len(data.jobs) > service.settings.max_batch_jobs:
            # 422 like any rule the description states (maxItems), not 413 (bytes).
            raise ProblemError(
                422,
                f"{len(data.jobs)} jobs; a batch holds at most {service.settings.max_batch_jobs}",
                field="jobs",
            )
        specs = []
        trace_context = trace_context_of(request.headers)
        for index, item in enumerate(data.jobs):
            try:
                specs.append(build_spec(service, item, trace_context=trace_context))
            except InvalidJobError as exc:
                raise InvalidJobError(
                    f"jobs[{index}]: {exc}", field=exc.field, index=index
                ) from exc
            except ProblemError as exc:
                raise ProblemError(exc.status, f"jobs[{index}]: {exc.detail}", index=index) from exc
        async with service.connection() as conn:
            results = await service.queue.enqueue_many(specs, conn=conn)
        return EnqueuedBatch(jobs=[BatchItemOut(id=r.id, duplicate=r.duplicate) for r in results])

    @get(
        "/{job_id:str}",
        guards=[requires("read")],
        summary="A job's status",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
    )
    async def status(
        self,
        request: Request[Any, Any, Any],
        job_id: JobIdPath,
        # Not optional: Litestar would read ?wait=null as no wait, a value the
        # description (a number) does not allow.
        wait: Annotated[
            float,
            QueryParameter(
                description="seconds to wait for the job to finish (at most the server's limit)",
                schema_extra=parameter(OpenAPIType.NUMBER, minimum=0),
            ),
        ] = 0.0,
    ) -> JobOut:
        """The job; with ``?wait=SECONDS``, held until it is terminal or the wait ends
        (woken by the NOTIFY its completion sends)."""
        service = service_state(request)
        ident = parse_job_id(job_id)
        if not 0 <= wait <= service.settings.max_wait_seconds:
            raise ProblemError(
                422,
                f"wait must be from 0 to {service.settings.max_wait_seconds:g} seconds",
                field="wait",
            )
        if not wait:
            # May be read from the replica; one it has not got yet, from the primary.
            job = await service.read_one(request, lambda c: service.admin.get_job(ident, conn=c))
            if job is None:
                raise JobNotFoundError(f"there is no job {ident}")
            return JobOut.of(job)
        # A wait reads the primary throughout: the NOTIFY that wakes it comes from there.
        job = await self._get(request, ident)
        if job.state in TERMINAL_STATES:
            return JobOut.of(job)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        async with service.finished.watch(ident) as finished:
            job = await self._get(request, ident)  # it may have finished before LISTEN
            while job.state not in TERMINAL_STATES and (left := deadline - loop.time()) > 0:
                finished.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(finished.wait(), min(left, RECHECK_SECONDS))
                job = await self._get(request, ident)
        return JobOut.of(job)

    @get(
        "/",
        guards=[requires("read")],
        summary="List jobs, newest first",
        responses=problem_responses(400, 401, 403, 422, 503),
    )
    async def list_jobs(
        self,
        request: Request[Any, Any, Any],
        *,
        queue: QueueFilter = None,
        state_name: StateFilter = None,
        task: TaskFilter = None,
        limit: Annotated[int, QueryParameter(schema_extra={"minimum": 1})] = 50,
        cursor: Annotated[
            str | None,
            QueryParameter(schema_extra=id_schema("the next_cursor of the page before")),
        ] = None,
    ) -> JobPage:
        service = service_state(request)
        if not 1 <= limit <= service.settings.max_page_size:
            raise ProblemError(
                422, f"limit must be from 1 to {service.settings.max_page_size}", field="limit"
            )
        try:
            job_state = None if state_name is None else JobState(state_name)
        except ValueError:
            raise ProblemError(
                422,
                f"state must be one of {', '.join(STATE_NAMES)}; got {state_name!r}",
                field="state",
            ) from None
        # The filters follow the names' rules too: nothing else can match a job.
        if queue is not None:
            validate_queue_name(queue)
        if task is not None:
            validate_task_name(task)
        before = None if cursor is None else parse_job_id(cursor, "cursor")
        async with service.reading(request) as conn:
            page = await service.admin.list_jobs(
                queue=queue, state=job_state, task=task, before=before, limit=limit, conn=conn
            )
        cursor_out = None if page.next_cursor is None else str(page.next_cursor)
        return JobPage(jobs=[JobOut.of(j) for j in page.jobs], next_cursor=cursor_out)

    @post(
        "/{job_id:str}/cancel",
        guards=[requires("admin")],
        status_code=200,
        summary="Cancel",
        responses=problem_responses(400, 401, 403, 404, 409, 422, 503),
    )
    async def cancel(self, request: Request[Any, Any, Any], job_id: JobIdPath) -> JobOut:
        """A queued job never starts; a running one is stopped (409 if it has finished)."""
        service = service_state(request)
        ident = parse_job_id(job_id)
        async with service.connection() as conn:
            return JobOut.of(await service.admin.cancel_job(ident, conn=conn))

    @post(
        "/{job_id:str}/retry",
        guards=[requires("admin")],
        status_code=200,
        summary="Retry",
        responses=problem_responses(400, 401, 403, 404, 409, 422, 503),
    )
    async def retry(self, request: Request[Any, Any, Any], job_id: JobIdPath) -> JobOut:
        """A failed or cancelled job, queued again now (409 for any other state)."""
        service = service_state(request)
        ident = parse_job_id(job_id)
        async with service.connection() as conn:
            return JobOut.of(await service.admin.retry_job(ident, conn=conn))

    @staticmethod
    async def _get(request: Request[Any, Any, Any], job_id: int) -> Job:
        service = service_state(request)
        async with service.reading(request, primary=True) as conn:
            job = await service.admin.get_job(job_id, conn=conn)
        if job is None:
            raise JobNotFoundError(f"there is no job {job_id}")
        return job
