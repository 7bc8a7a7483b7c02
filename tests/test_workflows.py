"""Workflows: jobs that wait for other jobs (depends_on), and graphs of them (chain,
group, chord, any DAG) written at once. A dependant waits 'blocked' (no claim's
candidate) and is queued, given its parents' results, or cancelled, by the statement
that ends its last parent, whichever that is. Real PostgreSQL, real worker processes
where it matters; waits are bounded, no timing asserts."""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from workerproc import WorkerProcess, wait_for_sql

import pgqueue
from pgqueue import InvalidJobError, JobState, driver_sync
from pgqueue.admin import Admin
from pgqueue.executors import PsycopgExecutor
from pgqueue.sql import query
from pgqueue.workflows import (
    ParentNotFoundError,
    Workflow,
    chain,
    chord,
    group,
    in_order_added,
)

WAIT_S = 60  # the bound of every wait; nothing here takes near it
APP = "workflow_app:queue"


# --- helpers -----------------------------------------------------------------------------


def node(queue: pgqueue.Queue, name: str, pause: float = 0.0, **options: Any) -> pgqueue.JobSpec:
    args: dict[str, Any] = {"name": name, "pause": pause} if pause else {"name": name}
    return queue.build("wf.node", args, **options)


def took(queue: pgqueue.Queue, name: str, **options: Any) -> pgqueue.JobSpec:
    """A node that receives its parents' results as ``inputs``."""
    return node(queue, name, parent_results_arg="inputs", **options)


def states(dsn: str, ids: list[int] | tuple[int, ...]) -> list[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id, state::text FROM pgqueue.jobs WHERE id = ANY(%s)", (list(ids),)
        ).fetchall()
    found = dict(rows)
    return [found.get(i, "gone") for i in ids]


def run_queued(
    dsn: str,
    *,
    fail: set[int] = frozenset(),
    results: dict[int, Any] | None = None,
    retry_in: float | None = None,
) -> list[int]:
    """Claim every claimable job as a worker would and end it through the worker's own
    statements: succeeded (its result from ``results``, else its id), or, for the ids in
    ``fail``, failed (for good, or again in ``retry_in`` seconds). The ids ended."""
    worker = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        ex = PsycopgExecutor(conn)
        claimed = driver_sync.claim(ex, ["default"], 1000, worker)
        ok = [j for j in claimed if j.id not in fail]
        bad = [j for j in claimed if j.id in fail]
        if ok:
            driver_sync.complete_succeeded(
                ex,
                [j.id for j in ok],
                [json.dumps((results or {}).get(j.id, j.id)) for j in ok],
                [j.attempt for j in ok],
            )
        if bad:
            error = '{"type": "Boom", "message": "boom", "traceback": null, "attempt": 1}'
            driver_sync.complete_failed(
                ex,
                [j.id for j in bad],
                [error] * len(bad),
                [retry_in] * len(bad),
                [j.attempt for j in bad],
            )
    return sorted(j.id for j in claimed)


def job_row(dsn: str, job_id: int) -> dict[str, Any]:
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT state::text AS state, args, errors, parents_waiting FROM pgqueue.jobs "
            "WHERE id = %s",
            (job_id,),
        )
        row = cur.fetchone()
        assert row is not None
        names = [c.name for c in cur.description or ()]
    return dict(zip(names, row, strict=True))


def counts(dsn: str) -> tuple[int, int, int]:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pgqueue.jobs), "
            "(SELECT count(*) FROM pgqueue.job_dependencies), "
            "(SELECT count(*) FROM pgqueue.workflows)"
        ).fetchone()
    assert row is not None
    return row


