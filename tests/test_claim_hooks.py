"""Claim hooks (``queue.on_claim``, pgqueue.hooks): a running worker tells them of every
claim it makes, its own and those riding on its writes of outcomes (a limited queue's
refills), with the jobs it asked for and got and the round trip's seconds; sync and
async hooks; one that raises breaks nothing."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from pgqueue import JobState
from pgqueue.testing import running_worker, wait_for_job

if TYPE_CHECKING:
    from pgqueue.hooks import ClaimRound

JOBS = 60


async def test_every_job_claimed_is_in_one_claim_round(queue):
    rounds: list[ClaimRound] = []

    @queue.task(name="claims.noop")
    async def noop(i: int) -> None:
        return None

    queue.on_claim(rounds.append)
    results = await queue.enqueue_many([noop.job(i=i) for i in range(JOBS)])
    async with running_worker(queue, poll_interval=0.2, batch_size=10) as worker:
        for result in results:
            assert (await wait_for_job(queue, result.id)).state is JobState.SUCCEEDED
        worker_id = worker.worker_id
    assert sum(r.claimed for r in rounds) == JOBS
    assert all(r.kind == "claim" for r in rounds)  # no limit: no refills
    assert all(0 <= r.claimed <= r.wanted <= 10 for r in rounds)  # the batch size
    assert all(r.seconds > 0 for r in rounds)
    assert {r.queues for r in rounds} == {("default",)}
    assert {r.worker_id for r in rounds} == {worker_id}


async def test_refills_of_a_limited_queue_are_claim_rounds_too(queue):
    rounds: list[ClaimRound] = []
    seen_async = asyncio.Event()

    @queue.task(name="claims.limited", queue="limited")
    async def limited(i: int) -> None:
        await asyncio.sleep(0.002)

    async def record(claim: ClaimRound) -> None:
        await asyncio.sleep(0)  # really async
        rounds.append(claim)
        seen_async.set()

    def broken(claim: ClaimRound) -> None:
        raise RuntimeError("a claim hook that raises")

    queue.on_claim(broken)
    queue.on_claim(record)
    await queue.set_limit("limited", concurrency=8)
    results = await queue.enqueue_many([limited.job(i=i) for i in range(JOBS * 4)])
    with structlog.testing.capture_logs() as logs:
        async with running_worker(
            queue, queues=["limited"], poll_interval=0.2, batch_size=8
        ) as worker:
            for result in results:
                assert (await wait_for_job(queue, result.id)).state is JobState.SUCCEEDED
        counters = worker._started.counters()
    assert seen_async.is_set()
    # Every job was claimed once: by the claim loop or by a write's refill.
    assert sum(r.claimed for r in rounds) == JOBS * 4
    kinds = [r.kind for r in rounds]
    assert kinds.count("claim") == counters["claims"]
    assert kinds.count("refill") == counters["refills"] > 0
    assert all(r.claimed <= r.wanted <= 8 for r in rounds)
    assert all(r.seconds > 0 for r in rounds)
    # The raising hook was logged on every round and changed nothing else.
    failed = [e for e in logs if e["event"] == "hook_failed"]
    assert len(failed) == len(rounds)
    assert {(e["stage"], e["hook"]) for e in failed} == {("claim", broken.__qualname__)}


async def test_a_rate_only_queue_is_claimed_by_the_claim_loop_alone(queue):
    # Its claims reserve their starts in a transaction of their own first (pgqueue/flow.py);
    # a claim riding on a write of outcomes could not, and would hold the queue's lock
    # through that write's commit: so no refills, every round is the claim loop's.
    rounds: list[ClaimRound] = []

    @queue.task(name="claims.rated", queue="rated")
    async def rated(i: int) -> None:
        await asyncio.sleep(0.002)

    queue.on_claim(rounds.append)
    await queue.set_limit("rated", rate="100000/s")
    results = await queue.enqueue_many([rated.job(i=i) for i in range(JOBS * 4)])
    async with running_worker(queue, queues=["rated"], poll_interval=0.2, batch_size=8) as worker:
        for result in results:
            assert (await wait_for_job(queue, result.id)).state is JobState.SUCCEEDED
        counters = worker._started.counters()
    assert sum(r.claimed for r in rounds) == JOBS * 4
    assert {r.kind for r in rounds} == {"claim"}
    assert counters["refills"] == 0
    assert all(r.claimed <= r.wanted <= 8 for r in rounds)
