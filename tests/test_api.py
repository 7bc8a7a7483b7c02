"""The HTTP API through Litestar's test client, against a real PostgreSQL: every
endpoint, every error code, auth and scopes, idempotency."""

from __future__ import annotations

import asyncio

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient
from servekit import serving

import pgqueue
from pgqueue.service import ServiceSettings, create_app
from pgqueue.service import state as service_state
from pgqueue.service.auth import SCOPES, create_key, revoke_key
from pgqueue.testing import running_worker, wait_for_job

PROBLEM = "application/problem+json"


@pytest.fixture
def keys(dsn):
    return {scope: create_key(dsn, name=f"test-{scope}", scope=scope)[1] for scope in SCOPES}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def settings(dsn):
    return ServiceSettings(
        dsn=dsn, max_body_bytes=64 * 1024, max_args_bytes=1024, key_cache_seconds=0
    )


@pytest.fixture
async def api(settings):
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def admin(keys):
    return bearer(keys["admin"])


@pytest.fixture
async def live_api(settings):
    """The app on a real server, for tests that need requests truly in flight at once
    (the test client runs one request at a time, and blocks the test's loop meanwhile)."""
    async with (
        serving(create_app(settings)) as url,
        httpx.AsyncClient(base_url=url, timeout=60) as client,
    ):
        yield client


def job_count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()[0]


def assert_problem(response, status: int, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body = response.json()
    assert body["status"] == status
    assert body["title"]
    for fragment in fragments:
        assert fragment in body["detail"]
    return body


# --- enqueue -----------------------------------------------------------------------------


async def test_enqueue_answers_202_with_the_job_and_its_location(api, admin, dsn):
    response = await api.post(
        "/v1/jobs",
        json={
            "task": "emails.send",
            "args": {"to": "a@example.com"},
            "queue": "emails",
            "priority": 5,
            "delay_seconds": 60,
            "max_attempts": 7,
            "timeout_seconds": 30,
        },
        headers=admin,
    )
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert (job["task"], job["queue"], job["state"], job["priority"]) == (
        "emails.send",
        "emails",
        "queued",
        5,
    )
    assert (job["max_attempts"], job["attempts"], job["timeout_seconds"]) == (7, 0, 30)
    assert job["args"] == {"to": "a@example.com"}
    assert job["run_at"] > job["created_at"]  # delayed
    assert job_count(dsn) == 1


async def test_the_202_body_is_the_job_as_stored(api, admin):
    """The enqueue describes the new job from what its INSERT returned, without reading
    it back: it must be exactly what a read of the job gives (no worker runs here)."""
    for body in (
        {"task": "report.build", "args": {"n": [1, 2], "s": "é"}, "delay_seconds": 5},
        {"task": "report.build", "run_at": "2031-02-03T04:05:06.789+02:00", "priority": -3},
        {"task": "report.build", "idempotency_key": "described-1", "timeout_seconds": 1.5},
    ):
        posted = await api.post("/v1/jobs", json=body, headers=admin)
        assert posted.status_code == 202, posted.text
        read = await api.get(posted.headers["location"], headers=admin)
        assert posted.json() == read.json()


async def test_an_idempotency_key_returns_the_existing_job(api, admin, dsn):
    body = {"task": "charge", "args": {"order": 1}}
    first = await api.post("/v1/jobs", json=body, headers={**admin, "Idempotency-Key": "o-1"})
    again = await api.post("/v1/jobs", json=body, headers={**admin, "Idempotency-Key": "o-1"})
    in_body = await api.post("/v1/jobs", json={**body, "idempotency_key": "o-1"}, headers=admin)
    assert first.status_code == 202
    assert again.status_code == in_body.status_code == 200
    assert first.json()["id"] == again.json()["id"] == in_body.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert first.json()["idempotency_key"] == "o-1"
    assert job_count(dsn) == 1


async def test_the_same_key_with_a_different_body_is_a_conflict(api, admin, dsn):
    await api.post(
        "/v1/jobs",
        json={"task": "charge", "args": {"order": 1}, "idempotency_key": "k"},
        headers=admin,
    )
    other = await api.post(
        "/v1/jobs",
        json={"task": "charge", "args": {"order": 2}, "idempotency_key": "k"},
        headers=admin,
    )
    body = assert_problem(other, 409, "idempotency key 'k'", "different")
    assert body["job_id"] > 0
    mismatch = await api.post(
        "/v1/jobs",
        json={"task": "charge", "idempotency_key": "a"},
        headers={**admin, "Idempotency-Key": "b"},
    )
    assert_problem(mismatch, 409, "differ")
    assert job_count(dsn) == 1


async def test_twenty_concurrent_posts_with_one_key_make_one_job(live_api, admin, dsn):
    body = {"task": "once", "args": {"n": 1}}
    responses = await asyncio.gather(
        *(
            live_api.post("/v1/jobs", json=body, headers={**admin, "Idempotency-Key": "race"})
            for _ in range(20)
        )
    )
    assert sorted(r.status_code for r in responses) == [200] * 19 + [202]
    assert len({r.json()["id"] for r in responses}) == 1
    assert job_count(dsn) == 1


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"task": "bad task"}, 422, "invalid task name"),
        ({"task": "t", "queue": "no spaces"}, 422, "invalid queue name"),
        ({"task": "t", "priority": 40000}, 422, "priority"),
        ({"task": "t", "max_attempts": 0}, 422, "max_attempts"),
        ({"task": "t", "delay_seconds": -1}, 422, "delay"),
        ({"task": "t", "timeout_seconds": 0}, 422, "timeout"),
        ({"task": "t", "run_at": "2030-01-01T00:00:00"}, 422, "timezone"),
        ({"task": "t", "delay_seconds": 1, "run_at": "2030-01-01T00:00:00Z"}, 422, "not both"),
        ({"task": "t", "args": {"blob": "x" * 2000}}, 413, "limit is 1024"),
        ({"task": "t", "surprise": 1}, 400, ""),
        ({"task": 5}, 400, ""),
        ({"args": {}}, 400, ""),
    ],
)
async def test_bad_jobs_are_refused_and_nothing_is_written(api, admin, dsn, body, status, fragment):
    assert_problem(await api.post("/v1/jobs", json=body, headers=admin), status, fragment)
    assert job_count(dsn) == 0