@pytest.fixture
def ledger(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        conn.execute(
            "CREATE TABLE wf_ledger (job_id bigint, task text, pid integer, given jsonb, "
            "started timestamptz, finished timestamptz)"
        )
    return dsn


def workers(dsn: str, n: int, *extra: str) -> list[WorkerProcess]:
    return [
        WorkerProcess(
            APP,
            dsn,
            "--concurrency",
            "10",
            "--log-level",
            "warning",
            *extra,
            env={"LEDGER_DSN": dsn},
        )
        for _ in range(n)
    ]


def ledger_rows(dsn: str) -> dict[int, tuple[Any, ...]]:
    """job id -> (task, pid, given, started, finished, count of runs)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT job_id, task, pid, given, started, finished FROM wf_ledger ORDER BY started"
        ).fetchall()
    out: dict[int, tuple[Any, ...]] = {}
    for row in rows:
        runs = out[row[0]][5] + 1 if row[0] in out else 1
        out[row[0]] = (*row[1:], runs)
    return out


# --- graphs run by real workers ---------------------------------------------------------


def test_a_diamond_runs_parents_first_and_passes_their_results(ledger, queue):
    wf = Workflow("diamond")
    a = wf.add(node(queue, "a", pause=0.05))
    b = wf.add(took(queue, "b", pause=0.05), after=[a])
    c = wf.add(took(queue, "c"), after=[a])
    d = wf.add(took(queue, "d"), after=[b, c])
    done = queue.enqueue_workflow_sync(wf)
    ida, idb, idc, idd = (done.id_of(p) for p in (a, b, c, d))
    assert done.job_ids == (ida, idb, idc, idd)
    assert done.last_ids == (idd,)
    assert done.states == ("queued", "blocked", "blocked", "blocked")
    procs = workers(ledger, 2)
    try:
        assert queue.result_sync(idd, timeout=WAIT_S) == "d(['b(a)', 'c(a)'])"
        assert [w.stop() for w in procs] == [0, 0]
    finally:
        for w in procs:
            w.close()
    runs = ledger_rows(ledger)
    assert {j: r[5] for j, r in runs.items()} == {ida: 1, idb: 1, idc: 1, idd: 1}
    assert runs[idb][2] == {"name": "b", "inputs": "a"}  # one parent: its result
    assert runs[idd][2] == {"name": "d", "inputs": ["b(a)", "c(a)"]}  # several: in order
    for parent, child in [(ida, idb), (ida, idc), (idb, idd), (idc, idd)]:
        assert runs[child][3] >= runs[parent][4]  # started after the parent finished
    status = queue.get_workflow_sync(done.id)
    assert status is not None
    assert (status.name, status.done, status.outcome, status.total) == (
        "diamond",
        True,
        "succeeded",
        4,
    )
    assert sorted(status.edges) == sorted([(ida, idb), (ida, idc), (idb, idd), (idc, idd)])
    assert status.counts[JobState.SUCCEEDED] == 4


def test_a_fan_out_of_1000_and_its_fan_in_under_two_workers(ledger, queue):
    squares = group(*(queue.build("wf.square", {"n": n}) for n in range(1000)))
    callback = queue.build("wf.collect", {}, parent_results_arg="results")
    procs = workers(ledger, 2)
    try:
        # Both workers serving before the fan-out exists: a worker that started first
        # could otherwise drain the 1,000 quick jobs alone.
        wait_for_sql(ledger, "SELECT count(*) FROM pgqueue.workers", 2, WAIT_S)
        done = queue.enqueue_workflow_sync(chord(squares, callback))
        assert len(done.job_ids) == 1001
        assert queue.result_sync(done.last_id, timeout=WAIT_S * 3) == 1000
        assert [w.stop() for w in procs] == [0, 0]
    finally:
        for w in procs:
            w.close()
    runs = ledger_rows(ledger)
    assert list(runs) == [done.last_id]  # the callback, and it ran once
    assert runs[done.last_id][5] == 1
    assert runs[done.last_id][2] == [n * n for n in range(1000)]
    with psycopg.connect(ledger) as conn:
        pids = conn.execute(
            "SELECT count(DISTINCT worker_id) FROM pgqueue.jobs WHERE task = 'wf.square'"
        ).fetchone()
    assert pids is not None
    assert pids[0] == 2


def test_a_worker_sigkilled_mid_workflow_loses_nothing(ledger, queue):
    # 40 chains of 5 steps, each step a little slow: killed mid-run, the dead worker's
    # jobs are rescued and run again; every chain ends with the right total.
    wf = Workflow("killed")
    chains = []
    for c in range(40):
        steps = [queue.build("wf.add", {"n": 1, "pause": 0.03})]
        steps += [
            queue.build("wf.add", {"n": n, "pause": 0.03}, parent_results_arg="previous")
            for n in range(2, 6)
        ]
        chains.append(wf.add(chain(*steps)))
        del c
    done = queue.enqueue_workflow_sync(wf)
    procs = workers(ledger, 2, "--lease", "1", "--poll-interval", "0.5")
    try:
        wait_until(ledger, "SELECT count(*) >= 30 FROM wf_ledger WHERE finished IS NOT NULL")
        procs[0].signal(__import__("signal").SIGKILL)
        procs[0].wait(10)
        procs.append(workers(ledger, 1, "--lease", "1", "--poll-interval", "0.5")[0])
        for part in chains:
            assert queue.result_sync(done.ids_of(part)[-1], timeout=WAIT_S) == 12345
        status = queue.get_workflow_sync(done.id)
        assert status is not None
        assert (status.done, status.outcome) == (True, "succeeded")
        assert [w.stop() for w in procs[1:]] == [0, 0]
    finally:
        for w in procs:
            w.close()
    runs = ledger_rows(ledger)
    for part in chains:
        ids = done.ids_of(part)
        assert all(i in runs for i in ids)
        for before, after in itertools.pairwise(ids):
            # Each step started after the last run of the one before it finished.
            assert runs[after][3] >= runs[before][4]


def wait_until(dsn: str, sql: str) -> None:
    wait_for_sql(dsn, sql, expected=True, timeout=WAIT_S)


# --- failure, cancellation, already-ended parents --------------------------------------


def test_a_parent_failing_for_good_cancels_its_subtree_and_run_anyway_runs(dsn, queue):
    wf = Workflow()
    root = wf.add(node(queue, "root", max_attempts=1))
    child = wf.add(node(queue, "child"), after=[root])
    grandchild = wf.add(node(queue, "grandchild"), after=[child])
    deep = wf.add(
        chain(node(queue, "g1"), node(queue, "g2"), node(queue, "g3")), after=[grandchild]
    )
    anyway = wf.add(took(queue, "anyway", on_parent_failure="run"), after=[root])
    after_anyway = wf.add(took(queue, "after_anyway"), after=[anyway])
    done = queue.enqueue_workflow_sync(wf)
    rid = done.id_of(root)
    assert run_queued(dsn, fail={rid}) == [rid]
    subtree = [done.id_of(child), done.id_of(grandchild), *done.ids_of(deep)]
    assert states(dsn, subtree) == ["cancelled"] * 5
    # The reason, in each one's errors: its own parent, which ended failed or cancelled.
    first = job_row(dsn, done.id_of(child))["errors"]
    assert [(e["type"], e["parent_id"], e["parent_state"]) for e in first] == [
        ("pgqueue.ParentFailed", rid, "failed")
    ]
    chained = [job_row(dsn, i)["errors"][0]["parent_id"] for i in subtree[1:]]
    assert chained == subtree[:-1]
    # on_parent_failure="run": queued, its parent's result None.
    aid = done.id_of(anyway)
    assert job_row(dsn, aid)["state"] == "queued"
    assert job_row(dsn, aid)["args"] == {"name": "anyway", "inputs": None}
    assert states(dsn, [done.id_of(after_anyway)]) == ["blocked"]
    assert run_queued(dsn, results={aid: "ran"}) == [aid]
    assert job_row(dsn, done.id_of(after_anyway))["args"]["inputs"] == "ran"
    status = queue.get_workflow_sync(done.id)
    assert status is not None
    assert status.counts[JobState.CANCELLED] == 5
    assert (status.done, status.outcome) == (False, "running")
    with psycopg.connect(dsn) as conn:
        view = conn.execute(
            "SELECT failed, cancelled, queued, done, outcome FROM pgqueue.workflow_status "
            "WHERE workflow_id = %s",
            (done.id,),
        ).fetchone()
    assert view == (1, 5, 1, False, "running")


def test_a_failed_attempt_that_will_retry_is_not_an_end(dsn, queue):
    parent = queue.enqueue_sync("wf.node", {"name": "p"}).id
    child = queue.enqueue_sync("wf.node", {"name": "c"}, depends_on=[parent]).id
    run_queued(dsn, fail={parent}, retry_in=0.0)
    assert states(dsn, [parent, child]) == ["queued", "blocked"]
    run_queued(dsn, results={parent: "fine"})
    assert states(dsn, [parent, child]) == ["succeeded", "queued"]


def test_cancelling_a_blocked_job_or_a_parent_cascades(dsn, queue):
    parent = queue.enqueue_sync("wf.node", {"name": "p"}).id
    child = queue.enqueue_sync("wf.node", {"name": "c"}, depends_on=[parent]).id
    grandchild = queue.enqueue_sync("wf.node", {"name": "g"}, depends_on=[child]).id
    assert queue.cancel_sync(child) == JobState.BLOCKED
    assert states(dsn, [parent, child, grandchild]) == ["queued", "cancelled", "cancelled"]
    other = queue.enqueue_sync("wf.node", {"name": "o"}, depends_on=[parent]).id
    queue.cancel_sync(parent)
    assert states(dsn, [other]) == ["cancelled"]
    # A parent retried by hand and ending again is not counted twice.
    queue.retry_sync(parent)
    run_queued(dsn)
    assert states(dsn, [parent, other]) == ["succeeded", "cancelled"]


def test_parents_that_ended_before_the_enqueue_count_as_ended(dsn, queue):
    ok = queue.enqueue_sync("wf.node", {"name": "ok"}, max_attempts=1).id
    bad = queue.enqueue_sync("wf.node", {"name": "bad"}, max_attempts=1).id
    run_queued(dsn, fail={bad}, results={ok: {"v": 1}})
    queued = queue.enqueue_sync(
        "wf.node", {"name": "q"}, depends_on=[ok], parent_results_arg="inputs"
    )
    job = queue.get_job_sync(queued.id)
    assert job is not None
    assert (job.state, job.args["inputs"], job.depends_on) == ("queued", {"v": 1}, (ok,))
    cancelled = queue.get_job_sync(
        queue.enqueue_sync("wf.node", {"name": "c"}, depends_on=[ok, bad]).id
    )
    assert cancelled is not None
    assert cancelled.state == JobState.CANCELLED
    assert cancelled.errors[0]["parent_id"] == bad
    ran = queue.get_job_sync(
        queue.enqueue_sync(
            "wf.node",
            {"name": "r"},
            depends_on=[ok, bad],
            on_parent_failure="run",
            parent_results_arg="inputs",
        ).id
    )
    assert ran is not None
    assert ran.state == JobState.QUEUED
    assert ran.args["inputs"] == [{"v": 1}, None]
    # In a workflow: an ended outside parent settles the jobs after it at once.
    wf = Workflow()
    first = wf.add(node(queue, "w1", depends_on=[bad]))
    second = wf.add(node(queue, "w2"), after=[first])
    third = wf.add(took(queue, "w3", depends_on=[ok]))
    done = queue.enqueue_workflow_sync(wf)
    assert done.states == ("cancelled", "cancelled", "queued")
    assert states(dsn, [done.id_of(second)]) == ["cancelled"]
    assert job_row(dsn, done.id_of(third))["args"]["inputs"] == {"v": 1}


def test_an_unknown_parent_is_refused_and_nothing_is_written(dsn, queue):
    real = queue.enqueue_sync("wf.node", {"name": "real"}).id
    before = counts(dsn)
    with pytest.raises(ParentNotFoundError) as caught:
        queue.enqueue_sync("wf.node", {"name": "x"}, depends_on=[real, 10**12, 10**12 + 1])
    assert caught.value.missing == (10**12, 10**12 + 1)
    assert caught.value.field == "depends_on"
    wf = Workflow()
    wf.add(chain(node(queue, "a"), node(queue, "b", depends_on=[10**12])))
    with pytest.raises(ParentNotFoundError):
        queue.enqueue_workflow_sync(wf)
    assert counts(dsn) == before
    with psycopg.connect(dsn) as conn:
        flagged = conn.execute(
            "SELECT has_dependants FROM pgqueue.jobs WHERE id = %s", (real,)
        ).fetchone()
    assert flagged == (False,)


# --- transactions, the claim, and races ------------------------------------------------


def test_a_workflow_in_a_rolled_back_transaction_leaves_no_row(dsn, queue):
    parent = queue.enqueue_sync("wf.node", {"name": "outside"}).id
    before = counts(dsn)
    wf = chord(group(node(queue, "a"), node(queue, "b", depends_on=[parent])), took(queue, "c"))
    with psycopg.connect(dsn) as conn:
        done = queue.enqueue_workflow_sync(wf, conn=conn)
        assert len(done.job_ids) == 3
        conn.rollback()
    assert counts(dsn) == before
    assert queue.get_workflow_sync(done.id) is None
    with psycopg.connect(dsn) as conn:
        done = queue.enqueue_workflow_sync(wf, conn=conn)
        conn.commit()
    assert counts(dsn) == (before[0] + 3, before[1] + 3, before[2] + 1)


async def test_a_workflow_on_an_asyncpg_transaction(dsn, queue):
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        before = counts(dsn)
        tr = conn.transaction()
        await tr.start()
        done = await queue.enqueue_workflow(chain(node(queue, "a"), took(queue, "b")), conn=conn)
        await tr.rollback()
        assert counts(dsn) == before
        async with conn.transaction():
            done = await queue.enqueue_workflow(
                chain(node(queue, "a"), took(queue, "b")), conn=conn
            )
    finally:
        await conn.close()
    status = await queue.get_workflow(done.id)
    assert status is not None
    assert [j.state for j in status.jobs] == ["queued", "blocked"]


def test_blocked_jobs_are_never_claimed_and_the_claim_is_unchanged(dsn, queue):
    claim = query("claim_jobs")
    for column in ("parents_waiting", "has_dependants", "workflow_id", "job_dependencies"):
        assert column not in claim
    assert "j.state = 'queued'" in claim
    done = queue.enqueue_workflow_sync(chain(*(node(queue, f"s{i}") for i in range(5))))
    seen: list[int] = []
    for _ in range(5):
        claimed = run_queued(dsn)
        assert len(claimed) == 1  # only the head of the chain is ever a candidate
        seen += claimed
    assert seen == list(done.job_ids)
    with psycopg.connect(dsn) as conn:
        plan = "\n".join(
            r[0]
            for r in conn.execute(
                "EXPLAIN SELECT id FROM pgqueue.jobs WHERE state = 'queued' AND queue = 'default' "
                "ORDER BY priority DESC, run_at, id LIMIT 10"
            )
        )
    assert "jobs_claim_idx" in plan


@pytest.mark.parametrize("first", ["enqueue", "finish"])
def test_a_parent_ending_while_its_dependant_is_enqueued(dsn, queue, first):
    """Whichever commits first, the dependant ends up queued with the parent's result:
    the enqueue locks the parent's row (has_dependants), so the two are ordered."""
    parent = queue.enqueue_sync("wf.node", {"name": "p"}).id
    worker = str(uuid.uuid4())
    with psycopg.connect(dsn) as finisher, psycopg.connect(dsn) as enqueuer:
        claimed = driver_sync.claim(PsycopgExecutor(finisher), ["default"], 1, worker)
        finisher.commit()
        spec = queue.build(
            "wf.node", {"name": "c"}, depends_on=[parent], parent_results_arg="inputs"
        )
        errors: list[BaseException] = []

        def second() -> None:
            try:
                if first == "enqueue":
                    driver_sync.complete_succeeded(
                        PsycopgExecutor(finisher), [parent], ['"done"'], [claimed[0].attempt]
                    )
                    finisher.commit()
                else:
                    queue.enqueue_spec_sync(spec, conn=enqueuer)
                    enqueuer.commit()
            except BaseException as exc:
                errors.append(exc)

        if first == "enqueue":
            child = queue.enqueue_spec_sync(spec, conn=enqueuer).id  # parent locked
        else:
            driver_sync.complete_succeeded(
                PsycopgExecutor(finisher), [parent], ['"done"'], [claimed[0].attempt]
            )
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(0.5)
        assert thread.is_alive()  # waits for the first transaction's lock
        (enqueuer if first == "enqueue" else finisher).commit()
        thread.join(WAIT_S)
        assert not thread.is_alive()
        assert not errors, errors
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT state::text, args->>'inputs' FROM pgqueue.jobs WHERE task = 'wf.node' "
            "AND args->>'name' = 'c'"
        ).fetchone()
    assert row == ("queued", "done")
    if first == "enqueue":
        assert states(dsn, [child]) == ["queued"]


