"""The service's read replica (``--read-dsn``, service/replica.py), against a real one: a
primary and a streaming standby made by pg_basebackup (tests/replication.py), one pair
for the module.

The proof that a read was served by the standby is what it shows: with the standby's
replay paused (``pg_wal_replay_pause()``), a job cancelled on the primary is still
queued in the dashboard and the GET endpoints, which say they read the replica and how
far behind it is; writes, a job the replica has not got yet, and a status request that
waits for its job's finish are answered by the primary. A replica that cannot be reached
leaves reads on the primary, which the answers say.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import TYPE_CHECKING

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient
from pgcluster import free_port
from prometheus_client.parser import text_string_to_metric_families
from replication import ReplicatedPair, standby_bin_dir
from servekit import serving
from test_cli_service import Served

from pgqueue import Queue, migrate
from pgqueue.admin import Admin, ReplicaStatus
from pgqueue.cli import build_parser
from pgqueue.service import ServiceSettings, create_app
from pgqueue.service.asgi import settings_from_env
from pgqueue.service.auth import create_key
from pgqueue.service.replica import LAG_HEADER, READ_FROM_HEADER

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from conftest import PgServer

DATABASE = "read_replica_test"
BANNER = re.compile(r"Read from a replica, ([0-9.]+) s behind, replay paused\.")


@pytest.fixture(scope="module")
def bin_dir(pg_server: PgServer) -> Path:
    """The session server's major's binaries, with pg_basebackup (as test_failover)."""
    return standby_bin_dir(pg_server.kind, pg_server.server_version_num)


@pytest.fixture(scope="module")
def pair(bin_dir: Path) -> Iterator[ReplicatedPair]:
    made = ReplicatedPair(bin_dir, synchronous=False, database=DATABASE)
    try:
        migrate.upgrade(made.primary_dsn())
        made.wait_replayed()
        yield made
    finally:
        made.close()


@pytest.fixture
def keys(pair: ReplicatedPair) -> dict[str, str]:
    # Keys live on the primary, and are looked up there (a revoked key stops at once).
    dsn = pair.primary_dsn()
    return {
        scope: create_key(dsn, name=f"replica-{scope}-{uuid.uuid4().hex[:8]}", scope=scope)[1]
        for scope in ("read", "admin")
    }


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def primary_state(pair: ReplicatedPair, job_id: int) -> str:
    with psycopg.connect(pair.primary_dsn()) as conn:
        row = conn.execute("SELECT state FROM pgqueue.jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None
    return str(row[0])


async def test_reads_come_from_the_replica_and_show_its_lag(pair, keys):
    settings = ServiceSettings(
        dsn=pair.primary_dsn(),
        read_dsn=pair.standby_dsn(),
        key_cache_seconds=0,
        metrics_cache_seconds=0,
    )
    queue = f"rr{uuid.uuid4().hex[:8]}"
    # A real server: a status request that waits is in flight beside the cancel.
    async with serving(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as client:
        read, admin = Caller(client, keys["read"]), Caller(client, keys["admin"])
        # Writes go to the primary (a standby would refuse them).
        first = (await admin.post("/v1/jobs", json={"task": "t", "queue": queue})).json()["id"]
        pair.wait_replayed()
        caught_up = await caught_up_answer(read, f"/v1/jobs/{first}")
        assert caught_up.json()["state"] == "queued"
        assert caught_up.headers[READ_FROM_HEADER] == "replica"

        pair.pause_replay()
        try:
            cancelled = await admin.post(f"/v1/jobs/{first}/cancel")
            assert cancelled.json()["state"] == "cancelled"
            second = (await admin.post("/v1/jobs", json={"task": "t", "queue": queue})).json()
            pair.wait_received()  # the standby has the WAL, and does not apply it
            assert primary_state(pair, first) == "cancelled"
            await check_stale_api(read, queue, first)
            await check_fresh_from_primary(read, admin, second["id"])
            await check_stale_dashboard(read, first)
            await check_stale_metrics(read, queue)
        finally:
            pair.resume_replay()

        pair.wait_replayed()
        current = await caught_up_answer(read, f"/v1/jobs/{first}")
        assert current.json()["state"] == "cancelled"
        assert current.headers[READ_FROM_HEADER] == "replica"
        page = await caught_up_answer(read, "/dashboard")
        assert "Read from a replica, 0.0 s behind." in page.text


async def caught_up_answer(read: Caller, path: str) -> httpx.Response:
    """The first answer to ``path`` that says the replica is 0 s behind: all it has
    received, replayed, however long ago the last commit was (an idle primary does not
    make it lag). Asked again while WAL the standby just received is being replayed."""
    deadline = time.monotonic() + 10
    while True:
        answer = await read.get(path)
        if float(answer.headers[LAG_HEADER]) == 0.0:
            return answer
        assert time.monotonic() < deadline, answer.headers
        await asyncio.sleep(0.05)


class Caller:
    """Requests with one key."""

    def __init__(self, client: httpx.AsyncClient, key: str) -> None:
        self._client = client
        self._headers = bearer(key)

    async def get(self, path: str) -> httpx.Response:
        answer = await self._client.get(path, headers=self._headers, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer

    async def post(self, path: str, json: object = None) -> httpx.Response:
        answer = await self._client.post(path, json=json, headers=self._headers)
        assert answer.status_code in {200, 202}, answer.text
        return answer


async def check_stale_api(read: Caller, queue: str, cancelled: int) -> None:
    """The replica's answers: the cancelled job still queued, the new one not there."""
    stale = await read.get(f"/v1/jobs/{cancelled}")
    assert stale.json()["state"] == "queued"
    assert stale.headers[READ_FROM_HEADER] == "replica"
    assert float(stale.headers[LAG_HEADER]) > 0
    listed = await read.get(f"/v1/jobs?queue={queue}")
    assert [j["id"] for j in listed.json()["jobs"]] == [cancelled]
    assert listed.headers[READ_FROM_HEADER] == "replica"
    queues = (await read.get("/v1/queues")).json()["queues"]
    counts = next(q for q in queues if q["name"] == queue)
    assert counts["queued"] == 1, counts


