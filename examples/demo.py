"""pgqueue's showcase, run by ``make demo``: a real worker drains a few thousand jobs.

In order, it:

1. starts the embedded PostgreSQL in ``.demo/pgdata`` (or reuses the one already
   running there) and brings its schema up to date with ``pgqueue migrate``;
2. starts a worker as a process of its own, as in production:
   ``python -m pgqueue worker examples.demo_tasks:queue --dsn DSN --concurrency 20``;
3. enqueues the kinds of jobs applications run (see ``demo_tasks.py``), in bulk and one
   at a time: async I/O, CPU-bound, flaky, doomed, idempotent, delayed, and one inside a
   transaction that is rolled back;
4. shows the queues draining, live, from the ``pgqueue.queue_stats`` view;
5. stops the worker with SIGTERM, sums up what happened and stops the server.

The exit status is 0 only when every job ended the way it should: the demo doubles as
an end-to-end check. With ``--psql``, psql is opened on the demo database before the
server stops.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, LiteralString

import psycopg
from psycopg.rows import dict_row
from rich import box
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.padding import Padding
from rich.progress_bar import ProgressBar
from rich.syntax import Syntax
from rich.table import Table

from pgqueue.embedded import DSN_ENV, EmbeddedServer, bundled_bin_dir
from pgqueue.logs import configure_logging

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script, only examples/ itself is on the path
    sys.path.insert(0, str(REPO_ROOT))

from examples import demo_tasks  # noqa: E402 - importable once the repository root is on sys.path

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pgqueue import EnqueueResult, JobSpec, Task

DEMO_DIR = REPO_ROOT / ".demo"
DATA_DIR = DEMO_DIR / "pgdata"
WORKER_LOG = DEMO_DIR / "worker.log"
WORKER_ARGS = ("worker", "examples.demo_tasks:queue", "--concurrency", "20", "--log-format", "json")

WORKER_READY_TIMEOUT_S = 30.0
WORKER_STOP_TIMEOUT_S = 15.0
DRAIN_TIMEOUT_S = 120.0
REFRESH_S = 0.5

BULK_BATCH = 500
NEWSLETTER_EMAILS = 1_900
PASSWORD_RESETS = 100
DOCUMENTS = 1_000
WEBHOOK_EVENTS = 500
CRM_CONTACTS = 5
REMINDER_DELAY_S = 2
CHARGE_KEY = "charge-order-1001"

PSQL_EXAMPLES = """\
-- Jobs per queue and state (the view behind the progress table)
SELECT * FROM pgqueue.queue_stats ORDER BY queue;

-- The dead-letter queue: failed jobs and their last error
SELECT id, task, args, attempts, errors -> -1 ->> 'message' AS last_error
FROM pgqueue.jobs WHERE state = 'failed' ORDER BY id;