def test_racing_enqueues_and_finishes_never_strand_a_dependant(dsn, queue):
    rounds = 40
    parents = [
        r.id
        for r in queue.enqueue_many_sync(
            [queue.build("wf.node", {"name": f"p{i}"}) for i in range(rounds)]
        )
    ]
    worker = str(uuid.uuid4())
    with psycopg.connect(dsn, autocommit=True) as conn:
        claimed = {
            j.id: j for j in driver_sync.claim(PsycopgExecutor(conn), ["default"], rounds, worker)
        }
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def finish() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                for pid in parents:
                    barrier.wait(10)
                    driver_sync.complete_succeeded(
                        PsycopgExecutor(conn), [pid], [f'"{pid}"'], [claimed[pid].attempt]
                    )
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=finish)
    thread.start()
    children = []
    for pid in parents:
        barrier.wait(10)
        children.append(
            queue.enqueue_sync(
                "wf.node", {"name": "c"}, depends_on=[pid], parent_results_arg="inputs"
            ).id
        )
    thread.join(WAIT_S)
    assert not errors, errors
    assert states(dsn, children) == ["queued"] * rounds
    with psycopg.connect(dsn) as conn:
        given = dict(
            conn.execute(
                "SELECT id, args->>'inputs' FROM pgqueue.jobs WHERE id = ANY(%s)", (children,)
            ).fetchall()
        )
    assert [given[c] for c in children] == [str(p) for p in parents]


