"""Workflows: jobs that wait for other jobs, and a builder of graphs of them.

A job enqueued with ``depends_on=[ids]`` runs once every one of those jobs has
succeeded. Until then it is ``blocked`` (no claim looks at it); when a parent ends
failed or cancelled it is cancelled too, with its own dependants after it, the reason in
each one's ``errors`` (``on_parent_failure="cancel"``, the default), or runs anyway
(``"run"``). ``parent_results_arg="name"`` gives it its parents' results as that keyword
argument: with one parent, that parent's result; with several, the list of them in
``depends_on`` order (None for a parent that failed).

The builder writes a whole graph of such jobs in one statement, inside the caller's
transaction when ``conn`` is given::

    wf = Workflow("nightly")
    fetch = wf.add(fetch_orders.job(day=day))
    totals = wf.add(total.with_options(parent_results_arg="orders").job(), after=[fetch])
    wf.add(email_report.job(), after=[totals])
    done = await queue.enqueue_workflow(wf)          # done.id, done.id_of(totals)

or from the canvas: ``chain(a, b, c)`` (each step after the one before), ``group(a, b)``
(side by side) and ``chord(group(...), callback)`` (the callback after the whole group),
nested as you like, made of JobSpecs (``task.job(...)``, ``queue.build(...)``).

The storage, triggers and races are described in the schema's section "Workflows"
(pgqueue/sql/schema.sql); the statements are in pgqueue/sql/workflows.sql. This module
does no I/O: building and checking graphs, the statement's parameters, rows decoded.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgqueue.checks import validate_text
from pgqueue.errors import InvalidJobError, JobNotFoundError
from pgqueue.jobs import JobSpec
from pgqueue.rows import job_from_row
from pgqueue.states import JobState
from pgqueue.validation import check_parent_options, check_spec_fields

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence
    from datetime import datetime

    from pgqueue.jobs import Job
    from pgqueue.tasks import Task

__all__ = [
    "Chain",
    "Chord",
    "EnqueuedWorkflow",
    "Group",
    "ParentNotFoundError",
    "Part",
    "Workflow",
    "WorkflowStatus",
    "chain",
    "chord",
    "group",
]

WORKFLOW_NAME_MAX = 200
# The options a job of a workflow cannot take: each is enforced by an index or a count
# that knows nothing of a job waiting 'blocked' for its parents.
_REFUSED_IN_WORKFLOWS = ("idempotency_key", "unique_key", "sequence_key")
_UNFINISHED = frozenset({JobState.BLOCKED, JobState.QUEUED, JobState.RUNNING})


class ParentNotFoundError(JobNotFoundError):
    """``depends_on`` names a job that does not exist (never did, or was deleted):
    nothing was written. ``missing`` holds the ids (``field`` is ``"depends_on"``)."""

    def __init__(self, missing: tuple[int, ...]) -> None:
        names = ", ".join(map(str, missing))
        super().__init__(f"depends_on names no job: {names}")
        self.missing = missing
        self.field = "depends_on"


def parent_not_found(exc: BaseException) -> ParentNotFoundError | None:
    """The typed error for pgqueue.enqueue_dependants' refusal of an unknown parent."""
    if getattr(exc, "sqlstate", None) != "23503":  # foreign_key_violation
        return None
    diag = getattr(exc, "diag", None)  # psycopg's; asyncpg's errors carry .detail
    detail = getattr(diag, "message_detail", None) or getattr(exc, "detail", None) or ""
    try:
        missing = tuple(int(part) for part in str(detail).split(","))
    except ValueError:
        return None
    return ParentNotFoundError(missing)


def dependent_params(spec: JobSpec) -> tuple[Any, ...]:
    """Parameters of ``enqueue_dependent``: the fields it names, arrays as lists."""
    return tuple(list(p) if isinstance(p, tuple) else p for p in spec.insert_params())


def described_as_written(spec: JobSpec, row: Any) -> bool:
    """Whether the job the enqueue of ``spec`` wrote is what ``spec`` says: not so for a
    dependant released or cancelled at once (its args or errors were written by the
    database): read it back."""
    return spec.depends_on is None or row["state"] == JobState.BLOCKED.value


def check_results_arg(task: Task[Any, Any], name: str) -> None:
    """Refuse a ``parent_results_arg`` the task's function does not take by keyword."""
    params = task.signature.parameters
    param = params.get(name)
    if param is not None and param.kind in (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
    ):
        return
    if param is None and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    raise InvalidJobError(
        f"parent_results_arg {name!r}: task {task.name} takes no keyword argument of that name",
        field="parent_results_arg",
    )


