"""``/v1/workflows``: enqueue a workflow (jobs and the jobs each waits for, written in
one transaction) and read one back with its jobs' states and its edges."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.params import JSONBody, PathParameter

from pgqueue.errors import InvalidJobError, JobNotFoundError
from pgqueue.workflows import Workflow

from .auth import requires
from .jobs import build_spec, check_json_types, parse_job_id, trace_context_of
from .problems import ProblemError, problem_responses
from .schemas import id_schema
from .state import service_state
from .workflow_schemas import EnqueuedWorkflowOut, WorkflowIn, WorkflowOut, job_in

if TYPE_CHECKING:
    from pgqueue.workflows import Part

    from .state import ServiceState

WorkflowIdPath = Annotated[str, PathParameter(schema_extra=id_schema("the workflow's id"))]


def build_workflow(
    service: ServiceState, data: WorkflowIn, trace_context: dict[str, str] | None = None
) -> Workflow:
    """The workflow a request asks for, every job checked as ``POST /v1/jobs`` checks one
    (a 4xx naming the item), its ``after`` refs resolved to jobs listed before it."""
    if len(data.jobs) > service.settings.max_batch_jobs:
        raise ProblemError(
            422,
            f"{len(data.jobs)} jobs; a workflow holds at most {service.settings.max_batch_jobs}",
            field="jobs",
        )
    workflow = Workflow(data.name)
    parts: dict[str, Part] = {}
    for index, item in enumerate(data.jobs):
        where = f"jobs[{index}]"
        # 409, not 422, for what only the parts of the request together get wrong (the
        # description cannot say that a ref must name an earlier job), as for the
        # Idempotency-Key header against the body in POST /v1/jobs.
        if item.ref in parts:
            raise ProblemError(409, f"{where}: ref {item.ref!r} is taken", field="ref", index=index)
        unknown = [ref for ref in item.after if ref not in parts]
        if unknown:
            raise ProblemError(
                409,
                f"{where}: after names {', '.join(map(repr, unknown))}, which no job listed "
                "before this one has as its ref",
                field="after",
                index=index,
            )
        for option in ("on_parent_failure", "parent_results_arg"):
            if getattr(item.job, option) is not None and not item.after:
                raise ProblemError(
                    409,
                    f"{where}: {option} applies to the jobs in after, and it has none",
                    field=option,
                    index=index,
                )
        try:
            spec = build_spec(service, job_in(item.job), trace_context=trace_context)
        except InvalidJobError as exc:
            raise InvalidJobError(f"{where}: {exc}", field=exc.field, index=index) from exc
        except ProblemError as exc:
            raise ProblemError(exc.status, f"{where}: {exc.detail}", index=index) from exc
        parts[item.ref] = workflow.add(spec, after=[parts[ref] for ref in item.after])
    return workflow


class WorkflowsController(Controller):
    path = "/v1/workflows"
    tags = ["workflows"]  # noqa: RUF012 - Litestar's own class attribute

    @post(
        "/",
        guards=[requires("enqueue")],
        status_code=202,
        summary="Enqueue a workflow",
        responses=problem_responses(400, 401, 403, 409, 413, 422, 503),
    )
    async def enqueue(
        self, request: Request[Any, Any, Any], data: JSONBody[WorkflowIn]
    ) -> Response[EnqueuedWorkflowOut]:
        """202 with the workflow's id, each job's id by its ref, and its Location. Every
        job and edge is written in one transaction, or none: a bad job is a 4xx naming
        it (``index``). A job runs once every job in its ``after`` has succeeded; when
        one fails or is cancelled, it is cancelled too (``on_parent_failure: "run"``
        runs it anyway), and ``parent_results_arg`` names the argument that receives
        its parents' results."""
        service = service_state(request)
        await check_json_types(request, WorkflowIn)
        workflow = build_workflow(service, data, trace_context_of(request.headers))
        async with service.connection() as conn:
            status = await service.admin.enqueue_workflow(workflow, conn=conn)
        # The admin call gives the jobs in the order they were added: the n-th listed.
        refs = {item.ref: job.id for item, job in zip(data.jobs, status.jobs, strict=True)}
        body = EnqueuedWorkflowOut(id=status.id, jobs=refs)
        return Response(body, status_code=202, headers={"Location": f"/v1/workflows/{status.id}"})

    @get(
        "/{workflow_id:str}",
        guards=[requires("read")],
        summary="A workflow's status",
        responses=problem_responses(400, 401, 403, 404, 422, 503),
    )
    async def status(
        self, request: Request[Any, Any, Any], workflow_id: WorkflowIdPath
    ) -> WorkflowOut:
        """Its jobs and their states, its edges (``[parent_id, job_id]``), the count of
        jobs in each state, whether it is done and its outcome. 404 once all its jobs
        have been pruned."""
        service = service_state(request)
        ident = parse_job_id(workflow_id, "workflow_id")
        status = await service.read_one(
            request, lambda c: service.admin.get_workflow(ident, conn=c)
        )
        if status is None:
            raise JobNotFoundError(f"there is no workflow {ident}")
        return WorkflowOut.of(status)
