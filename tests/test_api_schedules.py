"""``/v1/schedules`` through Litestar's test client, against a real PostgreSQL: add,
read, change, pause, resume, trigger and remove; scopes; errors as problem+json."""

from __future__ import annotations

import pytest
from litestar.testing import AsyncTestClient

from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.auth import SCOPES, create_key

PROBLEM = "application/problem+json"


@pytest.fixture
def keys(dsn):
    return {
        scope: {"Authorization": f"Bearer {create_key(dsn, name=f't-{scope}', scope=scope)[1]}"}
        for scope in SCOPES
    }


@pytest.fixture
async def api(dsn):
    settings = ServiceSettings(dsn=dsn, key_cache_seconds=0)
    async with AsyncTestClient(create_app(settings)) as client:
        yield client


NIGHTLY = {
    "name": "nightly",
    "task": "app.report",
    "cron": "30 2 * * *",
    "timezone": "Europe/Paris",
    "args": {"who": "ops"},
}


async def test_a_schedule_is_managed_over_http(api, keys):
    admin, read = keys["admin"], keys["read"]
    response = await api.post("/v1/schedules", json=NIGHTLY, headers=admin)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["cron"], body["every_seconds"], body["timezone"]) == (
        "nightly",
        "30 2 * * *",
        None,
        "Europe/Paris",
    )
    assert (body["args"], body["paused"], body["source"], body["queue"]) == (
        {"who": "ops"},
        False,
        "runtime",
        "default",
    )

    listed = await api.get("/v1/schedules", headers=read)
    assert [s["name"] for s in listed.json()["schedules"]] == ["nightly"]
    assert (await api.get("/v1/schedules/nightly", headers=read)).json()["task"] == "app.report"

    changed = await api.patch(
        "/v1/schedules/nightly", json={"every_seconds": 30, "catch_up": True}, headers=admin
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["cron"], changed.json()["every_seconds"]) == (None, 30.0)
    assert changed.json()["catch_up"] is True
    assert changed.json()["args"] == {"who": "ops"}  # kept

    paused = await api.post("/v1/schedules/nightly/pause", headers=admin)
    assert paused.json()["paused"] is True
    resumed = await api.post("/v1/schedules/nightly/resume", headers=admin)
    assert resumed.json()["paused"] is False

    triggered = await api.post("/v1/schedules/nightly/trigger", headers=admin)
    assert triggered.status_code == 202
    job = triggered.json()
    assert (job["task"], job["args"], job["state"]) == ("app.report", {"who": "ops"}, "queued")
    last = (await api.get("/v1/schedules/nightly", headers=read)).json()
    assert (last["last_job_id"], last["last_manual"], last["last_job_state"]) == (
        job["id"],
        True,
        "queued",
    )

    assert (await api.delete("/v1/schedules/nightly", headers=admin)).status_code == 204
    gone = await api.get("/v1/schedules/nightly", headers=read)
    assert gone.status_code == 404
    assert gone.headers["content-type"].startswith(PROBLEM)


async def test_changes_need_the_admin_scope(api, keys):
    assert (
        await api.post("/v1/schedules", json=NIGHTLY, headers=keys["enqueue"])
    ).status_code == 403
    assert (await api.post("/v1/schedules", json=NIGHTLY, headers=keys["admin"])).status_code == 200
    for path in ("/pause", "/resume", "/trigger"):
        response = await api.post(f"/v1/schedules/nightly{path}", headers=keys["read"])
        assert response.status_code == 403
    assert (await api.delete("/v1/schedules/nightly", headers=keys["enqueue"])).status_code == 403
    assert (await api.get("/v1/schedules", headers=keys["read"])).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**NIGHTLY, "cron": "61 * * * *"}, "cron"),
        ({**NIGHTLY, "timezone": "Mars/Olympus"}, "timezone"),
        ({**NIGHTLY, "every_seconds": 60}, "cron"),  # both rules
        ({"name": "x", "task": "app.report"}, "cron"),  # neither
        ({**NIGHTLY, "name": "bad name"}, "name"),
        ({**NIGHTLY, "every_seconds": 0.5, "cron": None}, "every"),
        ({**NIGHTLY, "queue": "bad queue"}, "queue"),
    ],
)
async def test_bad_schedules_are_422_naming_the_field(api, keys, body, field):
    response = await api.post("/v1/schedules", json=body, headers=keys["admin"])
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert response.json()["field"] == field


async def test_unknown_schedules_are_404(api, keys):
    for method, path in [
        ("get", "/v1/schedules/nope"),
        ("post", "/v1/schedules/nope/pause"),
        ("post", "/v1/schedules/nope/resume"),
        ("post", "/v1/schedules/nope/trigger"),
        ("delete", "/v1/schedules/nope"),
    ]:
        response = await getattr(api, method)(path, headers=keys["admin"])
        assert response.status_code == 404, (method, path, response.text)
        assert response.headers["content-type"].startswith(PROBLEM)
    patched = await api.patch("/v1/schedules/nope", json={"catch_up": True}, headers=keys["admin"])
    assert patched.status_code == 404
