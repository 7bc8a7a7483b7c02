"""A rolling deploy against the last release (tests/release.py): a worker of the release
keeps working while the current code migrates the schema online under it, beside a
worker of the current code, with jobs enqueued by both versions' code.

The release's wheel (tests/releases/, checked against its SHA-256) is unpacked into a
temporary directory, first on the release processes' PYTHONPATH; each process says which
pgqueue it imported, and every job's ledger row which code ran it.
On a fresh database:

1. the release's own code migrates it to the release's head;
2. a worker and a producer of the release run; while they do, the current code migrates
   the database to the current head (whatever the tree holds at run time);
3. a producer of the current code starts: the old worker runs jobs of both producers;
4. a worker of the current code joins and runs jobs of both producers too;
5. the producers stop, the workers drain the queue and stop on SIGTERM (exit 0).

Every job ran exactly once (a ledger row each, none twice, none lost, every one
succeeded at its first attempt), and neither worker logged an error or exited.

What would break an old worker during such a deploy (what migrations must not do while
the previous release still runs): a NOT NULL column without a default on a table the old
code inserts into (jobs, workers...); a dropped or renamed table, column, type value or
SQL function the old code uses, or a function's signature changed (a new argument with
no default: the old call no longer resolves); a changed meaning of a column the old code
writes; a lock held long enough (a table rewrite, an index built without CONCURRENTLY)
that the old worker's heartbeats stall past its lease. And one thing no migration can
change: a worker of 0.1.0 refuses to START on a database at another revision than its
own head (``database_behind``): one that restarts after the migration (a crash, a
rescheduled pod) exits 1, so a deploy from 0.1.0 rolls workers forward, never restarts
old ones. The last step of this test pins that, so that the README says what really
happens. Releases after 0.1.0 start on a database a later release migrated
(``database_ahead``, tests/test_cli.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import psycopg
import pytest
import release
from workerproc import APPS, WorkerProcess, wait_for_sql, wait_until_handling

ROOT = Path(__file__).resolve().parent.parent
NEW_START = 1_000_000  # the current producer's first n; the release's starts at 0
EACH = 30  # jobs each step waits for, of each kind it needs
STEP_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def release_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The release's wheel, unpacked (what pip would install: the package, with its
    migration chain inside, and its metadata)."""
    digest = hashlib.sha256(release.WHEEL.read_bytes()).hexdigest()
    assert digest == release.WHEEL_SHA256, f"{release.WHEEL} is not the released wheel"
    tree = tmp_path_factory.mktemp(f"pgqueue-{release.VERSION}")
    with zipfile.ZipFile(release.WHEEL) as wheel:
        wheel.extractall(tree)
    return tree