async def test_malformed_json_and_oversized_bodies_are_refused(api, admin, dsn):
    malformed = await api.post(
        "/v1/jobs", content=b"{nope", headers={**admin, "content-type": "application/json"}
    )
    assert_problem(malformed, 400, "malformed")
    huge = b'{"task": "t", "args": {"x": "' + b"x" * 100_000 + b'"}}'
    too_big = await api.post(
        "/v1/jobs", content=huge, headers={**admin, "content-type": "application/json"}
    )
    assert_problem(too_big, 413, "limit of 65536 bytes")
    assert job_count(dsn) == 0


# --- batch -------------------------------------------------------------------------------


async def test_a_batch_is_enqueued_in_one_go(api, admin, dsn):
    response = await api.post(
        "/v1/jobs/batch",
        json={
            "jobs": [
                {"task": "a"},
                {"task": "b", "idempotency_key": "b1"},
                {"task": "b", "idempotency_key": "b1"},
            ]
        },
        headers=admin,
    )
    assert response.status_code == 202
    items = response.json()["jobs"]
    assert [i["duplicate"] for i in items] == [False, False, True]
    assert items[1]["id"] == items[2]["id"]
    assert job_count(dsn) == 2


async def test_a_batch_with_one_bad_item_writes_nothing_and_names_it(api, admin, dsn):
    response = await api.post(
        "/v1/jobs/batch",
        json={"jobs": [{"task": "a"}, {"task": "a"}, {"task": "a", "queue": "bad queue"}]},
        headers=admin,
    )
    body = assert_problem(response, 422, "jobs[2]", "invalid queue name")
    assert body["index"] == 2
    assert_problem(await api.post("/v1/jobs/batch", json={"jobs": []}, headers=admin), 422)
    big = {"jobs": [{"task": "a", "args": {"x": "y" * 2000}}]}
    assert_problem(await api.post("/v1/jobs/batch", json=big, headers=admin), 413, "jobs[0]")
    assert job_count(dsn) == 0


async def test_a_batch_larger_than_the_limit_is_refused(dsn, keys):
    settings = ServiceSettings(dsn=dsn, max_batch_jobs=3)
    async with AsyncTestClient(create_app(settings)) as client:
        response = await client.post(
            "/v1/jobs/batch", json={"jobs": [{"task": "a"}] * 4}, headers=bearer(keys["admin"])
        )
    assert_problem(response, 422, "at most 3")
    assert job_count(dsn) == 0


