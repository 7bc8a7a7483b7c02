"""pgqueue's HTTP API benchmark: ``POST /v1/jobs`` and ``GET /v1/jobs/{id}`` through
uvicorn with two server processes, as requests per second and p50/p99 latency under N
concurrent clients; each beside its bound, the same statement run straight on the
database by N concurrent asyncpg connections, so the ratio shows what HTTP, the API key,
validation and the app cost on top.

    .venv/bin/python benchmarks/api.py            # about a minute (also: make bench-api)
    .venv/bin/python benchmarks/api.py --quick    # a ~20 s smoke run
    .venv/bin/python benchmarks/api.py --dsn postgresql://user@host/postgres

The database is chosen as in benchmarks/run.py: a scratch database on a fresh embedded
PostgreSQL, or on the --dsn server, created, migrated (durable commits) and dropped at the
end. The server is the production one: ``uvicorn --factory pgqueue.service.asgi:app_from_env``
(what ``pgqueue api`` runs), auth on, access logs on (JSON lines to a file), request
metrics shared across its processes (PROMETHEUS_MULTIPROC_DIR). The clients are
keep-alive HTTP/1.1 connections driven by a small asyncio loop in this process (cheaper
than an HTTP library, so that less of the machine goes to the load generator). Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import statistics
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/api.py` puts benchmarks/ on the path
    sys.path.insert(0, str(ROOT))

from benchmarks.database import psycopg_synchronous_commit, scratch_database  # noqa: E402
from benchmarks.report import machine, print_machine  # noqa: E402
from pgqueue.app import Queue  # noqa: E402
from pgqueue.logs import configure_logging  # noqa: E402
from pgqueue.service.auth import create_key  # noqa: E402
from pgqueue.sql import query  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

FACTORY = "pgqueue.service.asgi:app_from_env"
HOST = "127.0.0.1"
SERVER_PROCESSES = 2
READY_TIMEOUT = 60.0
JOB_BODY = {"task": "bench.noop", "args": {"n": 1}, "queue": "bench"}


@dataclass(frozen=True, slots=True)
class Plan:
    seconds: float  # per measured phase
    warmup_seconds: float
    clients: int


FULL = Plan(seconds=12.0, warmup_seconds=2.0, clients=32)
QUICK = Plan(seconds=3.0, warmup_seconds=1.0, clients=32)


@dataclass(frozen=True, slots=True)
class Sample:
    """One phase: how many operations, in how long, their latencies, their failures."""

    done: int
    seconds: float
    latencies: list[float]
    failures: dict[str, int]
    server_cpu: float | None = None  # seconds the server processes used meanwhile

    @property
    def rate(self) -> float:
        return self.done / self.seconds

    def percentile(self, p: int) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[p - 1] * 1000

    def describe(self) -> str:
        text = (
            f"{self.rate:,.0f}/s, p50 {self.percentile(50):.2f} ms, "
            f"p99 {self.percentile(99):.2f} ms ({self.done:,} in {self.seconds:.1f} s)"
        )
        if self.server_cpu is not None:
            text += f", server CPU {self.server_cpu / self.done * 1e6:,.0f} µs/request"
        if self.failures:
            text += f", FAILURES {self.failures}"
        return text

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "per_second": round(self.rate, 1),
            "p50_ms": round(self.percentile(50), 3),
            "p99_ms": round(self.percentile(99), 3),
            "operations": self.done,
            "seconds": round(self.seconds, 3),
            "failures": self.failures,
        }
        if self.server_cpu is not None:
            out["server_cpu_us_per_request"] = round(self.server_cpu / self.done * 1e6, 1)
        return out


def say(text: str = "") -> None:
    print(text, flush=True)


# --- a small HTTP/1.1 client -----------------------------------------------------------


class HttpConnection:
    """One keep-alive connection; requests one at a time; Content-Length bodies only
    (all the API sends)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    async def request(self, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
        self.writer.write(head + body)
        response_head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(response_head[9:12])
        length = 0
        for line in response_head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"transfer-encoding":
                raise RuntimeError("chunked responses are not expected from the API")
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        self.writer.close()
        with suppress(OSError):
            await self.writer.wait_closed()


def request_head(method: str, path: str, key: str, body: bytes = b"") -> bytes:
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {HOST}",
        f"Authorization: Bearer {key}",
    ]
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# --- load ------------------------------------------------------------------------------


