"""docker/Dockerfile, built and run for real: `migrate`, `keys create`, `api` and `worker`
from the image against the session's PostgreSQL, a job enqueued over HTTP and finished by
the worker, the processes' user, and a clean stop on SIGTERM.

The engine is one of the tests' own (tests/dockerkit.py), and so is the base image: no
registry is reachable here, so a Debian bookworm root filesystem with Python 3.11 stands
in for python:3.12-slim-bookworm through the Dockerfile's BASE_IMAGE argument. Skipped,
saying why, where no engine can start (not root, no docker.io to install). The first run
builds the rootfs and the image (a few minutes); later ones reuse them from .cache/docker/.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Any

import dockerkit
import psycopg
import pytest
from pgcluster import Cluster

from pgqueue.testing.servers import unique_db_name

if TYPE_CHECKING:
    from collections.abc import Iterator

    from conftest import PgServer

IMAGE = "pgqueue-test/pgqueue:test"
UID = "10001"  # the Dockerfile's USER
START_TIMEOUT_S = 60
JOB_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15  # `docker stop`'s grace before SIGKILL; a clean stop takes far less
# Measured cold (debootstrap, the import, the build): ~2.5 min; warm: ~10 s, ~25 s when the
# code changed (the dependencies layer is reused).
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def engine() -> Iterator[dockerkit.Engine]:
    try:
        with dockerkit.engine() as running:
            yield running
    except dockerkit.DockerUnavailable as exc:
        pytest.skip(f"no Docker engine: {exc}")


@pytest.fixture(scope="module")
def image(engine: dockerkit.Engine) -> str:
    try:
        base = dockerkit.standin_base_image(engine)
    except dockerkit.DockerUnavailable as exc:
        pytest.skip(f"no stand-in base image: {exc}")
    dockerkit.build_image(engine, base, IMAGE)
    return IMAGE


@pytest.fixture
def container_dsn(pg_server: PgServer) -> Iterator[tuple[str, list[str]]]:
    """A scratch database without a schema, its DSN as seen from a container on the host's
    network, and the `docker run` options that make it reachable. A server reached by a
    unix socket (the embedded one: its directory is its own user's alone, which the
    image's user 10001 may not enter) gives way to a throwaway cluster of the same
    binaries on a loopback TCP port."""
    host = str(psycopg.conninfo.conninfo_to_dict(pg_server.admin_dsn).get("host") or "")
    if not host.startswith("/"):
        name = unique_db_name("pgqueue_docker")
        dsn = pg_server.create_database(name)
        try:
            yield dsn, []
        finally:
            pg_server.drop_database(name)
        return
    cluster = Cluster(pg_server.bin_dir, port=free_port(), prefix="pgqueue-test-docker-pg-")
    try:
        cluster.start()
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE pgqueue_docker")
        yield cluster.dsn("pgqueue_docker"), []
    finally:
        cluster.close()


class Containers:
    """`docker run` on the host's network, removing everything it started at the end."""

    def __init__(self, engine: dockerkit.Engine, image: str, dsn: str, mounts: list[str]) -> None:
        self.engine, self.image = engine, image
        self.options = ["--network=host", f"--env=PGQUEUE_DSN={dsn}", *mounts]
        self.prefix = f"pgqueue-test-{secrets.token_hex(4)}"
        self.names: list[str] = []

    def run(self, *args: str, timeout: float = 120) -> str:
        """A one-off command; its stdout, once it has exited 0."""
        result = self.engine.docker(
            "run", "--rm", *self.options, self.image, *args, timeout=timeout
        )
        assert result.returncode == 0, f"{args}: exit {result.returncode}\n{result.stderr[-3000:]}"
        return result.stdout

    def start(self, role: str, *args: str, volumes: tuple[str, ...] = ()) -> str:
        name = f"{self.prefix}-{role}"
        self.names.append(name)
        volume_options = [f"--volume={v}" for v in volumes]
        result = self.engine.docker(
            "run", "--detach", f"--name={name}", *self.options, *volume_options, self.image, *args
        )
        assert result.returncode == 0, result.stderr
        return name

    def state(self, name: str) -> dict[str, Any]:
        result = self.engine.docker("inspect", "--format={{json .State}}", name)
        assert result.returncode == 0, result.stderr
        state: dict[str, Any] = json.loads(result.stdout)
        return state

    def logs(self, name: str) -> str:
        result = self.engine.docker("logs", "--tail=40", name)
        return result.stdout + result.stderr

    def remove_all(self) -> None:
        if self.names:
            self.engine.docker("rm", "--force", "--volumes", *self.names)


@pytest.fixture
def containers(
    engine: dockerkit.Engine, image: str, container_dsn: tuple[str, list[str]]
) -> Iterator[Containers]:
    started = Containers(engine, image, *container_dsn)
    try:
        yield started
    finally:
        started.remove_all()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(method: str, url: str, key: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 built here
        url,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=45) as response:  # noqa: S310
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def wait_until_ready(containers: Containers, name: str, base: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        assert containers.state(name)["Running"], f"{name} exited:\n{containers.logs(name)}"
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=3) as response:  # noqa: S310
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        assert time.monotonic() < deadline, f"{name} not ready:\n{containers.logs(name)}"
        time.sleep(0.2)


def stop(containers: Containers, name: str) -> tuple[int, float]:
    """SIGTERM by `docker stop` (SIGKILL only after STOP_TIMEOUT_S): exit code, seconds."""
    started = time.monotonic()
    result = containers.engine.docker("stop", f"--time={STOP_TIMEOUT_S}", name, timeout=60)
    assert result.returncode == 0, result.stderr
    state = containers.state(name)
    return int(state["ExitCode"]), time.monotonic() - started


def test_the_image_is_python_3_11_or_later_and_runs_as_an_unprivileged_user(
    engine: dockerkit.Engine, image: str
) -> None:
    user = engine.docker("image", "inspect", "--format={{.Config.User}}", image)
    assert user.stdout.strip() == f"{UID}:{UID}"
    probe = "import os, sys; print(os.getuid(), os.getgid(), sys.version_info >= (3, 11))"
    result = engine.docker("run", "--rm", "--entrypoint=python", image, "-c", probe)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [UID, UID, "True"]
    # The entrypoint is the pgqueue command of the virtualenv the build made.
    version = engine.docker("run", "--rm", image, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("pgqueue ")


def test_migrate_api_and_worker_from_the_image_run_a_job_and_stop_on_sigterm(
    containers: Containers,
) -> None:
    containers.run("migrate")
    key = containers.run("keys", "create", "--name", "docker-test", "--scope", "admin")
    key = key.strip().splitlines()[-1]
    assert key.startswith("pgq_")

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    api = containers.start("api", "api", "--host", "127.0.0.1", "--port", str(port))
    # The compose file's worker: the demo's tasks, mounted from the repository at /app.
    worker = containers.start(
        "worker",
        "worker",
        "examples.demo_tasks:queue",
        volumes=(f"{dockerkit.ROOT / 'examples'}:/app/examples:ro",),
    )
    wait_until_ready(containers, api, base)
    whoami = containers.engine.docker("exec", api, "id", "-u")
    assert whoami.stdout.strip() == UID, whoami.stderr

    job = {
        "task": "emails.send",
        "queue": "emails",
        "args": {"to": "ops@example.com", "subject": "hi"},
    }
    status, created = http("POST", f"{base}/v1/jobs", key, job)
    assert status == 202, created
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        status, seen = http("GET", f"{base}/v1/jobs/{created['id']}?wait=10", key)
        assert status == 200, seen
        if seen["state"] != "queued" and seen["state"] != "running":
            break
        assert containers.state(worker)["Running"], containers.logs(worker)
        assert time.monotonic() < deadline, f"job still {seen['state']}:\n{containers.logs(worker)}"
    assert seen["state"] == "succeeded", (seen, containers.logs(worker))
    assert seen["result"] == {"to": "ops@example.com", "subject": "hi", "status": "sent"}

    for name in (worker, api):
        code, seconds = stop(containers, name)
        assert code == 0, f"{name} exited {code} on SIGTERM:\n{containers.logs(name)}"
        assert seconds < STOP_TIMEOUT_S / 2, f"{name} took {seconds:.1f}s to stop"