# --- status ------------------------------------------------------------------------------


async def test_status_of_a_job_and_of_ids_that_are_not(api, admin):
    job_id = (await api.post("/v1/jobs", json={"task": "t"}, headers=admin)).json()["id"]
    response = await api.get(f"/v1/jobs/{job_id}", headers=admin)
    assert response.status_code == 200
    assert set(response.json()) >= {
        "id", "task", "queue", "state", "attempts", "max_attempts", "priority", "run_at",
        "created_at", "started_at", "finished_at", "result", "errors", "progress",
    }  # fmt: skip
    assert_problem(await api.get("/v1/jobs/987654", headers=admin), 404, "no job 987654")
    for bad in ("abc", "0", "-3", "1.5", str(2**64)):
        assert_problem(
            await api.get(f"/v1/jobs/{bad}", headers=admin), 422, "must be an integer from 1 to"
        )


async def test_a_long_poll_is_woken_by_the_jobs_completion(live_api, admin, dsn, monkeypatch):
    # Only the NOTIFY can end this wait in time: the safety-net recheck is pushed away.
    monkeypatch.setattr(service_state, "RECHECK_SECONDS", 120.0)
    from pgqueue.service import jobs as jobs_module

    monkeypatch.setattr(jobs_module, "RECHECK_SECONDS", 120.0)
    queue = pgqueue.Queue(dsn)
    release = asyncio.Event()

    @queue.task(name="gated")
    async def gated() -> str:
        await release.wait()
        return "done"

    api = live_api
    job_id = (await api.post("/v1/jobs", json={"task": "gated"}, headers=admin)).json()["id"]
    async with running_worker(queue):
        waiting = asyncio.create_task(api.get(f"/v1/jobs/{job_id}?wait=60", headers=admin))
        await wait_for_job(queue, job_id, frozenset({pgqueue.JobState.RUNNING}))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # held while the job runs
        release.set()
        response = await asyncio.wait_for(waiting, 20)
    await queue.close()
    assert response.status_code == 200
    assert (response.json()["state"], response.json()["result"]) == ("succeeded", "done")


async def test_a_long_poll_ends_with_its_wait_and_is_bounded(api, admin, settings):
    job_id = (await api.post("/v1/jobs", json={"task": "never_run"}, headers=admin)).json()["id"]
    response = await api.get(f"/v1/jobs/{job_id}?wait=0.3", headers=admin)
    assert (response.status_code, response.json()["state"]) == (200, "queued")
    too_long = settings.max_wait_seconds + 1
    assert_problem(await api.get(f"/v1/jobs/{job_id}?wait={too_long}", headers=admin), 422, "wait")
    assert_problem(await api.get(f"/v1/jobs/{job_id}?wait=-1", headers=admin), 422, "wait")


# --- list --------------------------------------------------------------------------------


async def test_list_is_newest_first_filtered_and_keyset_paginated(api, admin):
    ids = []
    for n in range(5):
        body = {"task": "even" if n % 2 == 0 else "odd", "queue": "q1" if n < 3 else "q2"}
        ids.append((await api.post("/v1/jobs", json=body, headers=admin)).json()["id"])
    page = (await api.get("/v1/jobs?limit=2", headers=admin)).json()
    assert [j["id"] for j in page["jobs"]] == [ids[4], ids[3]]
    page2 = (await api.get(f"/v1/jobs?limit=2&cursor={page['next_cursor']}", headers=admin)).json()
    assert [j["id"] for j in page2["jobs"]] == [ids[2], ids[1]]
    page3 = (await api.get(f"/v1/jobs?limit=2&cursor={page2['next_cursor']}", headers=admin)).json()
    assert ([j["id"] for j in page3["jobs"]], page3["next_cursor"]) == ([ids[0]], None)
    evens = (await api.get("/v1/jobs?task=even&queue=q1", headers=admin)).json()["jobs"]
    assert [j["id"] for j in evens] == [ids[2], ids[0]]
    queued = (await api.get("/v1/jobs?state=queued", headers=admin)).json()["jobs"]
    assert len(queued) == 5
    assert (await api.get("/v1/jobs?state=failed", headers=admin)).json()["jobs"] == []
    assert_problem(await api.get("/v1/jobs?state=stuck", headers=admin), 422, "state must be")
    assert_problem(await api.get("/v1/jobs?limit=0", headers=admin), 422, "limit")
    assert_problem(
        await api.get("/v1/jobs?cursor=x", headers=admin), 422, "cursor must be an integer"
    )