# --- the canvas ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, init=False)
class Chain:
    """Steps one after the other: each waits for the one before (all of its jobs)."""

    steps: tuple[Step, ...]

    def __init__(self, *steps: Step) -> None:
        object.__setattr__(self, "steps", _steps("chain", steps))


@dataclass(frozen=True, slots=True, init=False)
class Group:
    """Steps side by side, each waiting for what the group waits for."""

    steps: tuple[Step, ...]

    def __init__(self, *steps: Step) -> None:
        object.__setattr__(self, "steps", _steps("group", steps))


@dataclass(frozen=True, slots=True)
class Chord:
    """A group, then a callback that waits for all of it (and receives every result, in
    the group's order, through its parent_results_arg)."""

    header: Group
    body: Step


Step = JobSpec | Chain | Group | Chord


def chain(*steps: Step) -> Chain:
    """``chain(a, b, c)``: b after a, c after b. A step receives the result of the one
    before when it names a ``parent_results_arg`` (a list when that step is a group)."""
    return Chain(*steps)


def group(*steps: Step) -> Group:
    """``group(a, b)``: a and b side by side."""
    return Group(*steps)


def chord(header: Group | Iterable[Step], body: Step) -> Chord:
    """``chord(group(a, b), callback)``: the callback after every job of the group; its
    ``parent_results_arg`` receives their results, in the group's order."""
    return Chord(header if isinstance(header, Group) else Group(*header), body)


def _steps(what: str, steps: tuple[Any, ...]) -> tuple[Step, ...]:
    if not steps:
        raise InvalidJobError(f"a {what} needs at least one step")
    for step in steps:
        if not isinstance(step, JobSpec | Chain | Group | Chord):
            raise InvalidJobError(
                f"a {what}'s steps are jobs (task.job(...), queue.build(...)), chains, groups "
                f"or chords, not {type(step).__name__}"
            )
    return steps


# --- the graph ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Part:
    """What :meth:`Workflow.add` returns: the jobs it added (indices in the workflow, in
    the order written) and those a later step placed after it waits for (``exits``)."""

    workflow: Workflow
    jobs: tuple[int, ...]
    exits: tuple[int, ...]


@dataclass(slots=True)
class _Node:
    spec: JobSpec
    parents: list[int]  # indices of earlier jobs of the workflow, in order


