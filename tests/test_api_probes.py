"""The probes answer without a key, so they must not tell an anonymous caller where the
database is or why it failed: that goes to the service's log."""

from __future__ import annotations

from litestar.testing import AsyncTestClient

from pgqueue.service import ServiceSettings, create_app

UNREACHABLE = "postgresql://pgqueue_probe_role@127.0.0.1:1/secret_db_name?connect_timeout=2"


async def test_readyz_does_not_tell_an_anonymous_caller_where_the_database_is():
    async with AsyncTestClient(create_app(ServiceSettings(dsn=UNREACHABLE))) as client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.headers["content-type"].startswith("application/problem+json")
    body = ready.text
    assert "does not answer" in body
    for secret in ("127.0.0.1", "pgqueue_probe_role", "secret_db_name", ":1"):
        assert secret not in body


async def test_a_request_while_the_database_is_away_is_a_503_not_a_500():
    settings = ServiceSettings(dsn=UNREACHABLE, auth=False)
    async with AsyncTestClient(create_app(settings)) as client:
        for method, path in [("GET", "/v1/jobs/1"), ("GET", "/v1/jobs"), ("GET", "/v1/queues")]:
            answer = await client.request(method, path)
            assert answer.status_code == 503, (path, answer.text)
            assert "127.0.0.1" not in answer.text
        posted = await client.post("/v1/jobs", json={"task": "t"})
        assert posted.status_code == 503, posted.text