# --- cancel and retry --------------------------------------------------------------------


async def test_cancel_and_retry(api, admin):
    job_id = (await api.post("/v1/jobs", json={"task": "t"}, headers=admin)).json()["id"]
    assert_problem(await api.post(f"/v1/jobs/{job_id}/retry", headers=admin), 409, "only failed")
    cancelled = await api.post(f"/v1/jobs/{job_id}/cancel", headers=admin)
    assert (cancelled.status_code, cancelled.json()["state"]) == (200, "cancelled")
    assert_problem(
        await api.post(f"/v1/jobs/{job_id}/cancel", headers=admin), 409, "cannot be cancelled"
    )
    retried = await api.post(f"/v1/jobs/{job_id}/retry", headers=admin)
    assert (retried.status_code, retried.json()["state"]) == (200, "queued")
    assert_problem(await api.post("/v1/jobs/424242/cancel", headers=admin), 404)
    assert_problem(await api.post("/v1/jobs/424242/retry", headers=admin), 404)
    assert_problem(await api.post("/v1/jobs/x/cancel", headers=admin), 422)


async def test_retry_of_a_failed_job(live_api, admin, dsn):
    api = live_api
    queue = pgqueue.Queue(dsn)

    @queue.task(name="broken", max_attempts=1)
    async def broken() -> None:
        raise RuntimeError("nope")

    job_id = (
        await api.post("/v1/jobs", json={"task": "broken", "max_attempts": 1}, headers=admin)
    ).json()["id"]
    async with running_worker(queue):
        response = await api.get(f"/v1/jobs/{job_id}?wait=20", headers=admin)
    await queue.close()
    assert response.json()["state"] == "failed"
    assert response.json()["errors"][0]["message"] == "nope"
    retried = await api.post(f"/v1/jobs/{job_id}/retry", headers=admin)
    assert retried.json()["state"] == "queued"
    assert len(retried.json()["errors"]) == 1  # the history is kept


# --- queues ------------------------------------------------------------------------------


async def test_queues_list_counts_and_pause(api, admin, dsn):
    for queue_name in ("alpha", "alpha", "beta"):
        await api.post("/v1/jobs", json={"task": "t", "queue": queue_name}, headers=admin)
    listed = {q["name"]: q for q in (await api.get("/v1/queues", headers=admin)).json()["queues"]}
    assert (listed["alpha"]["queued"], listed["beta"]["queued"]) == (2, 1)
    assert listed["alpha"]["oldest_claimable_age_seconds"] >= 0
    assert listed["alpha"]["paused"] is False
    paused = await api.post("/v1/queues/alpha/pause", headers=admin)
    assert (paused.status_code, paused.json()["paused"]) == (200, True)
    empty = await api.post("/v1/queues/gamma/pause", headers=admin)  # no jobs yet: still listed
    assert (empty.json()["name"], empty.json()["queued"]) == ("gamma", 0)
    resumed = await api.post("/v1/queues/alpha/resume", headers=admin)
    assert resumed.json()["paused"] is False
    assert_problem(await api.post("/v1/queues/bad%20name/pause", headers=admin), 422, "queue name")


async def test_workers_claim_nothing_from_a_paused_queue_until_it_resumes(live_api, admin, dsn):
    api = live_api
    queue = pgqueue.Queue(dsn)
    ran = asyncio.Event()

    @queue.task(name="pausable", queue="pausable")
    async def pausable() -> None:
        ran.set()

    await api.post("/v1/queues/pausable/pause", headers=admin)
    async with running_worker(queue, poll_interval=60) as worker:
        worker.idle.clear()
        job_id = (
            await api.post(
                "/v1/jobs", json={"task": "pausable", "queue": "pausable"}, headers=admin
            )
        ).json()["id"]
        # Woken by the enqueue, the worker looks and finds nothing it may claim.
        await asyncio.wait_for(worker.idle.wait(), 10)
        assert not ran.is_set()
        assert (await api.get(f"/v1/jobs/{job_id}", headers=admin)).json()["state"] == "queued"
        await api.post("/v1/queues/pausable/resume", headers=admin)  # wakes the worker
        await asyncio.wait_for(ran.wait(), 10)
    await queue.close()


