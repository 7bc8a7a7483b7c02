"""The dashboard's workflow pages: the newest workflows with their progress, and one
workflow drawn as a graph (each job a box in its state's colour, placed in the column of
its depth, an arrow from each parent). Through :class:`pgqueue.Admin`, like the rest of
the dashboard; the layout is a plain function (:func:`layout`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar import Controller, Request, get
from litestar.params import FromPath
from litestar.response import Template

from .auth import DASHBOARD_PATH, requires
from .dashboard import REFRESH_SECONDS, SECURITY_HEADERS, render
from .jobs import parse_job_id
from .state import service_state

if TYPE_CHECKING:
    from pgqueue.workflows import WorkflowStatus

WORKFLOWS_PATH = f"{DASHBOARD_PATH}/workflows"
WORKFLOWS_SHOWN = 50
# A graph of more jobs than this is listed, not drawn: a page of thousands of boxes
# helps nobody (a 1,000-job fan-out), and the table below says the same.
MAX_DRAWN_JOBS = 300
BOX_WIDTH, BOX_HEIGHT = 170, 38
COLUMN_GAP, ROW_GAP = 50, 14
MARGIN = 10


@dataclass(frozen=True, slots=True)
class Box:
    job_id: int
    task: str
    state: str
    x: int
    y: int


@dataclass(frozen=True, slots=True)
class Arrow:
    x1: int
    y1: int
    x2: int
    y2: int


@dataclass(frozen=True, slots=True)
class Graph:
    boxes: list[Box]
    arrows: list[Arrow]
    width: int
    height: int


def layout(workflow: WorkflowStatus) -> Graph:
    """Each job in the column of its depth (the longest path from a job with no parent
    in the workflow), in id order within a column; an arrow from each parent's right
    edge to its child's left edge."""
    jobs = sorted(workflow.jobs, key=lambda job: job.id)
    parents: dict[int, list[int]] = {job.id: [] for job in jobs}
    for parent, child in workflow.edges:
        if parent in parents and child in parents:
            parents[child].append(parent)
    depth: dict[int, int] = {}
    for job in jobs:  # ids grow along every edge: parents come first
        depth[job.id] = 1 + max((depth[p] for p in parents[job.id] if p in depth), default=-1)
    rows: dict[int, int] = {}
    place: dict[int, tuple[int, int]] = {}
    for job in jobs:
        column = depth[job.id]
        row = rows.get(column, 0)
        rows[column] = row + 1
        place[job.id] = (
            MARGIN + column * (BOX_WIDTH + COLUMN_GAP),
            MARGIN + row * (BOX_HEIGHT + ROW_GAP),
        )
    boxes = [Box(j.id, j.task, j.state.value, *place[j.id]) for j in jobs]
    arrows = [
        Arrow(
            place[p][0] + BOX_WIDTH,
            place[p][1] + BOX_HEIGHT // 2,
            place[c][0],
            place[c][1] + BOX_HEIGHT // 2,
        )
        for c, ps in parents.items()
        for p in ps
    ]
    columns = 1 + max(depth.values(), default=0)
    tallest = max(rows.values(), default=0)
    return Graph(
        boxes,
        arrows,
        width=2 * MARGIN + columns * (BOX_WIDTH + COLUMN_GAP) - COLUMN_GAP,
        height=2 * MARGIN + tallest * (BOX_HEIGHT + ROW_GAP) - ROW_GAP,
    )


class DashboardWorkflowsController(Controller):
    path = WORKFLOWS_PATH
    include_in_schema = False
    guards = [requires("read")]  # noqa: RUF012 - Litestar's own class attribute
    response_headers = SECURITY_HEADERS

    @get("/")
    async def workflows(self, request: Request[Any, Any, Any]) -> Template:
        service = service_state(request)
        async with service.reading(request) as conn:
            workflows = await service.admin.list_workflows(limit=WORKFLOWS_SHOWN, conn=conn)
        return render(
            request,
            "workflows.html.j2",
            nav="workflows",
            workflows=workflows,
            shown=WORKFLOWS_SHOWN,
            refresh_seconds=REFRESH_SECONDS,
        )

    @get("/{workflow_id:str}")
    async def workflow(
        self, request: Request[Any, Any, Any], workflow_id: FromPath[str]
    ) -> Template:
        ident = parse_job_id(workflow_id, "workflow_id")
        service = service_state(request)
        status = await service.read_one(
            request, lambda c: service.admin.get_workflow(ident, conn=c)
        )
        if status is None:
            return render(
                request, "missing.html.j2", status_code=404, workflow_id=ident, nav="workflows"
            )
        graph = layout(status) if len(status.jobs) <= MAX_DRAWN_JOBS else None
        return render(
            request,
            "workflow.html.j2",
            nav="workflows",
            workflow=status,
            graph=graph,
            box_width=BOX_WIDTH,
            box_height=BOX_HEIGHT,
            max_drawn=MAX_DRAWN_JOBS,
            refresh_seconds=REFRESH_SECONDS,
        )
