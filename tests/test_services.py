"""The worker's maintenance services: the periodic-service interface and its runner."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import structlog

import pgqueue
from pgqueue.testing import running_worker, wait_for_job
from pgqueue.worker.heartbeat import Heartbeat
from pgqueue.worker.pruning import Pruner
from pgqueue.worker.services import LoopService, ServiceRunner, ThreadService


class Flaky(LoopService):
    """Fails its first two rounds, then works; says when it has worked twice."""

    name = "flaky"

    def __init__(self) -> None:
        super().__init__(interval=0.01)
        self.rounds = 0
        self.worked = asyncio.Event()

    async def run_round(self) -> None:
        self.rounds += 1
        if self.rounds <= 2:
            raise RuntimeError(f"round {self.rounds} failed")
        if self.rounds >= 4:
            self.worked.set()

    def counters(self) -> dict[str, int]:
        return {"flaky_rounds": self.rounds}


class Counting(ThreadService):
    name = "counting"

    def __init__(self, wanted: int) -> None:
        super().__init__(interval=0.01)
        self.rounds = 0
        self.wanted = wanted
        self.done = threading.Event()
        self.closed_in: str | None = None

    def run_round(self) -> None:
        self.rounds += 1
        if self.rounds >= self.wanted:
            self.done.set()

    def close(self) -> None:
        self.closed_in = threading.current_thread().name


async def test_a_failed_round_is_reported_and_the_service_goes_on():
    flaky = Flaky()
    runner = ServiceRunner([flaky])
    with structlog.testing.capture_logs() as logs:
        runner.start()
        try:
            await asyncio.wait_for(flaky.worked.wait(), 10)
        finally:
            await runner.stop()
    events = [(e["event"], e.get("failures")) for e in logs]
    assert events[:3] == [("flaky_failed", 1), ("flaky_failed", 2), ("flaky_restored", 2)]
    assert "RuntimeError('round 1 failed')" in logs[0]["error"]
    assert runner.counters() == {"flaky_rounds": flaky.rounds}


async def test_a_thread_service_runs_its_rounds_while_the_loop_is_blocked():
    counting = Counting(wanted=5)
    runner = ServiceRunner([counting])
    runner.start()
    try:
        # Blocks the event loop itself: a round on the loop could not run meanwhile.
        assert counting.done.wait(10), "the thread's rounds stopped with the loop"
    finally:
        await runner.stop()
    assert counting.closed_in == "pgqueue-counting"  # closed in its own thread


def test_jitter_spreads_the_waits_below_the_interval():
    rng = random.Random(7)
    waits = [Pruner.next_wait(_pruner(60.0), rng) for _ in range(200)]
    assert min(waits) >= 30.0
    assert max(waits) <= 60.0
    assert max(waits) - min(waits) > 20.0
    heartbeat = Heartbeat("", worker_id=str, interval=3.0, lease=15.0, on_declared_dead=print)
    assert {heartbeat.next_wait(rng) for _ in range(10)} == {3.0}  # beats keep time


def _pruner(interval: float) -> Pruner:
    return Pruner(None, pgqueue.Retention(), interval=interval, stopping=lambda: False)  # type: ignore[arg-type]


async def test_a_task_blocking_the_loop_does_not_stop_the_heartbeat(queue):
    """The heartbeat runs in a thread of its own: a task that blocks the event loop for
    several leases must not get its worker declared dead and its job rescued."""
    async with running_worker(queue, lease=0.5) as worker:
        heartbeat = worker.heartbeat
        assert heartbeat is not None
        worker_id = worker.worker_id

        @queue.task(name="blocks_the_loop")
        async def blocks_the_loop() -> int:
            start = heartbeat.beats
            deadline = time.monotonic() + 20
            # Holds the loop (no await) for ten beats, four leases' worth.
            while heartbeat.beats < start + 10 and time.monotonic() < deadline:
                time.sleep(0.01)  # noqa: ASYNC251 - blocking the loop is the point
            return heartbeat.beats - start

        job = await wait_for_job(queue, (await blocks_the_loop.enqueue()).id, timeout=30)
        assert worker.worker_id == worker_id  # never declared dead, never rejoined
    assert (job.state, job.attempts, job.errors) == (pgqueue.JobState.SUCCEEDED, 1, [])
    assert job.result >= 10
    assert heartbeat.rescued == 0