-- How many attempts the flaky webhooks needed
SELECT attempts, count(*) FROM pgqueue.jobs
WHERE task = 'webhooks.deliver' GROUP BY attempts ORDER BY attempts;
"""


class DemoError(Exception):
    """A step of the demo could not be carried out."""


@dataclass(slots=True)
class Produced:
    """What the producer enqueued: what the progress bars count to and the checks test."""

    per_task: dict[str, int] = field(default_factory=dict)
    per_queue: dict[str, int] = field(default_factory=dict)
    steps: list[tuple[str, str, str, str]] = field(default_factory=list)  # for the table
    charges: list[EnqueueResult] = field(default_factory=list)
    reminder_id: int = 0
    welcome_seen_inside: int = -1
    welcome_after_rollback: int = -1

    def note(self, task: Task[Any, Any], jobs: int, how: str, started: float) -> None:
        """Count ``jobs`` new jobs of ``task``, and describe the step that made them."""
        self.per_task[task.name] = self.per_task.get(task.name, 0) + jobs
        self.per_queue[task.queue] = self.per_queue.get(task.queue, 0) + jobs
        ms = (time.perf_counter() - started) * 1e3
        self.steps.append((task.name, f"{jobs:,}", how, f"{ms:,.0f} ms"))


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(slots=True)
class Findings:
    """What the database holds once the backlog has drained (or the wait gave up)."""

    by_task: list[dict[str, Any]]
    dead_letter: dict[str, Any] | None
    finished: int  # jobs in a final state
    attempts: int
    retries: int
    span_s: float  # from the first enqueue to the last job's end
    checks: list[Check]


# --- database helpers ---------------------------------------------------------------------


async def fetch(
    conn: psycopg.AsyncConnection[Any], sql: LiteralString, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(sql, params)
        return await cur.fetchall()


async def count_jobs(conn: psycopg.AsyncConnection[Any], task: str) -> int:
    rows = await fetch(conn, "SELECT count(*) AS n FROM pgqueue.jobs WHERE task = %s", (task,))
    return int(rows[0]["n"])


# --- 1. the server and its schema ---------------------------------------------------------


def start_server(console: Console) -> EmbeddedServer:
    DEMO_DIR.mkdir(exist_ok=True)
    fresh = not (DATA_DIR / "PG_VERSION").exists()
    with console.status("Starting the embedded PostgreSQL…"):
        server = EmbeddedServer.start(DATA_DIR)
    with psycopg.connect(server.dsn()) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    version = row[0] if row else "?"
    data_dir = f"{DATA_DIR.relative_to(REPO_ROOT)} ({'new' if fresh else 'existing'})"
    console.print(
        f"[bold]1. Server[/]    embedded PostgreSQL {escape(version)}, pid {server.pid}, "
        f"in {data_dir}"
    )
    console.print(f"   DSN {server.dsn()}", soft_wrap=True, highlight=False, markup=False)
    return server


def migrate(console: Console, dsn: str) -> None:
    """``pgqueue migrate``, then an empty jobs table, so that every count is this run's."""
    command = [sys.executable, "-m", "pgqueue", "migrate", "--dsn", dsn, "--log-format", "json"]
    done = subprocess.run(  # noqa: S603 - our own interpreter, our own arguments
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise DemoError(f"pgqueue migrate failed (status {done.returncode}):\n{done.stderr}")
    migrated = [e for e in parse_events(done.stderr) if e.get("event") == "database_migrated"]
    revision = migrated[-1].get("revision", "?") if migrated else "?"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE pgqueue.jobs RESTART IDENTITY")
    console.print(
        f"[bold]2. Schema[/]    pgqueue migrate: revision {escape(str(revision))}; "
        "pgqueue.jobs emptied"
    )


# --- 2. the worker ------------------------------------------------------------------------


def parse_events(text: str) -> list[dict[str, Any]]:
    """The JSON log events in ``text`` (other lines, a traceback say, are skipped)."""
    events = []
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events


def worker_events() -> list[dict[str, Any]]:
    try:
        return parse_events(WORKER_LOG.read_text(errors="replace"))
    except FileNotFoundError:
        return []


def start_worker(console: Console, dsn: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "pgqueue", *WORKER_ARGS, "--dsn", dsn]
    with WORKER_LOG.open("wb") as log:
        # A session of its own: a Ctrl-C in the terminal reaches only the demo, which then
        # stops the worker itself, with one SIGTERM and a bounded wait.
        worker = subprocess.Popen(  # noqa: S603 - our own interpreter, our own arguments
            command,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + WORKER_READY_TIMEOUT_S
    with console.status("Starting the worker…"):
        while not any(e.get("event") == "listener_connected" for e in worker_events()):
            if worker.poll() is not None:
                raise DemoError(f"the worker exited (status {worker.returncode}): see {WORKER_LOG}")
            if time.monotonic() > deadline:
                raise DemoError(f"the worker was not ready after {WORKER_READY_TIMEOUT_S:.0f} s")
            time.sleep(0.1)  # polling another process's log file
    shown = shlex.join(["python", "-m", "pgqueue", *WORKER_ARGS, "--dsn", "DSN"])
    console.print(
        f"[bold]3. Worker[/]    pid {worker.pid}, log in {WORKER_LOG.relative_to(REPO_ROOT)}"
    )
    console.print(f"   {shown}", soft_wrap=True, highlight=False, markup=False)
    return worker


def stop_worker(worker: subprocess.Popen[bytes]) -> tuple[int | None, float]:
    """SIGTERM (a graceful stop) and a bounded wait; SIGKILL only if the wait runs out.
    Returns the exit status (None when it had to be killed) and the seconds it took."""
    started = time.monotonic()
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
            return None, time.monotonic() - started
    return worker.returncode, time.monotonic() - started


# --- 3. the producer ----------------------------------------------------------------------


async def enqueue_in_batches(specs: list[JobSpec]) -> int:
    """``enqueue_many`` in batches of BULK_BATCH jobs (one transaction and one COPY each)."""
    starts = range(0, len(specs), BULK_BATCH)
    for start in starts:
        await demo_tasks.queue.enqueue_many(specs[start : start + BULK_BATCH])
    return len(starts)


async def produce(dsn: str, db: psycopg.AsyncConnection[Any]) -> Produced:
    tasks, out = demo_tasks, Produced()

    started = time.perf_counter()
    digest = [
        tasks.send_email.job(to=f"reader{i}@example.com", subject="This week at pgqueue")
        for i in range(NEWSLETTER_EMAILS)
    ]
    batches = await enqueue_in_batches(digest)
    out.note(tasks.send_email, len(digest), f"enqueue_many, {batches} batches", started)

    started = time.perf_counter()
    for i in range(PASSWORD_RESETS):
        await tasks.send_email.enqueue(to=f"user{i}@example.com", subject="Reset your password")
    out.note(tasks.send_email, PASSWORD_RESETS, "enqueue, one at a time", started)

    started = time.perf_counter()
    batches = await enqueue_in_batches(
        [tasks.fingerprint.job(document_id=d) for d in range(DOCUMENTS)]
    )
    out.note(tasks.fingerprint, DOCUMENTS, f"enqueue_many, {batches} batches; CPU-bound", started)

    started = time.perf_counter()
    hooks = [
        tasks.deliver_webhook.job(event_id=e, url=f"https://hooks.example.com/shop/{e % 7}")
        for e in range(WEBHOOK_EVENTS)
    ]
    await enqueue_in_batches(hooks)
    rate = f"{demo_tasks.WEBHOOK_FAILURE_RATE:.0%}"
    out.note(tasks.deliver_webhook, len(hooks), f"{rate} of attempts fail: retried", started)

    started = time.perf_counter()
    for contact_id in range(1, CRM_CONTACTS + 1):
        await tasks.sync_contact.enqueue(contact_id=contact_id)
    attempts = demo_tasks.CRM_MAX_ATTEMPTS
    out.note(tasks.sync_contact, CRM_CONTACTS, f"always fail: {attempts} attempts, dead", started)

    started = time.perf_counter()
    charge = tasks.charge_order.with_options(idempotency_key=CHARGE_KEY)
    for _ in range(2):  # a client retrying its request: the order must be charged once
        out.charges.append(await charge.enqueue(order_id=1001, amount_cents=4_999))
    first, again = out.charges
    how = f"same key twice: job {first.id}, then {again.id} (duplicate={again.duplicate})"
    out.note(tasks.charge_order, 1, how, started)

    started = time.perf_counter()
    delayed = tasks.send_reminder.with_options(delay=REMINDER_DELAY_S)
    out.reminder_id = (await delayed.enqueue(user_id=42)).id
    out.note(tasks.send_reminder, 1, f"with_options(delay={REMINDER_DELAY_S})", started)

    started = time.perf_counter()
    welcome = tasks.send_welcome_email
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
        await welcome.with_options(conn=conn).enqueue(user_id=7)
        out.welcome_seen_inside = await count_jobs(conn, welcome.name)
        raise psycopg.Rollback  # the sign-up failed: its welcome email must not go out
    out.welcome_after_rollback = await count_jobs(db, welcome.name)
    how = f"in a transaction ({out.welcome_seen_inside} job seen inside), rolled back"
    out.note(welcome, out.welcome_after_rollback, how, started)
    return out


def producer_table(produced: Produced) -> Table:
    table = Table(
        title="4. Producer", title_justify="left", title_style="bold", box=box.SIMPLE_HEAD
    )
    table.add_column("task")
    table.add_column("jobs", justify="right")
    table.add_column("how")
    table.add_column("took", justify="right", style="dim", no_wrap=True)
    for step in produced.steps:
        table.add_row(*map(escape, step))
    return table


# --- 4. live progress ---------------------------------------------------------------------


def progress_table(
    stats: dict[str, dict[str, Any]], expected: dict[str, int], elapsed: float
) -> Table:
    columns = ("done", "ready", "later", "running", "failed")
    sums = dict.fromkeys(("total", *columns), 0)
    rows = []
    for queue, total in sorted(expected.items()):
        row = stats.get(queue, {})
        counts = {
            "total": total,
            "done": row.get("succeeded", 0) + row.get("failed", 0) + row.get("cancelled", 0),
            "ready": row.get("claimable", 0),
            "later": row.get("queued", 0) - row.get("claimable", 0),
            "running": row.get("running", 0),
            "failed": row.get("failed", 0),
        }
        sums = {key: sums[key] + counts[key] for key in sums}
        rows.append((queue, counts))
    rate = sums["done"] / elapsed if elapsed > 0 else 0.0
    table = Table(
        title=f"5. The worker drains the backlog: {elapsed:4.1f} s, {rate:,.0f} jobs/s",
        title_justify="left",
        title_style="bold",
        caption="ready: claimable now · later: delayed, or backing off before a retry",
        caption_justify="left",
    )
    table.add_column("queue")
    table.add_column("progress")
    for name in columns:
        table.add_column(name, justify="right")

    def add(name: str, counts: dict[str, int]) -> None:
        done = f"{counts['done']:,}/{counts['total']:,}"
        failed = f"[red]{counts['failed']:,}[/]" if counts["failed"] else "0"
        rest = (f"{counts[key]:,}" for key in ("ready", "later", "running"))
        bar = ProgressBar(total=counts["total"], completed=counts["done"], width=14)
        table.add_row(name, bar, done, *rest, failed)

    for queue, counts in rows:
        add(queue, counts)
    table.add_section()
    add("all", sums)
    return table


async def watch_drain(
    console: Console,
    db: psycopg.AsyncConnection[Any],
    expected: dict[str, int],
    worker: subprocess.Popen[bytes],
    *,
    since: float,
    timeout: float,
) -> str | None:
    """Redraw the progress table until no job is queued or running. Returns None then,
    or why it gave up (the timeout, or the worker died). Times count from ``since``, the
    first enqueue (a ``time.monotonic()``)."""
    with Live(console=console, auto_refresh=False) as live:
        while True:
            rows = await fetch(db, "SELECT * FROM pgqueue.queue_stats ORDER BY queue")
            elapsed = time.monotonic() - since
            stats = {row["queue"]: row for row in rows}
            live.update(progress_table(stats, expected, elapsed), refresh=True)
            pending = sum(row["queued"] + row["running"] for row in rows)
            if pending == 0:
                return None
            if worker.poll() is not None:
                return f"the worker exited (status {worker.returncode}), {pending:,} jobs left"
            if elapsed > timeout:
                return f"gave up after {timeout:.0f} s, {pending:,} jobs unfinished"
            await asyncio.sleep(REFRESH_S)  # the display's refresh interval


# --- 5. what happened ---------------------------------------------------------------------

BY_TASK_SQL: LiteralString = """
SELECT task, count(*) AS jobs,
       count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE state = 'failed') AS failed,
       count(*) FILTER (WHERE attempts > 1) AS retried,
       sum(attempts)::int AS attempts,
       max(attempts) AS most_attempts
FROM pgqueue.jobs GROUP BY task ORDER BY task
"""

TOTALS_SQL: LiteralString = """
SELECT count(finished_at)::int AS finished,
       coalesce(sum(attempts), 0)::int AS attempts,
       coalesce(sum(greatest(attempts - 1, 0)), 0)::int AS retries,
       coalesce(EXTRACT(EPOCH FROM max(finished_at) - min(created_at)), 0)::float8 AS seconds
FROM pgqueue.jobs
"""

DEAD_LETTER_SQL: LiteralString = """
SELECT id, task, args, attempts, max_attempts, errors
FROM pgqueue.jobs WHERE state = 'failed' ORDER BY id LIMIT 1
"""

CRM_SQL: LiteralString = """
SELECT attempts, max_attempts, jsonb_array_length(errors) AS errors
FROM pgqueue.jobs WHERE task = %s
"""

FINGERPRINTS_SQL: LiteralString = """
SELECT args, result FROM pgqueue.jobs WHERE task = %s AND state = 'succeeded'
"""

WAITED_SQL: LiteralString = """
SELECT EXTRACT(EPOCH FROM started_at - created_at)::float8 AS waited
FROM pgqueue.jobs WHERE id = %s
"""


async def investigate(
    db: psycopg.AsyncConnection[Any], produced: Produced, drain_problem: str | None
) -> Findings:
    by_task = await fetch(db, BY_TASK_SQL)
    dead = await fetch(db, DEAD_LETTER_SQL)
    totals = (await fetch(db, TOTALS_SQL))[0]
    checks = [Check("the backlog drained", drain_problem is None, drain_problem or "")]
    checks += await check_outcomes(db, produced, {row["task"]: row for row in by_task})
    return Findings(
        by_task=by_task,
        dead_letter=dead[0] if dead else None,
        finished=totals["finished"],
        attempts=totals["attempts"],
        retries=totals["retries"],
        span_s=totals["seconds"],
        checks=checks,
    )


async def check_outcomes(
    db: psycopg.AsyncConnection[Any], produced: Produced, by_task: dict[str, dict[str, Any]]
) -> list[Check]:
    tasks = demo_tasks

    def ended(task: Task[Any, Any], state: str) -> Check:
        row, want = by_task.get(task.name, {}), produced.per_task.get(task.name, 0)
        got, jobs = row.get(state, 0), row.get("jobs", 0)
        return Check(f"{task.name}: all {state}", got == jobs == want, f"{got:,}/{want:,}")

    succeeding = (
        tasks.send_email,
        tasks.send_reminder,
        tasks.fingerprint,
        tasks.deliver_webhook,
        tasks.charge_order,
    )
    checks = [ended(task, "succeeded") for task in succeeding]
    checks.append(ended(tasks.sync_contact, "failed"))

    rows = await fetch(db, FINGERPRINTS_SQL, (tasks.fingerprint.name,))
    wrong = sum(r["result"] != demo_tasks.fingerprint_of(r["args"]["document_id"]) for r in rows)
    checks.append(
        Check(
            "fingerprints: results right",
            bool(rows) and not wrong,
            f"{wrong} of {len(rows):,} wrong",
        )
    )

    retried = by_task.get(tasks.deliver_webhook.name, {}).get("retried", 0)
    checks.append(Check("webhooks: some needed retries", retried > 0, f"{retried} retried"))

    rows = await fetch(db, CRM_SQL, (tasks.sync_contact.name,))
    used_all = sum(r["attempts"] == r["max_attempts"] == r["errors"] for r in rows)
    checks.append(
        Check(
            "dead letters: one error per attempt",
            bool(rows) and used_all == len(rows),
            f"{used_all}/{len(rows)}",
        )
    )

    first, again = produced.charges
    jobs = by_task.get(tasks.charge_order.name, {}).get("jobs", 0)
    checks.append(
        Check(
            "idempotency: two enqueues, one job",
            first.id == again.id and not first.duplicate and again.duplicate and jobs == 1,
            f"{jobs} job",
        )
    )

    rows = await fetch(db, WAITED_SQL, (produced.reminder_id,))
    waited = rows[0]["waited"] if rows else None
    checks.append(
        Check(
            f"delay: not run before {REMINDER_DELAY_S} s",
            waited is not None and waited >= REMINDER_DELAY_S,
            "never ran" if waited is None else f"ran after {waited:.1f} s",
        )
    )

    now = await count_jobs(db, tasks.send_welcome_email.name)
    inside, after = produced.welcome_seen_inside, produced.welcome_after_rollback
    checks.append(
        Check(
            "rollback: the enqueue left no job",
            inside == 1 and after == now == 0,
            f"{inside} inside the transaction, {now} after",
        )
    )
    return checks


def worker_checks(status: int | None, stop_s: float, attempts: int) -> list[Check]:
    stopped = [e for e in worker_events() if e.get("event") == "worker_stopped"]
    claimed = stopped[-1].get("claimed") if stopped else None
    how = "had to be killed" if status is None else f"exit status {status} in {stop_s:.1f} s"
    seen = "no stats logged" if claimed is None else f"{claimed:,} claimed"
    return [
        Check("worker: stopped cleanly on SIGTERM", status == 0, how),
        Check(
            "worker: claims match the attempts",
            claimed == attempts,
            f"{seen}, {attempts:,} attempts",
        ),
    ]


def print_summary(console: Console, found: Findings) -> None:
    table = Table(title="6. Jobs by task", title_justify="left", title_style="bold")
    table.add_column("task")
    numbers = ("jobs", "succeeded", "failed", "retried", "attempts")
    for name in numbers:
        table.add_column(name, justify="right")
    for row in found.by_task:
        table.add_row(escape(row["task"]), *(f"{row[key]:,}" for key in numbers))
    console.print()
    console.print(table)
    most = max((row["most_attempts"] for row in found.by_task), default=0)
    console.print(
        f"retried: jobs that took more than one attempt (at most {most}); "
        f"{found.retries:,} retries in all"
    )

    dead = found.dead_letter
    if dead is not None:
        args = ", ".join(f"{key}={value!r}" for key, value in dead["args"].items())
        console.print(
            f"\n[bold]Dead letter[/]: job {dead['id']} {escape(dead['task'])}({escape(args)}), "
            f"{dead['attempts']} of {dead['max_attempts']} attempts failed:"
        )
        errors = Table(box=None, show_header=False)
        for error in dead["errors"]:
            kind = str(error.get("type", "")).rsplit(".", 1)[-1]
            at = str(error.get("at", ""))[11:23]  # the time of day in the ISO timestamp
            message = escape(f"{kind}: {error.get('message')}")
            errors.add_row(f"attempt {error.get('attempt')}", at, message)
        console.print(Padding(errors, (0, 0, 0, 2)))

    rate = found.finished / found.span_s if found.span_s > 0 else 0.0
    console.print(
        f"\n[bold]Throughput[/]: {found.finished:,} jobs ({found.attempts:,} attempts) in "
        f"{found.span_s:.1f} s: {rate:,.0f} jobs/s"
    )
    console.print(
        f"   first enqueue to last finish, retry backoffs and the {REMINDER_DELAY_S} s delay "
        "included"
    )


def print_checks(console: Console, checks: list[Check]) -> None:
    table = Table(title="Checks", title_justify="left", title_style="bold", box=None)
    table.add_column("", no_wrap=True)
    table.add_column("check")
    table.add_column("seen", style="dim")
    for check in checks:
        mark = "[green]✓[/]" if check.ok else "[red]✗[/]"
        table.add_row(mark, escape(check.name), escape(check.detail))
    console.print()
    console.print(table)


def print_psql_hint(console: Console, dsn: str, *, opening: bool) -> None:
    console.print("\n[bold]Explore[/] the jobs with psql:")
    command = shlex.join([str(bundled_bin_dir() / "psql"), dsn])
    console.print(f"   {command}", soft_wrap=True, highlight=False, markup=False)
    if not opening:
        console.print("   The server stops when the demo ends; for a psql prompt before it does:")
        console.print("   .venv/bin/python examples/demo.py --psql", highlight=False)
    console.print(Syntax(PSQL_EXAMPLES, "sql", background_color="default"))


# --- the whole run ------------------------------------------------------------------------


async def run_jobs(
    console: Console, dsn: str, worker: subprocess.Popen[bytes], timeout: float
) -> Findings:
    """Enqueue, watch the worker drain the jobs, stop it, and look at what it did."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as db:
        first_enqueue = time.monotonic()
        try:
            with console.status("Enqueueing…"):
                produced = await produce(dsn, db)
        finally:
            await demo_tasks.queue.close()
        console.print(producer_table(produced))
        problem = await watch_drain(
            console, db, produced.per_queue, worker, since=first_enqueue, timeout=timeout
        )
        # Stopped before the results are read, so that nothing changes under them.
        with console.status("Stopping the worker (SIGTERM)…"):
            status, stop_s = await asyncio.to_thread(stop_worker, worker)
        with console.status("Checking the results…"):
            findings = await investigate(db, produced, problem)
    findings.checks += worker_checks(status, stop_s, findings.attempts)
    return findings


def run(console: Console, args: argparse.Namespace) -> bool:
    server = start_server(console)
    worker: subprocess.Popen[bytes] | None = None
    try:
        dsn = server.dsn()
        # The demo's Queue is built without a DSN: like an application, it reads this one.
        os.environ[DSN_ENV] = dsn
        migrate(console, dsn)
        worker = start_worker(console, dsn)
        findings = asyncio.run(run_jobs(console, dsn, worker, args.timeout))
        print_summary(console, findings)
        print_checks(console, findings.checks)
        print_psql_hint(console, dsn, opening=args.psql)
        if args.psql:
            psql = [str(bundled_bin_dir() / "psql"), dsn]
            subprocess.run(psql, check=False)  # noqa: S603 - the bundled psql, the demo's DSN
        return all(check.ok for check in findings.checks)
    finally:
        if worker is not None:
            stop_worker(worker)  # at once if it has exited already
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--psql", action="store_true", help="open psql on the demo database at the end"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DRAIN_TIMEOUT_S,
        help="seconds to wait for the worker to finish every job (default: %(default)s)",
    )
    args = parser.parse_args()
    # A `kill` (or a CI timeout) cleans up as a Ctrl-C does: worker and server stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    # pgqueue's own info lines would repeat what the demo prints: warnings and errors only.
    configure_logging("warning", json=False)
    console = Console()
    started = time.monotonic()
    console.rule("[bold]pgqueue demo")
    try:
        ok = run(console, args)
    except DemoError as exc:
        console.print(f"[red]The demo failed: {escape(str(exc))}[/]")
        return 1
    except KeyboardInterrupt:
        console.print("\n[yellow]Interrupted: worker and server stopped[/]")
        return 130
    verdict = "[green]every check passed[/]" if ok else "[red]some checks failed[/]"
    console.rule(f"{verdict} · {time.monotonic() - started:.1f} s · server stopped")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
