"""Input the API must refuse with a 4xx (never a 500), writing nothing, and rows it must
read whatever they hold: the values issue 7 found answering 500 (out-of-range delays,
timeouts and dates, NUL in a key, deeply nested args, ids longer than Python parses, a
retry whose idempotency key a newer job holds), through the API and the dashboard, and
rows written from psql with odd values the table's constraints allow."""

from __future__ import annotations

import psycopg
import pytest
from litestar.testing import AsyncTestClient
from test_dashboard import csrf_of, login

from pgqueue.limits import MAX_SECONDS
from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.auth import create_key

PROBLEM = "application/problem+json"
HUGE_ID = "7" * 5000  # Python's int() refuses strings of more than 4,300 digits


@pytest.fixture
def admin_key(dsn):
    return create_key(dsn, name="bounds-admin", scope="admin")[1]


@pytest.fixture
def admin(admin_key):
    return {"Authorization": f"Bearer {admin_key}"}


@pytest.fixture
async def api(dsn):
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn, key_cache_seconds=0))) as c:
        yield c


def rows(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()[0]


def problem(response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    return response.json()


def nested(depth: int) -> bytes:
    return b'{"task": "t", "args": {"a": ' + b"[" * depth + b"]" * depth + b"}}"


# --- enqueue: refused before anything is written ------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        # The field is the body's member, as the request named it.
        ({"delay_seconds": 1e12}, "delay_seconds"),
        ({"delay_seconds": 1e13}, "delay_seconds"),
        ({"delay_seconds": MAX_SECONDS + 1}, "delay_seconds"),
        ({"timeout_seconds": 1e13}, "timeout_seconds"),
        ({"timeout_seconds": 5e-324}, "timeout_seconds"),  # would be stored as 0 microseconds
        ({"run_at": "9999-12-31T23:59:59-14:00"}, "run_at"),
        ({"run_at": "9999-12-31T23:59:59.999999Z"}, "run_at"),  # was stored as infinity
        ({"run_at": "0001-01-01T00:00:00+14:00"}, "run_at"),
        ({"idempotency_key": "a\u0000b"}, "idempotency_key"),
        ({"queue": ""}, "queue"),  # was taken for the default queue
        ({"args": {"k": "\u0000"}}, "args"),
        ({"priority": 40000}, "priority"),
    ],
)
async def test_out_of_range_values_are_a_422_naming_the_field(api, admin, dsn, body, field):
    response = await api.post("/v1/jobs", json={"task": "t", **body}, headers=admin)
    refused = problem(response, 422)
    assert refused["field"] == field
    assert refused["detail"].startswith(field) or field not in {"delay_seconds", "timeout_seconds"}
    batch = {"jobs": [{"task": "t"}, {"task": "t", **body}]}
    refused = problem(await api.post("/v1/jobs/batch", json=batch, headers=admin), 422)
    assert (refused["field"], refused["index"]) == (field, 1)
    assert refused["detail"].startswith("jobs[1]: ")
    assert rows(dsn) == 0
    # Reads go on answering (a 500 on the write used to leave a row that broke them).
    assert (await api.get("/v1/jobs", headers=admin)).status_code == 200


@pytest.mark.parametrize("depth", [150, 999, 5000])
async def test_deeply_nested_args_are_a_422(api, admin, dsn, depth):
    headers = {**admin, "content-type": "application/json"}
    response = await api.post("/v1/jobs", content=nested(depth), headers=headers)
    assert "nested" in problem(response, 422)["detail"]
    batch = b'{"jobs": [' + nested(depth) + b"]}"
    response = await api.post("/v1/jobs/batch", content=batch, headers=headers)
    assert "nested" in problem(response, 422)["detail"]
    assert rows(dsn) == 0


async def test_json_types_the_description_refuses_are_a_400(api, admin, dsn):
    """Litestar's lax decoding would take them (a number as text, a date as a number)."""
    for body in (
        {"task": "t", "priority": "5"},
        {"task": "t", "run_at": 0},
        {"task": "t", "delay_seconds": "1"},
        {"task": "t", "max_attempts": 2.5},
    ):
        assert problem(await api.post("/v1/jobs", json=body, headers=admin), 400)
        batch = {"jobs": [body]}
        assert problem(await api.post("/v1/jobs/batch", json=batch, headers=admin), 400)
    # JSON Schema's integers include 5.0: taken, as 5.
    accepted = await api.post("/v1/jobs", json={"task": "t", "priority": 5.0}, headers=admin)
    assert (accepted.status_code, accepted.json()["priority"]) == (202, 5)


async def test_list_filters_follow_the_names_rules(api, admin):
    for query in ("queue=a%00b", "task=a%00b", "queue=", "task=bad%20task", "state=stuck"):
        problem(await api.get(f"/v1/jobs?{query}", headers=admin), 422)
    for query in ("queue=q", "task=t.x", "state=queued", "limit=1"):
        assert (await api.get(f"/v1/jobs?{query}", headers=admin)).status_code == 200


# --- ids ------------------------------------------------------------------------------------