async def check_fresh_from_primary(read: Caller, admin: Caller, job_id: int) -> None:
    # Read-your-writes: a job the replica has not got yet is asked of the primary.
    fresh = await read.get(f"/v1/jobs/{job_id}")
    assert fresh.json()["state"] == "queued"
    assert fresh.headers[READ_FROM_HEADER] == "primary"
    assert LAG_HEADER not in fresh.headers
    # A wait for a job's finish holds on the primary (its NOTIFY, its reads).
    waiting = asyncio.create_task(read.get(f"/v1/jobs/{job_id}?wait=30"))
    await admin.post(f"/v1/jobs/{job_id}/cancel")
    waited = await asyncio.wait_for(waiting, 60)
    assert waited.json()["state"] == "cancelled"
    assert waited.headers[READ_FROM_HEADER] == "primary"


async def check_stale_dashboard(read: Caller, cancelled: int) -> None:
    page = await read.get("/dashboard")
    assert page.headers[READ_FROM_HEADER] == "replica"
    found = BANNER.search(page.text)
    assert found, page.text
    assert float(found.group(1)) >= 0
    job_page = await read.get(f"/dashboard/jobs/{cancelled}")
    assert job_page.headers[READ_FROM_HEADER] == "replica"
    assert BANNER.search(job_page.text)
    assert "state-cancelled" not in job_page.text
    assert "state-queued" in job_page.text
    # Where the dashboard's cancel button leads: the primary's page, the job cancelled.
    after = await read.get(f"/dashboard/jobs/{cancelled}?notice=cancelled")
    assert after.headers[READ_FROM_HEADER] == "primary"
    assert "state-cancelled" in after.text
    assert not BANNER.search(after.text)


