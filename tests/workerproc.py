"""Start and stop real worker processes for tests (by pid, never by name)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg

if TYPE_CHECKING:
    from collections.abc import Sequence

APPS = Path(__file__).parent / "apps"


class WorkerProcess:
    """``python -m pgqueue worker APP --dsn DSN ARGS``, logging JSON to a file of its own.

    ``prefix`` goes before the command: a program that sets something up and then execs
    the rest (``ip netns exec NS``), so that :attr:`pid` is still the worker's own.
    ``cwd``: where APP is imported from (tests/apps by default).
    """

    def __init__(
        self,
        app: str,
        dsn: str,
        *args: str,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        cwd: Path = APPS,
    ):
        log_dir = Path(tempfile.gettempdir())
        self.log_path = log_dir / f"pgqueue-worker-{os.getpid()}-{time.monotonic_ns()}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [
                *prefix,
                sys.executable,
                "-m",
                "pgqueue",
                "worker",
                app,
                "--dsn",
                dsn,
                "--log-format",
                "json",
                *args,
            ],
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def wait_until_handling(self, sig: signal.Signals, timeout: float = 30) -> None:
        """Wait until the process has installed a handler for ``sig``."""
        wait_until_handling(self.proc, sig, timeout)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.flush()

    def stop(self, timeout: float = 30) -> int:
        # A worker signalled while Python is still importing dies of SIGTERM (-15) instead of
        # stopping cleanly: wait until its handler is in place, as an operator's would be.
        self.wait_until_handling(signal.SIGTERM, timeout)
        self.signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise

    def events(self) -> list[dict]:
        self._log.flush()
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def wait_for_event(self, event: str, timeout: float = 20, count: int = 1) -> dict:
        """The first ``event`` logged, once ``count`` of them have been."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            seen = [e for e in self.events() if e.get("event") == event]
            if len(seen) >= count:
                return seen[0]
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited ({self.proc.returncode}):\n{self.log_path.read_text()}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"no {event!r} event within {timeout}s:\n{self.log_path.read_text()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        self.log_path.unlink(missing_ok=True)


def wait_until_handling(
    proc: subprocess.Popen[Any], sig: signal.Signals, timeout: float = 30
) -> None:
    """Wait until ``proc`` has installed a handler for ``sig`` (Linux: read from /proc;
    elsewhere, returns at once), or has exited."""
    status = Path(f"/proc/{proc.pid}/status")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            caught = next(
                int(line.split()[1], 16)
                for line in status.read_text().splitlines()
                if line.startswith("SigCgt:")
            )
        except (OSError, StopIteration):
            return
        if caught & (1 << (sig - 1)):
            return
        time.sleep(0.02)


def wait_for_sql(dsn: str, sql: str, expected: object, timeout: float = 60) -> None:
    """Poll a query until it returns ``expected`` (bounded); fail with the last value."""
    deadline = time.monotonic() + timeout
    value = None
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(sql).fetchone()
            value = row[0] if row else None
            if value == expected:
                return
            time.sleep(0.05)
    raise TimeoutError(f"{sql!r} gave {value!r}, not {expected!r}, after {timeout}s")
