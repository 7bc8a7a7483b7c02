"""Workflows over HTTP and on the dashboard (Litestar's test client, a real PostgreSQL):
``POST /v1/workflows`` writes a graph in one transaction or refuses it naming the item,
``GET /v1/workflows/{id}`` reads it back, and the dashboard lists workflows and draws
one as a graph."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from test_dashboard import login

from pgqueue.jobs import Job
from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.auth import create_key
from pgqueue.service.dashboard_workflows import BOX_WIDTH, layout
from pgqueue.states import JobState
from pgqueue.workflows import WorkflowStatus

PROBLEM = "application/problem+json"
DIAMOND = {
    "name": "diamond",
    "jobs": [
        {"ref": "top", "job": {"task": "wf.top", "args": {"n": 1}}},
        {"ref": "left", "job": {"task": "wf.left"}, "after": ["top"]},
        {"ref": "right", "job": {"task": "wf.right", "queue": "other"}, "after": ["top"]},
        {"ref": "bottom", "job": {"task": "wf.bottom"}, "after": ["left", "right"]},
    ],
}


@pytest.fixture
def keys(dsn):
    return {scope: create_key(dsn, name=f"{scope}-key", scope=scope)[1] for scope in ("read",)}


@pytest.fixture
async def client(dsn):
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn, auth=False))) as c:
        yield c


def counts(dsn: str) -> tuple[int, int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pgqueue.jobs), "
            "(SELECT count(*) FROM pgqueue.job_dependencies), "
            "(SELECT count(*) FROM pgqueue.workflows)"
        ).fetchone()
    assert row is not None
    return (row[0], row[1], row[2])


async def test_a_diamond_is_written_at_once_and_read_back(client, dsn):
    posted = await client.post("/v1/workflows", json=DIAMOND)
    assert posted.status_code == 202, posted.text
    body = posted.json()
    ids = body["jobs"]
    assert list(ids) == ["top", "left", "right", "bottom"]
    assert posted.headers["location"] == f"/v1/workflows/{body['id']}"
    got = await client.get(posted.headers["location"])
    assert got.status_code == 200, got.text
    workflow = got.json()
    assert (workflow["name"], workflow["total"], workflow["outcome"]) == ("diamond", 4, "running")
    states = {job["id"]: job["state"] for job in workflow["jobs"]}
    assert states == {
        ids["top"]: "queued",
        ids["left"]: "blocked",
        ids["right"]: "blocked",
        ids["bottom"]: "blocked",
    }
    assert sorted(map(tuple, workflow["edges"])) == sorted(
        [
            (ids["top"], ids["left"]),
            (ids["top"], ids["right"]),
            (ids["left"], ids["bottom"]),
            (ids["right"], ids["bottom"]),
        ]
    )
    right = next(job for job in workflow["jobs"] if job["id"] == ids["right"])
    assert (right["queue"], right["depends_on"]) == ("other", [ids["top"]])
    assert counts(dsn) == (4, 4, 1)


def stored_trace_contexts(dsn: str, ids: list[int]) -> list[object]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT trace_context FROM pgqueue.jobs WHERE id = ANY (%s) ORDER BY id", (ids,)
        ).fetchall()
    return [row[0] for row in rows]


async def test_a_workflows_jobs_keep_the_trace_context_they_are_given(client, dsn):
    # A workflow's job takes trace_context like any job (it is no key: nothing refuses
    # it), and it is stored, read back with the workflow and with the job.
    traced = {"traceparent": f"00-{'a' * 32}-{'b' * 16}-01", "tracestate": "vendor=1"}
    plain = {"traceparent": f"00-{'c' * 32}-{'d' * 16}-00"}
    body = {
        "jobs": [
            {"ref": "first", "job": {"task": "wf.first", "trace_context": traced}},
            {"ref": "second", "job": {"task": "wf.second", "trace_context": plain}},
            {"ref": "last", "job": {"task": "wf.last"}, "after": ["first", "second"]},
        ]
    }
    posted = await client.post("/v1/workflows", json=body)
    assert posted.status_code == 202, posted.text
    ids = posted.json()["jobs"]
    got = await client.get(posted.headers["location"])
    assert got.status_code == 200, got.text
    by_id = {job["id"]: job["trace_context"] for job in got.json()["jobs"]}
    assert by_id == {ids["first"]: traced, ids["second"]: plain, ids["last"]: None}
    one = await client.get(f"/v1/jobs/{ids['first']}")
    assert one.json()["trace_context"] == traced
    assert stored_trace_contexts(dsn, [ids["first"], ids["second"], ids["last"]]) == [
        traced,
        plain,
        None,
    ]


async def test_a_workflow_over_http_joins_the_callers_trace(client, dsn):
    # The W3C headers, as for POST /v1/jobs: every job without a trace_context of its
    # own takes the request's.
    header = f"00-{'e' * 32}-{'f' * 16}-01"
    own = {"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"}
    body = {
        "jobs": [
            {"ref": "a", "job": {"task": "wf.a"}},
            {"ref": "b", "job": {"task": "wf.b", "trace_context": own}, "after": ["a"]},
        ]
    }
    posted = await client.post(
        "/v1/workflows", json=body, headers={"traceparent": header, "tracestate": "k=v"}
    )
    assert posted.status_code == 202, posted.text
    ids = posted.json()["jobs"]
    assert stored_trace_contexts(dsn, [ids["a"], ids["b"]]) == [
        {"traceparent": header, "tracestate": "k=v"},
        own,
    ]


@pytest.mark.parametrize(
    ("jobs", "status", "field", "index"),
    [
        ([{"ref": "a", "job": {"task": "t"}}, {"ref": "a", "job": {"task": "t"}}], 409, "ref", 1),
        ([{"ref": "a", "job": {"task": "t"}, "after": ["b"]}], 409, "after", 0),
        (  # after names only jobs listed before: no cycle can be written
            [
                {"ref": "a", "job": {"task": "t"}, "after": ["b"]},
                {"ref": "b", "job": {"task": "t"}, "after": ["a"]},
            ],
            409,
            "after",
            0,
        ),
        (
            [{"ref": "a", "job": {"task": "t", "parent_results_arg": "x"}}],
            409,
            "parent_results_arg",
            0,
        ),
        (
            [
                {"ref": "a", "job": {"task": "t"}},
                {"ref": "b", "job": {"task": "t", "priority": 1e6}},
            ],
            422,
            "priority",
            1,
        ),
        (
            [{"ref": "a", "job": {"task": "t", "timeout_seconds": -1}}],
            422,
            "timeout_seconds",
            0,
        ),
    ],
)
async def test_a_bad_job_refuses_the_whole_workflow_naming_it(
    client, dsn, jobs, status, field, index
):
    refused = await client.post("/v1/workflows", json={"jobs": jobs})
    assert refused.status_code == status, refused.text
    assert refused.headers["content-type"].startswith(PROBLEM)
    problem = refused.json()
    assert problem["field"] == field
    if index is not None:
        assert problem["index"] == index
    assert counts(dsn) == (0, 0, 0)


async def test_undecodable_bodies_and_unknown_workflows(client, dsn):
    assert (await client.post("/v1/workflows", json={"jobs": []})).status_code == 422
    assert (await client.post("/v1/workflows", json={"jobs": [{"ref": "a"}]})).status_code == 400
    extra = {"jobs": [{"ref": "a", "job": {"task": "t"}, "extra": 1}]}
    assert (await client.post("/v1/workflows", json=extra)).status_code == 400
    # A workflow's job takes no parents of its own (after gives them) and no key.
    for name, value in (("depends_on", [1]), ("idempotency_key", "k"), ("sequence_key", "s")):
        keyed = {"jobs": [{"ref": "a", "job": {"task": "t", name: value}}]}
        refused = await client.post("/v1/workflows", json=keyed)
        assert refused.status_code == 400, (name, refused.text)
    missing = await client.get("/v1/workflows/999999")
    assert (missing.status_code, missing.json()["status"]) == (404, 404)
    bad = await client.get("/v1/workflows/abc")
    assert (bad.status_code, bad.json()["field"]) == (422, "workflow_id")
    assert counts(dsn) == (0, 0, 0)


async def test_the_dashboard_lists_workflows_and_draws_one(dsn, keys):
    app = create_app(ServiceSettings(dsn=dsn, key_cache_seconds=0))
    async with AsyncTestClient(app) as client:
        await login(client, keys["read"])
        empty = await client.get("/dashboard/workflows")
        assert "No workflows yet" in empty.text
        async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn, auth=False))) as api:
            posted = (await api.post("/v1/workflows", json=DIAMOND)).json()
        listing = await client.get("/dashboard/workflows")
        assert f'data-workflow="{posted["id"]}"' in listing.text
        assert "0 of 4 succeeded" in listing.text
        page = await client.get(f"/dashboard/workflows/{posted['id']}")
        assert page.status_code == 200
        drawn = set(map(int, re.findall(r'<a href="[^"]*" data-job="(\d+)"', page.text)))
        assert drawn == set(posted["jobs"].values())
        assert len(re.findall(r"<line ", page.text)) == 4  # one arrow per edge
        missing = await client.get("/dashboard/workflows/999999")
        assert missing.status_code == 404
        assert "No workflow 999999" in missing.text


def _job(job_id: int, depends_on: tuple[int, ...] | None = None) -> Job:
    now = datetime.now(UTC)
    return Job(
        id=job_id,
        task="t",
        args={},
        state=JobState.BLOCKED if depends_on else JobState.QUEUED,
        attempts=0,
        result=None,
        errors=[],
        created_at=now,
        started_at=None,
        finished_at=None,
        queue="default",
        priority=0,
        max_attempts=3,
        run_at=now,
        depends_on=depends_on,
    )


def test_the_layout_puts_each_job_after_its_deepest_parent():
    jobs = [_job(1), _job(2, (1,)), _job(3, (1,)), _job(4, (2, 3)), _job(5, (1, 4))]
    edges = [(p, j.id) for j in jobs for p in j.depends_on or ()]
    status = WorkflowStatus(
        id=1,
        name=None,
        created_at=datetime.now(UTC),
        total=5,
        jobs=jobs,
        edges=edges,
        counts={},
        done=False,
        outcome="running",
    )
    graph = layout(status)
    column = {box.job_id: box.x // BOX_WIDTH for box in graph.boxes}
    x = {box.job_id: box.x for box in graph.boxes}
    assert x[1] < x[2] == x[3] < x[4] < x[5]  # 5 waits for 4: the longest path decides
    assert len(column) == 5
    assert len(graph.arrows) == len(edges)
    assert all(a.x1 < a.x2 for a in graph.arrows)  # every arrow points right
    assert graph.width >= max(x.values()) + BOX_WIDTH
