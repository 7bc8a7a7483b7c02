"""The HTTP server's edges, against the real app on uvicorn (servekit: the protocol
`pgqueue api` serves with) and a real `pgqueue api`, over raw sockets: header blocks
too large or with too many headers (431), clients sending a head or a body slowly
(408, then closed), bodies that are not JSON (415), and dashboard posts from another
origin (403, whatever the CSRF token)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
import structlog.testing
from litestar.testing import AsyncTestClient
from servekit import serving
from test_cli_service import Served
from test_dashboard import csrf_of, enqueue_sql, login

from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.auth import create_key
from pgqueue.service.settings import HttpLimits

PROBLEM = "application/problem+json"
# Short, so that the timeout tests take about a second each.
FAST = HttpLimits(header_timeout_seconds=0.5, body_timeout_seconds=0.5)
# What a test waits for at most: far beyond every timeout under test.
BOUND = 8.0


@pytest.fixture
def admin_key(dsn):
    return create_key(dsn, name="edges", scope="admin")[1]


@pytest.fixture
async def base_url(dsn):
    app = create_app(ServiceSettings(dsn=dsn, key_cache_seconds=0, http=FAST))
    async with serving(app, "http-edges") as url:
        yield url


@contextlib.asynccontextmanager
async def connection(url: str):
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (within BOUND)."""
    return await asyncio.wait_for(reader.read(), BOUND)


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def assert_problem(raw: bytes, status: int, detail: str) -> None:
    got, headers, body = parse(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == PROBLEM
    assert headers["connection"] == "close"
    problem = json.loads(body)
    assert problem["status"] == status
    assert detail in problem["detail"]


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float = 0.05) -> None:
    """A slow client: one byte at a time (the pace under test, not synchronisation)."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every)


def job_count(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pgqueue.jobs").fetchone()
    assert row is not None
    return int(row[0])


# --- header limits -------------------------------------------------------------------


@pytest.mark.parametrize("ended", [True, False], ids=["complete", "never-ending"])
async def test_a_megabyte_header_gets_431_without_being_read_whole(base_url, ended):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1024 * 1024)
    head += b"\r\n\r\n" if ended else b""
    async with connection(base_url) as (reader, writer):
        writer.write(head)
        sending = asyncio.create_task(writer.drain())
        # Answered long before the header timeout would be the reason.
        raw = await until_closed(reader)
        with contextlib.suppress(ConnectionError):
            await asyncio.wait_for(sending, BOUND)
    assert_problem(raw, 431, "larger than 65536 bytes")


async def test_too_many_headers_get_431(base_url):
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(5000))
    async with connection(base_url) as (reader, writer):
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
        raw = await until_closed(reader)
    assert_problem(raw, 431, "more than 100 request headers")


async def test_the_header_limits_are_where_they_say(base_url):
    async with httpx.AsyncClient(base_url=base_url) as client:
        # httpx sends Host, Accept, Accept-Encoding, Connection and User-Agent.
        extra = {f"x-h{i}": "v" for i in range(95)}
        assert (await client.get("/healthz", headers=extra)).status_code == 200
        extra["x-one-more"] = "v"
        too_many = await client.get("/healthz", headers=extra)
        under = await client.get("/healthz", headers={"X-Filler": "a" * (63 * 1024)})
        over = await client.get("/healthz", headers={"X-Filler": "a" * (64 * 1024)})
    assert too_many.status_code == 431
    assert too_many.headers["content-type"] == PROBLEM
    assert under.status_code == 200
    assert over.status_code == 431


async def test_the_app_itself_refuses_too_many_headers_under_any_server(dsn):
    # Under a server without the limited protocol (the test client calls the app).
    app = create_app(ServiceSettings(dsn=dsn, http=HttpLimits(max_headers=10)))
    async with AsyncTestClient(app) as client:
        response = await client.get("/healthz", headers={f"x-h{i}": "v" for i in range(20)})
    assert response.status_code == 431
    assert response.json()["detail"] == "more than 10 request headers"


# --- slow clients ----------------------------------------------------------------------


async def test_a_connection_that_sends_nothing_is_closed(base_url):
    async with connection(base_url) as (reader, _writer):
        start = time.monotonic()
        assert await until_closed(reader) == b""
    assert time.monotonic() - start >= FAST.header_timeout_seconds * 0.9


async def test_a_head_sent_a_byte_at_a_time_gets_408(base_url):
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"s" * 1000 + b"\r\n\r\n"
    async with connection(base_url) as (reader, writer):
        # A request sent at once on the connection first: keep-alive is untouched.
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert b" 200 " in await asyncio.wait_for(reader.readline(), BOUND)
        headers = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), BOUND)
        length = int(headers.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await asyncio.wait_for(reader.readexactly(length), BOUND)
        start = time.monotonic()
        sender = asyncio.create_task(trickle(writer, head))
        raw = await until_closed(reader)
        elapsed = time.monotonic() - start
        sender.cancel()
    assert_problem(raw, 408, "headers did not arrive within 0.5 seconds")
    assert FAST.header_timeout_seconds * 0.9 <= elapsed < BOUND


async def test_a_body_sent_a_byte_at_a_time_gets_408_and_nothing_is_written(
    base_url, admin_key, dsn
):
    body = json.dumps({"task": "slow.body", "args": {"x": "y" * 200}}).encode()
    head = (
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {admin_key}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with structlog.testing.capture_logs() as logs:
        async with connection(base_url) as (reader, writer):
            writer.write(head)
            sender = asyncio.create_task(trickle(writer, body))
            raw = await until_closed(reader)
            sender.cancel()
        # The access line is written once the response has gone out: the closed
        # connection can reach us first.
        deadline = time.monotonic() + BOUND
        while not any(e["event"] == "http_request" for e in logs):
            assert time.monotonic() < deadline, "no access log line"
            await asyncio.sleep(0.01)
    assert_problem(raw, 408, "body did not arrive within 0.5 seconds")
    assert job_count(dsn) == 0
    # The app, reading the body, answered (logged) 408 too, not a failed request.
    access = [log for log in logs if log["event"] == "http_request"]
    assert [log["status"] for log in access] == [408]
    assert access[0]["log_level"] == "info"


async def test_a_body_still_trickling_after_the_answer_is_cut_off(base_url):
    # Refused at once (no key), unread: its bytes used to hold the connection forever,
    # each of them restarting the keep-alive timer.
    head = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: 1000\r\n\r\n"
    async with connection(base_url) as (reader, writer):
        writer.write(head)
        sender = asyncio.create_task(trickle(writer, b"x" * 1000))
        raw = await until_closed(reader)
        sender.cancel()
    status, _, _ = parse(raw)
    assert status == 401


# --- bodies that are not JSON ------------------------------------------------------


async def test_a_body_that_is_not_json_gets_415(dsn, admin_key):
    key = {"Authorization": f"Bearer {admin_key}"}
    refused = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", None]
    taken = ["application/json", "application/json; charset=utf-8", "application/x+json"]
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn))) as client:
        for content_type in refused:
            headers = key if content_type is None else {**key, "Content-Type": content_type}
            response = await client.post("/v1/jobs", content=b'{"task": "t"}', headers=headers)
            assert response.status_code == 415, content_type
            assert response.headers["content-type"] == PROBLEM
            assert "must be JSON" in response.json()["detail"]
        assert job_count(dsn) == 0
        for content_type in taken:
            headers = {**key, "Content-Type": content_type}
            response = await client.post("/v1/jobs", content=b'{"task": "t"}', headers=headers)
            assert response.status_code == 202, content_type
        # Without a body, no Content-Type is needed.
        assert (await client.post("/v1/queues/default/pause", headers=key)).status_code < 300
    assert job_count(dsn) == len(taken)


async def test_415_is_in_the_openapi_schema_where_bodies_are_taken(dsn):
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn))) as client:
        schema = (await client.get("/schema/openapi.json")).json()
    assert "415" in schema["paths"]["/v1/jobs"]["post"]["responses"]
    assert "415" in schema["paths"]["/v1/jobs/batch"]["post"]["responses"]


# --- dashboard posts from other origins ------------------------------------------


@pytest.fixture
async def dashboard(dsn, admin_key):
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn, key_cache_seconds=0))) as c:
        assert (await login(c, admin_key)).status_code == 303
        yield c


async def cancel_with(client, dsn: str, headers: dict[str, str]) -> tuple[int, str]:
    job_id = enqueue_sql(dsn)
    page = await client.get(f"/dashboard/jobs/{job_id}")
    token = csrf_of(page.text)
    response = await client.post(
        f"/dashboard/jobs/{job_id}/cancel",
        data={"csrf_token": token},
        headers=headers,
        follow_redirects=False,
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT state FROM pgqueue.jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return response.status_code, str(row[0])


FOREIGN = {
    "foreign": {"Origin": "https://evil.example"},
    "null": {"Origin": "null"},
    "other-port": {"Origin": "http://testserver.local:8080"},
    "suffix": {"Origin": "http://testserver.local.evil.example"},
    "foreign-referer": {"Referer": "https://evil.example/page"},
}
OWN = {
    "no-origin": {},
    "same": {"Origin": "http://testserver.local"},
    "default-port": {"Origin": "http://testserver.local:80"},
    "same-referer": {"Referer": "http://testserver.local/dashboard/jobs"},
    # Behind a TLS-terminating proxy that passes Host but not the scheme.
    "tls-proxy": {"Origin": "https://queue.example", "Host": "queue.example"},
}


async def test_a_dashboard_post_from_another_origin_is_refused(dashboard, dsn):
    for case, headers in FOREIGN.items():
        assert await cancel_with(dashboard, dsn, headers) == (403, "queued"), case
    for case, headers in OWN.items():
        assert await cancel_with(dashboard, dsn, headers) == (303, "cancelled"), case


async def test_an_https_dashboard_refuses_posts_from_its_http_origin(dsn, admin_key):
    # Served over https, an http page of the same host may have been tampered with.
    app = create_app(ServiceSettings(dsn=dsn, key_cache_seconds=0))
    async with AsyncTestClient(app, base_url="https://queue.example") as client:
        assert (await login(client, admin_key)).status_code == 303
        refused = await cancel_with(client, dsn, {"Origin": "http://queue.example"})
        taken = await cancel_with(client, dsn, {"Origin": "https://queue.example"})
    assert refused == (403, "queued")
    assert taken == (303, "cancelled")


async def test_a_login_from_another_origin_is_refused(dsn, admin_key):
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn))) as client:
        page = await client.get("/dashboard/login")
        response = await client.post(
            "/dashboard/login",
            data={"csrf_token": csrf_of(page.text), "key": admin_key},
            headers={"Origin": "https://evil.example"},
            follow_redirects=False,
        )
    assert response.status_code == 403
    assert "set-cookie" not in response.headers or "key=" not in response.headers["set-cookie"]


# --- pgqueue api and pgqueue dev ------------------------------------------------------


@pytest.mark.parametrize("command", [["api", "--workers", "2"], ["dev"]], ids=["api", "dev"])
def test_the_commands_serve_with_the_limits_from_their_environment(dsn, monkeypatch, command):
    monkeypatch.setenv("PGQUEUE_API_HEADER_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("PGQUEUE_API_MAX_HEADERS", "20")
    served = Served(*command, "--dsn", dsn)
    try:
        served.wait_ready()

        async def probe() -> tuple[bytes, bytes]:
            async with connection(served.url) as (reader, writer):
                many = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
                too_many = await until_closed(reader)
            async with connection(served.url) as (reader, writer):
                writer.write(b"GET /healthz HTTP/1.1\r\n")
                slow = await until_closed(reader)
            return too_many, slow

        too_many, slow = asyncio.run(probe())
        assert_problem(too_many, 431, "more than 20 request headers")
        assert_problem(slow, 408, "did not arrive within 0.5 seconds")
        assert served.stop() == 0
    finally:
        served.kill()