async def test_ids_longer_than_python_parses_are_a_422_on_every_route(api, admin, admin_key):
    for method, path in [
        ("GET", f"/v1/jobs/{HUGE_ID}"),
        ("POST", f"/v1/jobs/{HUGE_ID}/cancel"),
        ("POST", f"/v1/jobs/{HUGE_ID}/retry"),
        ("GET", f"/v1/jobs?cursor={HUGE_ID}"),
        ("GET", f"/v1/jobs/{'0' * 5000}1"),  # leading zeros: still job 1, not found
    ]:
        response = await api.request(method, path, headers=admin)
        if path.endswith("1") and "0000" in path:
            assert problem(response, 404)
            continue
        body = problem(response, 422)
        assert "must be an integer from 1 to 9223372036854775807" in body["detail"]
        assert len(body["detail"]) < 200  # the id is not echoed whole
    await login(api, admin_key)
    page = await api.get("/dashboard")
    token = csrf_of(page.text)
    for method, path in [
        ("GET", f"/dashboard/jobs/{HUGE_ID}"),
        ("GET", f"/dashboard/partials/jobs/{HUGE_ID}"),
        ("GET", f"/dashboard/jobs?cursor={HUGE_ID}"),
        ("POST", f"/dashboard/jobs/{HUGE_ID}/retry"),
        ("POST", f"/dashboard/jobs/{HUGE_ID}/cancel"),
    ]:
        data = {"csrf_token": token} if method == "POST" else None
        response = await api.request(method, path, data=data, follow_redirects=False)
        assert response.status_code == 422, (path, response.text[:300])


# --- a retry whose key a newer job holds -----------------------------------------------------


async def test_retrying_a_job_whose_key_a_newer_job_holds_is_a_409(api, admin, admin_key, dsn):
    old = await api.post("/v1/jobs", json={"task": "t", "idempotency_key": "k"}, headers=admin)
    old_id = old.json()["id"]
    assert (await api.post(f"/v1/jobs/{old_id}/cancel", headers=admin)).status_code == 200
    new = await api.post("/v1/jobs", json={"task": "t", "idempotency_key": "k"}, headers=admin)
    assert new.status_code == 202  # the cancelled job let its key go
    body = problem(await api.post(f"/v1/jobs/{old_id}/retry", headers=admin), 409)
    assert "CONTEXT" not in body["detail"]
    # The dashboard's Retry button says so on the job's page.
    await login(api, admin_key)
    token = csrf_of((await api.get(f"/dashboard/jobs/{old_id}")).text)
    response = await api.post(
        f"/dashboard/jobs/{old_id}/retry", data={"csrf_token": token}, follow_redirects=False
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/dashboard/jobs/{old_id}?error=key_held"
    shown = await api.get(response.headers["location"])
    assert "newer job now holds its idempotency key" in shown.text
    with psycopg.connect(dsn) as conn:
        states = conn.execute("SELECT state::text FROM pgqueue.jobs ORDER BY id").fetchall()
    assert states == [("cancelled",), ("queued",)]


# --- rows written from psql ---------------------------------------------------------------------

ODD_ROWS = [
    # (columns, values): each allowed by the table's constraints.
    ("args", "jsonb_build_object('deep', repeat('[', 3000) || repeat(']', 3000))"),
    ("args", "(repeat('{\"a\": ', 1500) || '1' || repeat('}', 1500))::jsonb"),
    ("timeout", "interval '3153600000 seconds'"),
    ("timeout", "interval '1 microsecond'"),
    ("result", "'5'::jsonb"),
    ("result", "'\"text\"'::jsonb"),
    ("result", "'null'::jsonb"),
    ("result", "(repeat('[', 2000) || repeat(']', 2000))::jsonb"),
    ("progress", "'[1, {\"x\": null}]'::jsonb"),
    ("errors", '\'[1, "boom", null, {"at": "not a time"}]\'::jsonb'),
    ("run_at", "'0001-01-02 00:00:00+00'"),
    ("run_at", "'9999-12-30 00:00:00+00'"),
    ("priority", "-32768"),
    ("attempts", "2147483647"),
    ("idempotency_key", "repeat('é', 255)"),
    ("queue", "repeat('q', 64)"),
]


async def test_reads_answer_for_every_row_the_table_allows(api, admin, admin_key, dsn):
    ids = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        for column, value in ODD_ROWS:
            state = "'failed'" if column in {"result", "errors"} else "'queued'"
            row = conn.execute(
                f"INSERT INTO pgqueue.jobs (task, state, {column}) "
                f"VALUES ('odd', {state}, {value}) RETURNING id"
            ).fetchone()
            ids.append(row[0])
    listed = await api.get(f"/v1/jobs?limit={len(ids)}", headers=admin)
    assert listed.status_code == 200, listed.text
    assert [j["id"] for j in listed.json()["jobs"]] == ids[::-1]
    for job_id in ids:
        response = await api.get(f"/v1/jobs/{job_id}", headers=admin)
        assert response.status_code == 200, (job_id, response.text)
    await login(api, admin_key)
    for path in ["/dashboard", "/dashboard/jobs", "/dashboard/jobs?state=failed"] + [
        f"/dashboard/jobs/{job_id}" for job_id in ids
    ]:
        page = await api.get(path)
        assert page.status_code == 200, (path, page.text[:500])
