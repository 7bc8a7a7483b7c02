"""The bodies of ``/v1/workflows``: a workflow to enqueue (its jobs, each a ``JobIn``
named by a ``ref`` and placed after the refs it waits for), and a workflow read back
(its jobs, their states, its edges)."""

from __future__ import annotations

import typing
from datetime import datetime  # noqa: TC003 - msgspec needs it at runtime
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from .schemas import JobIn, JobOut, documented

if TYPE_CHECKING:
    from pgqueue.workflows import WorkflowStatus

REF_MAX = 100
REF_RULES = {"minLength": 1, "maxLength": REF_MAX, "pattern": "^[^\\u0000]*$"}


# What a job of a workflow cannot take: its parents are the refs in ``after``, and a key
# that returned another job would swap the job its dependants wait for. (Its
# trace_context it takes, and keeps: pgqueue.enqueue_dependants writes it, migration 0018.)
NOT_IN_WORKFLOWS = frozenset(
    {
        "depends_on",
        "idempotency_key",
        "unique_key",
        "unique_for_seconds",
        "debounce_seconds",
        "sequence_key",
        "sequence_on_failure",  # without a sequence_key, which workflows do not take
    }
)


def _step_struct() -> type[msgspec.Struct]:
    """JobIn without NOT_IN_WORKFLOWS: its description then says what a workflow's job
    takes, and a body giving one of those is refused as it is decoded."""
    hints = typing.get_type_hints(JobIn, include_extras=True)
    fields: list[Any] = []
    for field in msgspec.structs.fields(JobIn):
        if field.name in NOT_IN_WORKFLOWS:
            continue
        if field.required:
            fields.append((field.name, hints[field.name]))
        elif field.default_factory is not msgspec.NODEFAULT:
            fields.append(
                (
                    field.name,
                    hints[field.name],
                    msgspec.field(default_factory=field.default_factory),
                )
            )
        else:
            fields.append((field.name, hints[field.name], field.default))
    return msgspec.defstruct("WorkflowStepIn", fields, forbid_unknown_fields=True, module=__name__)


if TYPE_CHECKING:
    WorkflowStepIn = JobIn  # a subset of its fields, as far as a type checker need know
else:
    WorkflowStepIn = _step_struct()


def job_in(step: WorkflowStepIn) -> JobIn:
    """A workflow's job as the JobIn POST /v1/jobs would take (the rest left out)."""
    return JobIn(**msgspec.structs.asdict(step))


class WorkflowJobIn(msgspec.Struct, forbid_unknown_fields=True):
    """One job of the workflow: ``ref`` names it within the request, ``after`` lists the
    refs of earlier jobs of the request that it waits for (none: it starts at once)."""

    ref: Annotated[str, documented("this job's name within the request", **REF_RULES)]
    job: WorkflowStepIn
    after: Annotated[
        list[Annotated[str, documented(**REF_RULES)]],
        documented("refs of jobs listed before this one, which it waits for", uniqueItems=True),
    ] = msgspec.field(default_factory=list)


class WorkflowIn(msgspec.Struct, forbid_unknown_fields=True):
    """A workflow: its jobs, each after the ones it waits for (listed before it), all
    written in one transaction. A job takes the options of ``POST /v1/jobs`` but
    ``depends_on`` (``after`` gives its parents) and the keys (``idempotency_key``,
    ``unique_key``, ``unique_for_seconds``, ``debounce_seconds``, ``sequence_key``);
    ``on_parent_failure`` and ``parent_results_arg`` apply to the jobs in ``after``."""

    jobs: Annotated[list[WorkflowJobIn], documented(minItems=1)]
    name: Annotated[str, documented(minLength=1, maxLength=200)] | None = None


class EnqueuedWorkflowOut(msgspec.Struct):
    """The workflow written: its id, and each job's id by its ref."""

    id: int
    jobs: dict[str, int]


class WorkflowOut(msgspec.Struct):
    """A workflow as it stands: ``outcome`` is running, succeeded (every job did) or
    failed (a job failed or was cancelled); ``edges`` are ``[parent_id, job_id]``;
    ``total`` the jobs it was written with (pruned jobs are not listed)."""

    id: int
    name: str | None
    created_at: datetime
    total: int
    done: bool
    outcome: str
    counts: dict[str, int]
    edges: list[list[int]]
    jobs: list[JobOut]

    @classmethod
    def of(cls, status: WorkflowStatus) -> WorkflowOut:
        return cls(
            id=status.id,
            name=status.name,
            created_at=status.created_at,
            total=status.total,
            done=status.done,
            outcome=status.outcome,
            counts={state.value: n for state, n in status.counts.items()},
            edges=[[parent, child] for parent, child in status.edges],
            jobs=[JobOut.of(job) for job in status.jobs],
        )
