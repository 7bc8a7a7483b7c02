"""The service's commands as real processes: `pgqueue api` (two server processes,
graceful stop), `pgqueue dev` (API without keys plus a worker), `pgqueue keys`."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from test_cli import pgqueue_cmd
from workerproc import APPS


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """A `pgqueue api` or `pgqueue dev` process, stopped by pid."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="pgqueue-served-", suffix=".log")[1])
        self._out = self.log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pgqueue", *args, "--port", str(self.port)],
            cwd=APPS,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"not serving after {timeout} s: {self.log.read_text()}")

    def stop(self, timeout: float = 40) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        """Kill it if still running, and remove its log (every test's last word)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()
        self.log.unlink(missing_ok=True)


def test_keys_create_list_and_revoke(dsn):
    created = pgqueue_cmd("keys", "create", "--name", "ci", "--scope", "read", "--dsn", dsn)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("pgq_")
    assert key not in created.stderr  # shown once, on stdout only
    listed = pgqueue_cmd("keys", "list", "--dsn", dsn)
    assert listed.returncode == 0
    assert "\tci\tread\t" in listed.stdout
    assert key not in listed.stdout
    key_id = listed.stdout.split("\t")[0]
    assert pgqueue_cmd("keys", "revoke", key_id, "--dsn", dsn).returncode == 0
    again = pgqueue_cmd("keys", "revoke", key_id, "--dsn", dsn)
    assert again.returncode == 2
    assert f"no live key with id {key_id}" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "create", "--name", "x", "--scope", "root"], "invalid choice"),
        (["keys", "create", "--scope", "read"], "--name"),
        (["api", "--port", "0"], "must be a TCP port"),
        (["api", "--workers", "0"], "must be at least 1"),
        (["dev", "--host", "0.0.0.0"], "loopback only"),  # noqa: S104 - refused, as tested
    ],
)
def test_bad_service_input_exits_2(dsn, args, message):
    result = pgqueue_cmd(*args, "--dsn", dsn)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_api_refuses_an_unmigrated_database(empty_dsn):
    result = pgqueue_cmd("api", "--dsn", empty_dsn, "--port", str(free_port()))
    assert result.returncode == 1
    assert "pgqueue migrate" in result.stderr


def test_api_serves_with_keys_on_two_processes_and_stops_gracefully(dsn, tmp_path, monkeypatch):
    key = pgqueue_cmd("keys", "create", "--name", "n", "--scope", "enqueue", "--dsn", dsn)
    headers = {"Authorization": f"Bearer {key.stdout.strip()}"}
    # The server's temporary files (its processes' shared metrics directory) land here.
    server_tmp = tmp_path / "tmp"
    server_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(server_tmp))
    served = Served("api", "--dsn", dsn, "--workers", "2", "--log-format", "json")
    try:
        served.wait_ready()
        assert httpx.post(f"{served.url}/v1/jobs", json={"task": "t"}).status_code == 401
        created = httpx.post(f"{served.url}/v1/jobs", json={"task": "t"}, headers=headers)
        assert created.status_code == 202
        status = httpx.get(f"{served.url}{created.headers['location']}", headers=headers)
        assert status.json()["state"] == "queued"
        assert any(server_tmp.glob("pgqueue-metrics-*/*.db"))  # shared, as intended
        assert served.stop() == 0
        # Stopped, it leaves nothing behind in the temporary directory.
        assert list(server_tmp.iterdir()) == []
    finally:
        served.kill()


def test_dev_runs_the_api_without_keys_and_a_worker(empty_dsn):
    # dev migrates by itself: give it a database that has never been migrated.
    served = Served("dev", "slow_app:queue", "--dsn", empty_dsn, "--log-format", "json")
    try:
        served.wait_ready()
        body = {"task": "slow.nap", "queue": "slow", "args": {"seconds": 0.01}}
        created = httpx.post(f"{served.url}/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        done = httpx.get(f"{served.url}{created.headers['location']}?wait=30", timeout=40)
        assert (done.json()["state"], done.json()["result"]) == ("succeeded", "rested")
        assert served.stop() == 0
        assert "api_auth_disabled" in served.log.read_text()
    finally:
        served.kill()
