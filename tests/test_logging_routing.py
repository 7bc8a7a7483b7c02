"""pgqueue's structlog events routed to the stdlib logging an app configures
(examples/stdlib_logging.py, the README's "Routing logs to stdlib logging"): a real
``pgqueue worker`` process started on that app writes its lines through the app's
logging handlers and formatter, not in its own JSON, although ``--log-format json`` asks
for it: the configuration the app makes on import is the one that holds."""

from __future__ import annotations

import json
from pathlib import Path

from workerproc import WorkerProcess

import pgqueue

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_a_worker_on_an_app_that_routes_structlog_to_stdlib_logs_through_it(dsn):
    worker = WorkerProcess(
        "stdlib_logging:queue",
        dsn,
        "--poll-interval",
        "0.2",
        cwd=EXAMPLES,
        env={"PYTHONPATH": str(EXAMPLES)},
    )
    try:
        with pgqueue.Queue(dsn) as queue:
            result = queue.enqueue_sync("example.hello", {"name": "ada"})
            job = queue.wait_sync(result.id, timeout=30)
        assert job.result == "hello ada"
        assert worker.stop() == 0
        lines = worker.log_path.read_text().splitlines()
    finally:
        worker.close()
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