async def load(
    open_client: Callable[[], Awaitable[Any]],
    close_client: Callable[[Any], Awaitable[None]],
    operation: Callable[[Any, int], Awaitable[str | None]],
    *,
    clients: int,
    seconds: float,
    cpu: Callable[[], float | None] = lambda: None,
) -> Sample:
    """``clients`` concurrent loops of ``operation`` (None when it went well, else what
    went wrong) for about ``seconds``; every operation's latency is kept."""
    handles = [await open_client() for _ in range(clients)]
    latencies: list[float] = []
    failures: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def client(handle: Any, index: int) -> None:
        n = index
        while loop.time() < end:
            started = time.perf_counter()
            failure = await operation(handle, n)
            latencies.append(time.perf_counter() - started)
            if failure is not None:
                failures[failure] = failures.get(failure, 0) + 1
            n += clients

    cpu_before = cpu()
    started = time.perf_counter()
    await asyncio.gather(*(client(h, i) for i, h in enumerate(handles)))
    elapsed = time.perf_counter() - started
    cpu_after = cpu()
    for handle in handles:
        await close_client(handle)
    server_cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return Sample(len(latencies), elapsed, latencies, failures, server_cpu)


# --- the server ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def process_tree_cpu(root: int) -> float | None:
    """User plus system CPU seconds of ``root`` and its children (Linux's /proc)."""
    total, found = 0.0, False
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = stat_file.read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # from field 3 on: ppid is 4, utime 14
        pid = int(stat_file.parent.name)
        if pid == root or int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            found = True
    return total if found else None


