"""`make fuzz`: schemathesis against the live HTTP API for a while, every check on.

Starts `pgqueue api` (a real uvicorn process) on a database of its own, migrated to
head, creates an admin key for it, and runs `schemathesis run` against the served
OpenAPI description for PGQUEUE_FUZZ_SECONDS (default 300) with every check enabled,
then stops the server and drops the database (its settings: scripts/schemathesis.toml).
The server is $PGQUEUE_FUZZ_DSN, else $PGQUEUE_TEST_DSN (a maintenance database on a
server where it may CREATE DATABASE), else an embedded PostgreSQL in a temporary
directory. Exits with schemathesis's code: 0 when no check failed. Extra arguments go
to `schemathesis run` (`--seed 1`, say)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pgqueue import migrate  # noqa: E402 - after the path above, for a checkout without install
from pgqueue.embedded import EmbeddedServer  # noqa: E402
from pgqueue.service.auth import create_key  # noqa: E402

DEFAULT_SECONDS = 300
CONFIG = ROOT / "scripts" / "schemathesis.toml"
START_TIMEOUT_S = 30
STOP_TIMEOUT_S = 30
# A status request's ?wait= holds it until the wait ends: kept short here, so that the
# run spends its time on requests rather than waiting (the schema says so too).
MAX_WAIT_SECONDS = "0.5"


@contextlib.contextmanager
def maintenance_dsn() -> Iterator[str]:
    """A DSN to a database from which another may be created and dropped."""
    configured = os.environ.get("PGQUEUE_FUZZ_DSN") or os.environ.get("PGQUEUE_TEST_DSN")
    if configured:
        if "://" not in configured:
            raise SystemExit(f"give the server as a postgresql:// URL, not {configured!r}")
        yield configured
        return
    data_dir = Path(tempfile.mkdtemp(prefix="pgqueue-fuzz-"))
    server = EmbeddedServer.start(data_dir / "pgdata")
    try:
        yield server.dsn()
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def scratch_database(admin_dsn: str) -> Iterator[str]:
    """A new database migrated to head, dropped afterwards."""
    name = f"pgqueue_fuzz_{os.getpid()}_{secrets.token_hex(3)}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        # A URL: the service's driver (asyncpg) takes no other form.
        dsn = urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))
        migrate.upgrade(dsn)
        yield dsn
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running_api(dsn: str) -> Iterator[str]:
    """`pgqueue api` on a free loopback port until the block ends; yields its URL."""
    port = free_port()
    env = {**os.environ, "PGQUEUE_API_MAX_WAIT_SECONDS": MAX_WAIT_SECONDS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "pgqueue", "api", "--dsn", dsn, "--port", str(port)]
    cmd += ["--log-level", "warning", "--grace-period", "5"]
    server = subprocess.Popen(cmd, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise SystemExit(f"pgqueue api exited with {server.returncode} while starting")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"pgqueue api did not become ready in {START_TIMEOUT_S} s")
            time.sleep(0.1)  # polling a process we cannot be notified by
        yield url
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def main() -> int:
    seconds = int(os.environ.get("PGQUEUE_FUZZ_SECONDS", DEFAULT_SECONDS))
    schemathesis = Path(sys.executable).with_name("schemathesis")
    with (
        maintenance_dsn() as admin_dsn,
        scratch_database(admin_dsn) as dsn,
        running_api(dsn) as url,
    ):
        key = create_key(dsn, name="fuzz", scope="admin")[1]
        cmd = [
            str(schemathesis),
            f"--config-file={CONFIG}",
            "run",
            f"{url}/schema/openapi.json",
            "--checks",
            "all",
            "--max-time",
            str(seconds),
            "--header",
            f"Authorization: Bearer {key}",
            "--request-timeout",
            "10",
            "--suppress-health-check",
            "all",
            *sys.argv[1:],
        ]
        print(f"schemathesis for {seconds} s against {url} (every check)", flush=True)
        # In a directory of its own: it keeps state there (.hypothesis, .schemathesis).
        with tempfile.TemporaryDirectory(prefix="pgqueue-fuzz-") as scratch:
            code = subprocess.call(cmd, cwd=scratch)
    print(f"\nfuzz: {'no failures' if code == 0 else f'FAILED (schemathesis exit {code})'}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