# --- building and checking --------------------------------------------------------------


def test_depends_on_refuses_the_modes_it_cannot_keep(queue):
    for mode in (
        {"idempotency_key": "k"},
        {"unique_for": 60},
        {"debounce": 5},
        {"sequence_key": "s"},
    ):
        with pytest.raises(InvalidJobError):
            queue.build("wf.node", {"name": "x"}, depends_on=[1], **mode)
    with pytest.raises(InvalidJobError, match="needs depends_on"):
        queue.enqueue_sync("wf.node", {"name": "x"}, parent_results_arg="inputs")
    with pytest.raises(InvalidJobError, match="twice"):
        queue.build("wf.node", {}, depends_on=[1, 1])
    with pytest.raises(InvalidJobError):
        queue.build("wf.node", {}, depends_on=[])
    with pytest.raises(InvalidJobError):
        queue.build("wf.node", {}, depends_on=[0])
    with pytest.raises(InvalidJobError):
        queue.build("wf.node", {}, parent_results_arg="not an identifier")
    with pytest.raises(InvalidJobError):
        queue.build("wf.node", {}, depends_on=[1], on_parent_failure="maybe")
    wf = Workflow()
    wf.add(node(queue, "x", idempotency_key="k"))
    with pytest.raises(InvalidJobError, match="idempotency_key"):
        queue.enqueue_workflow_sync(wf)
    with pytest.raises(InvalidJobError, match="needs depends_on"):
        queue.enqueue_workflow_sync(took(queue, "root"))
    with pytest.raises(InvalidJobError):
        Workflow().add(node(queue, "x"), after=[Workflow().add(node(queue, "y"))])