class Server:
    """``uvicorn --factory`` in a process group of its own, stopped by SIGTERM."""

    def __init__(self, dsn: str, work_dir: Path, log_level: str) -> None:
        self.port = free_port()
        self.log_path = work_dir / "server.log"
        self.metrics_dir = work_dir / "prometheus"
        self.metrics_dir.mkdir()
        self.env = {
            **os.environ,
            "PGQUEUE_DSN": dsn,
            "PGQUEUE_LOG_LEVEL": log_level,
            "PGQUEUE_LOG_FORMAT": "json",
            "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
        }
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "uvicorn", "--factory", FACTORY,
                "--host", HOST, "--port", str(self.port),
                "--workers", str(SERVER_PROCESSES),
                "--no-access-log", "--log-level", "warning",
                env=self.env, cwd=ROOT, stdout=log, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + READY_TIMEOUT
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{self.port}") as client:
            while True:
                if self.proc.returncode is not None:
                    raise SystemExit(f"the server exited: see {self.log_path.read_text()}")
                with suppress(httpx.TransportError):
                    if (await client.get("/readyz")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise SystemExit(f"the server was not ready within {READY_TIMEOUT:.0f} s")
                await asyncio.sleep(0.1)

    def cpu(self) -> float | None:
        return None if self.proc is None else process_tree_cpu(self.proc.pid)

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# --- the run ---------------------------------------------------------------------------


async def server_info(dsn: str, where: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT version(), current_setting('synchronous_commit'), current_setting('fsync'),"
            " current_setting('wal_sync_method')"
        )
    finally:
        await conn.close()
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    return {
        "version": row[0].split(" on ")[0],
        "where": where,
        "synchronous_commit": await asyncio.to_thread(psycopg_synchronous_commit, dsn),
        "fsync": row[2],
        "wal_sync_method": row[3],
    }


async def measure(dsn: str, plan: Plan, key: str, server: Server) -> dict[str, Sample]:
    port, clients = server.port, plan.clients
    body = json.dumps(JOB_BODY).encode()
    post_head = request_head("POST", "/v1/jobs", key, body)
    job_ids: list[int] = []

    async def post(conn: HttpConnection, _n: int) -> str | None:
        status, answer = await conn.request(post_head, body)
        if status != 202:
            return f"HTTP {status}"
        job_ids.append(json.loads(answer)["id"])
        return None

    async def get(conn: HttpConnection, _n: int) -> str | None:
        job_id = random.choice(job_ids)
        status, _ = await conn.request(request_head("GET", f"/v1/jobs/{job_id}", key))
        return None if status == 200 else f"HTTP {status}"

    pool = await asyncpg.create_pool(dsn, min_size=clients, max_size=clients)
    insert_sql, get_sql = query("enqueue"), query("get_job")
    params = Queue(dsn).build(JOB_BODY["task"], JOB_BODY["args"], queue="bench").insert_params()

    async def bare_insert(conn: Any, _n: int) -> str | None:
        await conn.fetch(insert_sql, *params)
        return None

    async def bare_get(conn: Any, _n: int) -> str | None:
        await conn.fetch(get_sql, random.choice(job_ids))
        return None

    async def http_open() -> HttpConnection:
        return await HttpConnection.open(port)

    async def http_close(conn: HttpConnection) -> None:
        await conn.close()

    async def pool_open() -> Any:
        return await pool.acquire()

    async def pool_close(conn: Any) -> None:
        await pool.release(conn)

    results: dict[str, Sample] = {}
    try:
        say(f"\nwarming up ({plan.warmup_seconds:.0f} s)")
        await load(http_open, http_close, post, clients=clients, seconds=plan.warmup_seconds)
        await load(http_open, http_close, get, clients=clients, seconds=plan.warmup_seconds)
        phases = [
            ("post_api", "POST /v1/jobs", http_open, http_close, post, server.cpu),
            ("post_bound", "bound: INSERT + commit", pool_open, pool_close, bare_insert, None),
            ("get_api", "GET /v1/jobs/{id}", http_open, http_close, get, server.cpu),
            ("get_bound", "bound: SELECT of a job", pool_open, pool_close, bare_get, None),
        ]
        for name, label, opener, closer, op, cpu in phases:
            sample = await load(
                opener, closer, op, clients=clients, seconds=plan.seconds, cpu=cpu or (lambda: None)
            )
            results[name] = sample
            say(f"{label}, {clients} concurrent: {sample.describe()}")
    finally:
        await pool.close()
    return results


async def counted_by_metrics(server: Server, key: str) -> float:
    """POST /v1/jobs requests that /metrics counted, all server processes together."""
    async with httpx.AsyncClient(base_url=f"http://{HOST}:{server.port}") as client:
        text = (await client.get("/metrics", headers={"Authorization": f"Bearer {key}"})).text
    total = 0.0
    for line in text.splitlines():
        labels = line.partition("}")[0]
        if line.startswith("pgqueue_api_requests_total{") and 'route="/v1/jobs"' in labels:
            total += float(line.rsplit(" ", 1)[1]) if 'method="POST"' in labels else 0.0
    return total


async def run(dsn: str, where: str, plan: Plan, work_dir: Path, log_level: str) -> dict[str, Any]:
    info, server_facts = machine(), await server_info(dsn, where)
    print_machine(info, server_facts)
    say(
        f"server:     uvicorn, {SERVER_PROCESSES} processes ({FACTORY}), access log at "
        f"{log_level}; clients: {plan.clients} keep-alive connections from this process, "
        f"on the same machine"
    )
    _, key = create_key(dsn, name="benchmark", scope="admin")
    server = Server(dsn, work_dir, log_level)
    await server.start()
    try:
        results = await measure(dsn, plan, key, server)
        counted = await counted_by_metrics(server, key)
    finally:
        await server.stop()
    sent = results["post_api"].done
    log_lines = sum(1 for _ in server.log_path.open("rb"))
    ratios = {
        "post": results["post_api"].rate / results["post_bound"].rate,
        "get": results["get_api"].rate / results["get_bound"].rate,
    }
    say("\n== summary ==")
    say(f"{'':<28}{'API req/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'bound/s':>11}{'API/bound':>11}")
    for name, label in (("post", "POST /v1/jobs"), ("get", "GET /v1/jobs/{id}")):
        api, bound = results[f"{name}_api"], results[f"{name}_bound"]
        say(
            f"{label:<28}{api.rate:>12,.0f}{api.percentile(50):>9.2f}{api.percentile(99):>9.2f}"
            f"{bound.rate:>11,.0f}{ratios[name]:>11.2f}"
        )
    say(
        f"\n/metrics counted {counted:,.0f} POST /v1/jobs requests across the server processes "
        f"(this run sent {sent:,} measured, plus the warm-up); the server logged "
        f"{log_lines:,} lines"
    )
    return {
        "plan": {"seconds": plan.seconds, "clients": plan.clients},
        "machine": info,
        "server": server_facts,
        "server_processes": SERVER_PROCESSES,
        "figures": {name: sample.as_json() for name, sample in results.items()},
        "api_over_bound": {k: round(v, 3) for k, v in ratios.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dsn",
        help="a server to run on (a scratch database is created there and dropped); "
        "default: a fresh embedded PostgreSQL",
    )
    parser.add_argument("--quick", action="store_true", help="a ~20 s smoke run")
    parser.add_argument("--clients", type=int, help="concurrent clients (default 32)")
    parser.add_argument(
        "--log-level", default="info", help="the server's log level (info: one line a request)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "benchmarks" / "results" / "api-latest.json",
        help="where to write the JSON",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.clients:
        plan = Plan(plan.seconds, plan.warmup_seconds, args.clients)
    configure_logging("warning")
    started = time.perf_counter()
    with (
        scratch_database(args.dsn) as (dsn, where),
        tempfile.TemporaryDirectory(prefix="pgqbench-api-") as work_dir,
    ):
        results = asyncio.run(run(dsn, where, plan, Path(work_dir), args.log_level))
    results["quick"] = args.quick
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    say(f"\nwrote {args.output}; the run took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