# --- auth --------------------------------------------------------------------------------


async def test_no_key_or_an_unknown_one_is_401(api):
    for headers in ({}, {"Authorization": "Bearer pgq_nope"}, {"Authorization": "Basic abc"}):
        response = await api.get("/v1/queues", headers=headers)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_scopes_nest_read_enqueue_admin(api, keys):
    read, enqueue, admin = (bearer(keys[s]) for s in ("read", "enqueue", "admin"))
    assert_problem(await api.post("/v1/jobs", json={"task": "t"}, headers=read), 403, "'enqueue'")
    job_id = (await api.post("/v1/jobs", json={"task": "t"}, headers=enqueue)).json()["id"]
    assert (await api.get(f"/v1/jobs/{job_id}", headers=read)).status_code == 200
    assert (await api.get(f"/v1/jobs/{job_id}", headers=enqueue)).status_code == 200
    for path in (f"/v1/jobs/{job_id}/cancel", f"/v1/jobs/{job_id}/retry", "/v1/queues/q/pause"):
        assert_problem(await api.post(path, headers=enqueue), 403, "'admin'")
        assert_problem(await api.post(path, headers=read), 403, "'admin'")
    assert (await api.post(f"/v1/jobs/{job_id}/cancel", headers=admin)).status_code == 200


async def test_a_revoked_key_stops_working(api, dsn):
    key_id, key = create_key(dsn, name="leaver", scope="read")
    assert (await api.get("/v1/queues", headers=bearer(key))).status_code == 200
    assert revoke_key(dsn, key_id)
    assert not revoke_key(dsn, key_id)  # already revoked
    assert_problem(await api.get("/v1/queues", headers=bearer(key)), 401, "revoked")


async def test_only_hashes_of_keys_are_stored(dsn, keys):
    with psycopg.connect(dsn) as conn:
        stored = conn.execute("SELECT name, scope, key_hash FROM pgqueue.api_keys").fetchall()
    assert len(stored) == 3
    for _name, _scope, key_hash in stored:
        assert all(key.encode() not in bytes(key_hash) for key in keys.values())
        assert len(bytes(key_hash)) == 32


def test_keys_are_checked_before_they_are_stored(dsn):
    with pytest.raises(ValueError, match="scope must be one of"):
        create_key(dsn, name="x", scope="root")
    with pytest.raises(ValueError, match="name"):
        create_key(dsn, name="", scope="read")


async def test_auth_off_is_admin_for_everyone(dsn):
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn, auth=False))) as client:
        job_id = (await client.post("/v1/jobs", json={"task": "t"})).json()["id"]
        assert (await client.post(f"/v1/jobs/{job_id}/cancel")).status_code == 200


# --- probes and schema -------------------------------------------------------------------


async def test_probes_need_no_key(api):
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert (ready.status_code, ready.json()["status"]) == (200, "ready")


async def test_readyz_is_503_on_a_database_that_is_behind(empty_dsn):
    async with AsyncTestClient(create_app(ServiceSettings(dsn=empty_dsn))) as client:
        assert (await client.get("/healthz")).status_code == 200
        assert_problem(await client.get("/readyz"), 503, "pgqueue migrate")


async def test_the_openapi_schema_is_served(api):
    schema = (await api.get("/schema/openapi.json")).json()
    assert {"/v1/jobs", "/v1/jobs/batch", "/v1/jobs/{job_id}", "/v1/queues"} <= set(schema["paths"])
    assert "bearer" in schema["components"]["securitySchemes"]


def test_the_env_factory_always_keeps_auth_on_and_reads_its_limits():
    from pgqueue.service.asgi import settings_from_env

    env = {
        "PGQUEUE_DSN": "postgresql://x/y",
        "PGQUEUE_API_AUTH": "off",  # not a setting: only `pgqueue dev` runs without keys
        "PGQUEUE_API_MAX_BODY_BYTES": "2048",
        "PGQUEUE_API_MAX_ARGS_BYTES": "512",
        "PGQUEUE_API_MAX_WAIT_SECONDS": "5",
    }
    settings = settings_from_env(env)
    assert settings.auth is True
    assert (settings.max_body_bytes, settings.max_args_bytes) == (2048, 512)
    assert settings.max_wait_seconds == 5
    with pytest.raises(RuntimeError, match="PGQUEUE_DSN"):
        settings_from_env({})