def test_the_results_argument_must_be_one_the_task_takes(queue):
    @queue.task(name="wf.local")
    def local(n: int, previous: int) -> int:
        return n + previous

    step = local.with_options(parent_results_arg="previous")
    spec = step.job(n=1)  # previous is filled in by the parent, not the call
    assert json.loads(spec.args_json) == {"n": 1}
    with pytest.raises(InvalidJobError, match="nope"):
        local.with_options(parent_results_arg="nope")
    with pytest.raises(InvalidJobError, match="parents' results"):
        step.job(n=1, previous=2)
    wf = Workflow()
    first = wf.add(local.job(n=1, previous=0))
    wf.add(queue.build("wf.local", {"n": 2}, parent_results_arg="missing"), after=[first])
    with pytest.raises(InvalidJobError, match="missing"):
        queue.enqueue_workflow_sync(wf)


def test_get_workflow_and_its_admin_twin(dsn, queue):
    done = queue.enqueue_workflow_sync(
        chord([node(queue, "a"), node(queue, "b")], took(queue, "c"))
    )
    admin = Admin(queue)
    status = admin.get_workflow_sync(done.id)
    assert status is not None
    assert [j.id for j in status.jobs] == list(done.job_ids)
    assert [j.state for j in status.jobs] == ["queued", "queued", "blocked"]
    assert status.job(done.last_id).depends_on == done.job_ids[:2]
    assert status.edges == [(done.job_ids[0], done.last_id), (done.job_ids[1], done.last_id)]
    assert admin.get_workflow_sync(10**12) is None
    written = admin.enqueue_workflow_sync(chain(node(queue, "x"), took(queue, "y")))
    assert [j.state for j in written.jobs] == ["queued", "blocked"]
    # The admin's answer lists the jobs in the order added (the HTTP API maps each
    # job's ref by it), not by id order, which the database does not promise.
    backwards = in_order_added(written, [j.id for j in reversed(written.jobs)])
    assert [j.task for j in backwards.jobs] == [j.task for j in reversed(written.jobs)]
    # Pruned, a workflow's jobs take their edges and the workflow's row with them.
    run_queued(dsn)
    run_queued(dsn)
    run_queued(dsn)
    assert queue.prune_sync(pgqueue.Retention(succeeded=timedelta(0))) >= 5
    assert queue.get_workflow_sync(written.id) is None
    assert counts(dsn)[1:] == (0, 0)


def test_inline_mode_runs_a_workflow_parents_first():
    queue = pgqueue.Queue(inline=True)
    ran: list[str] = []

    @queue.task(name="inline.step")
    def step(name: str, inputs: Any = None) -> str:
        ran.append(name)
        return f"{name}<{inputs}>" if inputs is not None else name

    @queue.task(name="inline.boom", max_attempts=1)
    def boom() -> None:
        raise pgqueue.PermanentError("no")

    wf = Workflow()
    a = wf.add(step.job(name="a"))
    b = wf.add(step.with_options(parent_results_arg="inputs").job(name="b"), after=[a])
    c = wf.add(step.job(name="c"), after=[a])
    d = wf.add(step.with_options(parent_results_arg="inputs").job(name="d"), after=[b, c])
    done = queue.enqueue_workflow_sync(wf)
    assert ran == ["a", "b", "c", "d"]
    assert queue.result_sync(done.id_of(d)) == "d<['b<a>', 'c']>"
    failing = queue.enqueue_workflow_sync(chain(boom.job(), step.job(name="never")))
    assert queue.get_job_sync(failing.last_id).state == JobState.CANCELLED  # type: ignore[union-attr]
    assert "never" not in ran
