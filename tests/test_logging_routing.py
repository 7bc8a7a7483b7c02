"""pgqueue's structlog events routed to the stdlib logging an app configures
(examples/stdlib_logging.py, the README's "Routing logs to stdlib logging"): a real
``pgqueue worker`` process started on that app writes its lines through the app's
logging handlers and formatter, not in its own JSON, although ``--log-format json`` asks
for it: the configuration the app makes on import is the one that holds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from workerproc import wait_until_handling

import pgqueue

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_a_worker_on_an_app_that_routes_structlog_to_stdlib_logs_through_it(dsn):
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "pgqueue", "worker", "stdlib_logging:queue"),
                *("--dsn", dsn, "--log-format", "json", "--poll-interval", "0.2"),
            ],
            cwd=EXAMPLES,
            env={**os.environ, "PYTHONPATH": str(EXAMPLES)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            with pgqueue.Queue(dsn) as queue:
                result = queue.enqueue_sync("example.hello", {"name": "ada"})
                job = queue.wait_sync(result.id, timeout=30)
            assert job.result == "hello ada"
            wait_until_handling(proc, signal.SIGTERM, 30)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        out.seek(0)
        lines = out.read().splitlines()
    succeeded = [line for line in lines if "event='job_succeeded'" in line]
    assert len(succeeded) == 1, lines
    assert succeeded[0].startswith("INFO pgqueue.worker ")
    assert f"job_id={job.id}" in succeeded[0]
    # The task's own stdlib logging goes through the same handler.
    assert any(
        line.startswith("INFO pgqueue.example event='saying hello to ada'") for line in lines
    )
    assert any(line.startswith("INFO pgqueue.worker event='worker_started'") for line in lines)
    for line in lines:  # no line in pgqueue's own JSON
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        assert not isinstance(parsed, dict), line