async def check_stale_metrics(read: Caller, queue: str) -> None:
    scraped = (await read.get("/metrics")).text
    assert metric(scraped, "pgqueue_read_replica_up") == 1.0
    lag = metric(scraped, "pgqueue_read_replica_lag_seconds")
    assert lag is not None
    assert lag > 0
    # The primary has counted two.
    assert metric(scraped, "pgqueue_jobs_enqueued_total", queue=queue, task="t") == 1.0


async def test_an_unreachable_replica_leaves_reads_on_the_primary(dsn):
    read_key = create_key(dsn, name="replica-down", scope="read")[1]
    admin_key = create_key(dsn, name="replica-down-admin", scope="admin")[1]
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres?connect_timeout=2"
    settings = ServiceSettings(dsn=dsn, read_dsn=nobody, key_cache_seconds=0)
    async with AsyncTestClient(create_app(settings)) as client:
        created = await client.post("/v1/jobs", json={"task": "t"}, headers=bearer(admin_key))
        job_id = created.json()["id"]
        status = await client.get(f"/v1/jobs/{job_id}", headers=bearer(read_key))
        assert status.status_code == 200
        assert status.headers[READ_FROM_HEADER] == "primary"
        assert LAG_HEADER not in status.headers
        page = await client.get("/dashboard", headers=bearer(read_key))
        assert page.status_code == 200
        assert "Read from the primary: the replica is unavailable." in page.text
        scraped = await client.get("/metrics", headers=bearer(read_key))
        assert metric(scraped.text, "pgqueue_read_replica_up") == 0.0
        assert metric(scraped.text, "pgqueue_jobs_enqueued_total", task="t") is not None


async def test_without_a_read_dsn_nothing_changes(dsn):
    read_key = create_key(dsn, name="no-replica", scope="read")[1]
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn))) as client:
        answer = await client.get("/v1/queues", headers=bearer(read_key))
        assert answer.status_code == 200
        assert READ_FROM_HEADER not in answer.headers
        page = await client.get("/dashboard", headers=bearer(read_key))
        assert "Read from" not in page.text
        scraped = await client.get("/metrics", headers=bearer(read_key))
        assert metric(scraped.text, "pgqueue_read_replica_up") is None


def test_the_read_dsn_comes_from_the_flag_or_the_environment():
    args = build_parser().parse_args(["api", "--read-dsn", "postgresql://r/db"])
    assert args.read_dsn == "postgresql://r/db"
    assert build_parser().parse_args(["api"]).read_dsn is None
    env = {"PGQUEUE_DSN": "postgresql://p/db", "PGQUEUE_READ_DSN": "postgresql://r/db"}
    assert settings_from_env(env).read_dsn == "postgresql://r/db"
    assert settings_from_env({"PGQUEUE_DSN": "postgresql://p/db"}).read_dsn is None


def test_pgqueue_api_with_read_dsn_reads_the_replica(pair, keys):
    served = Served("api", "--dsn", pair.primary_dsn(), "--read-dsn", pair.standby_dsn())
    try:
        served.wait_ready()
        answer = httpx.get(f"{served.url}/v1/queues", headers=bearer(keys["read"]))
        assert answer.status_code == 200, answer.text
        assert answer.headers[READ_FROM_HEADER] == "replica"
        assert float(answer.headers[LAG_HEADER]) >= 0
        assert served.stop() == 0
    finally:
        served.kill()


def test_admin_replica_status_on_the_primary_and_the_standby(pair):
    admin = Admin(Queue(pair.primary_dsn()))
    with psycopg.connect(pair.primary_dsn(), autocommit=True) as conn:
        primary = admin.replica_status_sync(conn=conn)
    assert primary == ReplicaStatus(
        in_recovery=False, lag_seconds=0.0, receiving=True, lag_bytes=0, replay_paused=False
    )
    with psycopg.connect(pair.standby_dsn(), autocommit=True) as conn:
        standby = admin.replica_status_sync(conn=conn)
    assert standby.in_recovery
    assert standby.receiving
    assert not standby.replay_paused
    assert standby.lag_seconds is not None