class Workflow:
    """A graph of jobs, written at once by :meth:`Queue.enqueue_workflow`: every job or
    none. ``add`` places a job (or a chain, group or chord) after earlier parts; the
    jobs' own ``depends_on`` (existing jobs) come after those parents."""

    def __init__(self, name: str | None = None) -> None:
        self.name = None if name is None else validate_text(name, "name", WORKFLOW_NAME_MAX)
        self._nodes: list[_Node] = []

    def __len__(self) -> int:
        return len(self._nodes)

    def add(self, step: Step, *, after: Iterable[Part] = ()) -> Part:
        """Add a job, chain, group or chord, waiting for every exit of each of ``after``
        (parts of this workflow)."""
        parents: list[int] = []
        for part in after:
            if not isinstance(part, Part) or part.workflow is not self:
                raise InvalidJobError("after= takes parts that add() of this workflow returned")
            parents += [i for i in part.exits if i not in parents]
        jobs, exits = self._place(step, tuple(parents))
        return Part(self, jobs, exits)

    def _place(self, step: Step, after: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
        if isinstance(step, JobSpec):
            self._nodes.append(_Node(check_spec_fields(step), list(after)))
            index = len(self._nodes) - 1
            return (index,), (index,)
        if isinstance(step, Chord):
            head, exits = self._place(step.header, after)
            body, exits = self._place(step.body, exits)
            return head + body, exits
        if isinstance(step, Chain):
            placed: tuple[int, ...] = ()
            exits = after
            for inner in step.steps:
                jobs, exits = self._place(inner, exits)
                placed += jobs
            return placed, exits
        if isinstance(step, Group):
            ends: tuple[int, ...] = ()
            placed = ()
            for inner in step.steps:
                jobs, exits = self._place(inner, after)
                placed, ends = placed + jobs, ends + exits
            return placed, ends
        raise InvalidJobError(
            f"a workflow's steps are jobs (task.job(...), queue.build(...)), chains, groups or "
            f"chords, not {type(step).__name__}"
        )

    def plan(self, tasks: Mapping[str, Task[Any, Any]] | None = None) -> WorkflowPlan:
        """The workflow checked, as the parameters of its one statement; ``tasks``: the
        registered tasks whose signatures must take their jobs' parent_results_arg."""
        return WorkflowPlan.of(self, tasks or {})

    def topological(self) -> list[tuple[JobSpec, list[int]]]:
        """Each job and its parents in the workflow (indices), parents first."""
        return [(node.spec, list(node.parents)) for node in self._nodes]


def as_workflow(workflow: Workflow | Step) -> Workflow:
    """A Workflow, or a chain, group, chord or job made one."""
    if isinstance(workflow, Workflow):
        return workflow
    wf = Workflow()
    wf.add(workflow)
    return wf


@dataclass(frozen=True, slots=True)
class WorkflowPlan:
    """A checked workflow: its name, jobs and edges, ready for ``enqueue_workflow``."""

    name: str | None
    specs: list[JobSpec]
    parents: list[list[int]]
    exits: tuple[int, ...]

    @classmethod
    def of(cls, workflow: Workflow, tasks: Mapping[str, Task[Any, Any]]) -> WorkflowPlan:
        nodes = workflow._nodes  # noqa: SLF001 - this module's own class
        if not nodes:
            raise InvalidJobError("a workflow needs at least one job")
        waited: set[int] = set()
        for index, node in enumerate(nodes):
            _check_node(index, node, tasks)
            waited.update(node.parents)
        exits = tuple(i for i in range(len(nodes)) if i not in waited)
        return cls(workflow.name, [n.spec for n in nodes], [n.parents for n in nodes], exits)

    def params(self) -> tuple[Any, ...]:
        """Parameters of ``enqueue_workflow`` (sql/workflows.sql)."""
        specs = self.specs
        edge_jobs: list[int] = []
        local: list[int | None] = []
        outside: list[int | None] = []
        for index, (spec, parents) in enumerate(zip(specs, self.parents, strict=True), 1):
            for parent in parents:
                edge_jobs.append(index)
                local.append(parent + 1)
                outside.append(None)
            for job_id in spec.depends_on or ():
                edge_jobs.append(index)
                local.append(None)
                outside.append(job_id)
        return (
            self.name,
            [s.queue for s in specs],
            [s.task for s in specs],
            [s.args_json for s in specs],
            [s.priority for s in specs],
            [s.max_attempts for s in specs],
            [s.run_at for s in specs],
            [s.delay for s in specs],
            [s.timeout for s in specs],
            [s.concurrency_key for s in specs],
            [s.on_parent_failure for s in specs],
            [s.parent_results_arg for s in specs],
            edge_jobs,
            local,
            outside,
            [s.trace_context for s in specs],
        )

    def with_specs(self, specs: Sequence[JobSpec]) -> WorkflowPlan:
        """This plan with its jobs replaced, one for one and in the same order (the jobs
        an instrumentation gave a trace context: pgqueue.hooks.EnqueueCall.specs)."""
        if len(specs) != len(self.specs):
            raise ValueError(f"a plan of {len(self.specs)} jobs takes as many, not {len(specs)}")
        return dataclasses.replace(self, specs=list(specs))

    def enqueued(self, rows: Sequence[Any]) -> EnqueuedWorkflow:
        """What ``enqueue_workflow`` returned (one row per job, in input order)."""
        ids = tuple(int(r["id"]) for r in rows)
        if len(ids) != len(self.specs):
            raise AssertionError(f"workflow of {len(self.specs)} jobs wrote {len(ids)}")
        return EnqueuedWorkflow(
            id=int(rows[0]["workflow_id"]),
            job_ids=ids,
            last_ids=tuple(ids[i] for i in self.exits),
            states=tuple(JobState(r["state"]) for r in rows),
        )


def _check_node(index: int, node: _Node, tasks: Mapping[str, Task[Any, Any]]) -> None:
    try:
        _check_node_spec(node, tasks)
    except InvalidJobError as exc:
        raise InvalidJobError(f"job {index}: {exc}", field=exc.field, index=index) from exc


def _check_node_spec(node: _Node, tasks: Mapping[str, Task[Any, Any]]) -> None:
    spec = node.spec
    refused = next((name for name in _REFUSED_IN_WORKFLOWS if getattr(spec, name)), None)
    if refused is not None:
        raise InvalidJobError(
            f"a job of a workflow takes no {refused} (its dependants wait for this very job, "
            "which a key could swap for another)",
            field=refused,
        )
    if not node.parents:
        check_parent_options(spec)
    task = tasks.get(spec.task)
    if spec.parent_results_arg is not None and task is not None:
        check_results_arg(task, spec.parent_results_arg)
        if spec.parent_results_arg in json.loads(spec.args_json):
            raise InvalidJobError(
                f"argument {spec.parent_results_arg!r} is given by the parents' results, not "
                "by the job",
                field="parent_results_arg",
            )


@dataclass(frozen=True, slots=True)
class EnqueuedWorkflow:
    """What :meth:`Queue.enqueue_workflow` wrote: the workflow's id, its jobs' ids in the
    order they were added (a canvas: as written, left to right), the ids of its last jobs
    (those nothing in it waits for: a chain's last step, a chord's callback), and each
    job's state as written (blocked until its parents end; queued without parents)."""

    id: int
    job_ids: tuple[int, ...]
    last_ids: tuple[int, ...]
    states: tuple[JobState, ...] = field(repr=False, default=())

    def ids_of(self, part: Part) -> tuple[int, ...]:
        """The ids of the jobs ``part`` added, in the order written."""
        return tuple(self.job_ids[i] for i in part.jobs)

    def id_of(self, part: Part) -> int:
        """The id of the job ``part`` added (a single job: use ids_of for more)."""
        if len(part.jobs) != 1:
            raise ValueError(f"this part added {len(part.jobs)} jobs: use ids_of()")
        return self.job_ids[part.jobs[0]]

    @property
    def last_id(self) -> int:
        """The id of the one last job (a chain's last step, a chord's callback)."""
        if len(self.last_ids) != 1:
            raise ValueError(f"this workflow ends with {len(self.last_ids)} jobs: use last_ids")
        return self.last_ids[0]


# --- reading workflows back --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkflowStatus:
    """A workflow as it stands (:meth:`Queue.get_workflow`): its jobs with their states,
    its edges ``(parent_id, job_id)``, the count of jobs in each state, whether it is
    done (no job blocked, queued or running) and its ``outcome``: running, succeeded
    (every job did) or failed (some job failed or was cancelled). Jobs pruned since are
    in none of these; ``total`` is how many it was written with."""

    id: int
    name: str | None
    created_at: datetime
    total: int
    jobs: list[Job]
    edges: list[tuple[int, int]]
    counts: dict[JobState, int]
    done: bool
    outcome: str

    def job(self, job_id: int) -> Job:
        """The job of this workflow with this id (KeyError if it has none such)."""
        for job in self.jobs:
            if job.id == job_id:
                return job
        raise KeyError(job_id)


def in_order_added(status: WorkflowStatus, job_ids: Sequence[int]) -> WorkflowStatus:
    """``status`` with its jobs in the order of ``job_ids`` (as written: the order they
    were added), rather than by id."""
    by_id = {job.id: job for job in status.jobs}
    return dataclasses.replace(status, jobs=[by_id[i] for i in job_ids if i in by_id])


def _outcome(counts: dict[JobState, int]) -> str:
    """running while a job is unfinished; then failed when one failed or was cancelled,
    else succeeded (as the pgqueue.workflow_status view says)."""
    if any(counts[state] for state in _UNFINISHED):
        return "running"
    if counts[JobState.FAILED] or counts[JobState.CANCELLED]:
        return "failed"
    return "succeeded"


def workflow_from_rows(rows: Sequence[Any]) -> WorkflowStatus | None:
    """A ``get_workflow`` result, or None when there is no such workflow."""
    if not rows:
        return None
    first = rows[0]
    jobs = [job_from_row(r) for r in rows if r["id"] is not None]
    edges = [(parent, job.id) for job in jobs for parent in job.depends_on or ()]
    counts = dict.fromkeys(JobState, 0)
    for job in jobs:
        counts[job.state] += 1
    done = not any(counts[state] for state in _UNFINISHED)
    outcome = _outcome(counts)
    return WorkflowStatus(
        id=first["workflow_id"],
        name=first["workflow_name"],
        created_at=first["workflow_created_at"],
        total=first["workflow_jobs"],
        jobs=jobs,
        edges=edges,
        counts=counts,
        done=done,
        outcome=outcome,
    )


@dataclass(frozen=True, slots=True)
class WorkflowSummary:
    """One workflow of a listing (:meth:`Admin.list_workflows`): its jobs counted by
    state, whether it is done and its outcome (as :class:`WorkflowStatus`)."""

    id: int
    name: str | None
    created_at: datetime
    total: int
    counts: dict[JobState, int]
    finished_at: datetime | None  # the last of its jobs to finish, so far

    @property
    def done(self) -> bool:
        return not any(self.counts[state] for state in _UNFINISHED)

    @property
    def outcome(self) -> str:
        return _outcome(self.counts)


def workflow_summary_from_row(row: Any) -> WorkflowSummary:
    """A ``list_workflows`` row, by column name."""
    return WorkflowSummary(
        id=row["workflow_id"],
        name=row["name"],
        created_at=row["created_at"],
        total=row["total"],
        counts={state: row[state.value] for state in JobState},
        finished_at=row["finished_at"],
    )