def release_env(tree: Path) -> dict[str, str]:
    """The environment of a process of the release: its code before anything else."""
    path = [str(tree), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def current_env() -> dict[str, str]:
    return dict(os.environ)


def python(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    """``python ARGS`` in tests/apps (never the checkout's root, whose pgqueue/ would
    come first on the path); its stdout. Fails with its output if it fails."""
    result = subprocess.run(
        [sys.executable, *args],
        cwd=APPS,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def code_of(env: dict[str, str]) -> tuple[Path, str]:
    """The pgqueue package a process with ``env`` imports, and its migration head."""
    out = python(
        env,
        "-c",
        "import json, pgqueue, pgqueue.migrate as m; "
        "print(json.dumps([pgqueue.__file__, m.head_revision()]))",
    )
    file, head = json.loads(out)
    return Path(file).resolve().parent, head


def revision(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT version_num FROM pgqueue.alembic_version").fetchone()[0]


class Producer:
    """tests/apps/rolling_producer.py with ``env``: enqueues until stopped."""

    def __init__(self, env: dict[str, str], dsn: str, start: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(APPS / "rolling_producer.py"), dsn, str(start)],
            cwd=APPS,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        # Its first line, printed once pgqueue is imported (a bounded wait for it).
        ready, _, _ = select.select([self.proc.stdout], [], [], STEP_TIMEOUT)
        first = self.proc.stdout.readline() if ready else ""
        if not first:
            if self.proc.poll() is None:
                self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
            pytest.fail(f"producer not started ({self.proc.returncode}): {err}")
        self.code = Path(json.loads(first)["pgqueue"])

    def stop(self) -> int:
        """SIGTERM, a bounded wait; how many jobs it enqueued."""
        wait_until_handling(self.proc, signal.SIGTERM)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, err
        return json.loads(out.strip().splitlines()[-1])["enqueued"]

    def check_running(self) -> None:
        if self.proc.poll() is not None:
            _, err = self.proc.communicate(timeout=10)
            pytest.fail(f"producer of {self.code} exited ({self.proc.returncode}):\n{err}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=10)


def wait_for_ledger(
    dsn: str,
    where: str,
    count: int,
    workers: list[WorkerProcess],
    producers: list[Producer],
) -> None:
    """Until ``count`` ledger rows match ``where``; fails early if a worker exits or
    logs an error, or a producer exits."""
    deadline = time.monotonic() + STEP_TIMEOUT
    seen, rounds = 0, 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            rounds += 1
            for w in workers:
                assert w.proc.poll() is None, f"worker exited:\n{w.log_path.read_text()}"
                if rounds % 20 == 0:  # about every second: the logs grow with the jobs
                    assert errors(w) == [], f"worker {w.pid} logged errors"
            for producer in producers:
                producer.check_running()
            seen = conn.execute(f"SELECT count(*) FROM ledger WHERE {where}").fetchone()[0]
            if seen >= count:
                return
            time.sleep(0.05)
    logs = "\n".join(f"--- worker {w.pid}:\n{w.log_path.read_text()[-4000:]}" for w in workers)
    raise TimeoutError(f"{seen} ledger rows where {where}, not {count}, in {STEP_TIMEOUT}s\n{logs}")


def errors(worker: WorkerProcess) -> list[dict]:
    return [e for e in worker.events() if e.get("level") in {"error", "critical", "exception"}]


def migrate_with_the_release(
    dsn: str, tree: Path, old_env: dict[str, str], new_env: dict[str, str]
) -> tuple[Path, Path, str]:
    """Step 1: the release migrates a fresh database to its own head. The pgqueue that
    the release's processes import and the checkout's, and the checkout's head."""
    old_code, old_head = code_of(old_env)
    new_code, new_head = code_of(new_env)
    # The release's processes really run the release: its package, its chain.
    assert old_code == tree / "pgqueue"
    assert old_head == release.MIGRATION_HEAD
    assert new_code == ROOT / "pgqueue"
    python(old_env, "-m", "pgqueue", "migrate", "--dsn", dsn, "--log-format", "json")
    assert revision(dsn) == release.MIGRATION_HEAD
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE ledger (n int NOT NULL, pid int NOT NULL, code text NOT NULL, "
            "at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )
    return old_code, new_code, new_head


def test_a_worker_of_the_last_release_keeps_working_through_an_online_migration(
    release_tree, empty_dsn
):
    dsn = empty_dsn
    old_env, new_env = release_env(release_tree), current_env()
    old_code, new_code, new_head = migrate_with_the_release(dsn, release_tree, old_env, new_env)
    worker_args = ("--concurrency", "4", "--log-level", "info")
    old_worker = WorkerProcess(
        "rolling_app:queue", dsn, *worker_args, env={**old_env, "LEDGER_DSN": dsn}
    )
    new_worker: WorkerProcess | None = None
    producers: list[Producer] = []
    try:
        old_producer = Producer(old_env, dsn, 0)
        producers.append(old_producer)
        assert old_producer.code == old_code
        old = f"pid = {old_worker.pid}"
        wait_for_ledger(dsn, old, EACH, [old_worker], producers)

        # 2. The current code migrates the database online, jobs running meanwhile.
        python(new_env, "-m", "pgqueue", "migrate", "--dsn", dsn, "--log-format", "json")
        assert revision(dsn) == new_head
        with psycopg.connect(dsn, autocommit=True) as conn:
            migrated_at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        after = f"at > '{migrated_at.isoformat()}'"
        # The old worker goes on with the old producer's jobs on the new schema...
        wait_for_ledger(
            dsn, f"{old} AND {after} AND n < {NEW_START}", EACH, [old_worker], producers
        )

        # 3. ...and runs those that the current code enqueues.
        new_producer = Producer(new_env, dsn, NEW_START)
        producers.append(new_producer)
        assert new_producer.code == new_code
        wait_for_ledger(dsn, f"{old} AND n >= {NEW_START}", EACH, [old_worker], producers)

        # 4. A worker of the current code joins, and runs jobs of both producers.
        new_worker = WorkerProcess(
            "rolling_app:queue", dsn, *worker_args, env={**new_env, "LEDGER_DSN": dsn}
        )
        workers = [old_worker, new_worker]
        new = f"pid = {new_worker.pid}"
        wait_for_ledger(dsn, f"{new} AND n >= {NEW_START}", EACH, workers, producers)
        wait_for_ledger(dsn, f"{new} AND n < {NEW_START}", EACH, workers, producers)
        wait_for_ledger(
            dsn, f"{old} AND {after} AND n >= {NEW_START}", 2 * EACH, workers, producers
        )

        # 5. The producers stop; the workers drain what is left and stop cleanly.
        enqueued = {"old": old_producer.stop(), "new": new_producer.stop()}
        total = sum(enqueued.values())
        wait_for_ledger(dsn, "true", total, workers, [])
        # (a job's ledger row is written before its outcome is)
        succeeded = "SELECT count(*) FROM pgqueue.jobs WHERE state = 'succeeded'"
        wait_for_sql(dsn, succeeded, total, timeout=STEP_TIMEOUT)
        assert errors(old_worker) == []
        assert errors(new_worker) == []
        assert old_worker.stop(timeout=60) == 0
        assert new_worker.stop(timeout=60) == 0
    finally:
        for producer in producers:
            producer.close()
        for w in (old_worker, new_worker):
            if w is not None:
                w.close()

    check_every_job_ran_once(dsn, enqueued, {old_worker.pid: old_code, new_worker.pid: new_code})
    # A worker of the release started now (a restart after the migration) refuses the
    # newer schema: what the README's upgrade notes warn about.
    if new_head != release.MIGRATION_HEAD:
        check_a_restarted_release_worker_refuses(dsn, old_env)


def check_every_job_ran_once(dsn: str, enqueued: dict[str, int], code: dict[int, Path]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        ran = conn.execute("SELECT n FROM ledger ORDER BY n").fetchall()
        jobs = conn.execute(
            "SELECT (args->>'n')::int, state::text, attempts FROM pgqueue.jobs ORDER BY 1"
        ).fetchall()
        code_by_pid = dict(conn.execute("SELECT DISTINCT pid, code FROM ledger").fetchall())
    expected = [*range(enqueued["old"]), *range(NEW_START, NEW_START + enqueued["new"])]
    assert [n for (n,) in ran] == expected  # every job ran, none twice, none lost
    assert jobs == [(n, "succeeded", 1) for n in expected]  # no retry, no rescue
    # Each worker ran its own version's code.
    assert code_by_pid == {pid: str(path) for pid, path in code.items()}


def check_a_restarted_release_worker_refuses(dsn: str, old_env: dict[str, str]) -> None:
    restarted = subprocess.run(
        [sys.executable, "-m", "pgqueue", "worker", "rolling_app:queue", "--dsn", dsn,
         "--log-format", "json"],
        cwd=APPS,
        env={**old_env, "LEDGER_DSN": dsn},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert restarted.returncode == 1, restarted.stdout + restarted.stderr
    assert "database_behind" in restarted.stdout + restarted.stderr
