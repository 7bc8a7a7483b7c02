"""pgqueue.contrib.opentelemetry on a real database and a real worker, spans caught by
the SDK's in-memory exporter: an enqueue's PRODUCER span and its job's CONSUMER run span
share a trace (the run the enqueue's child, through the trace context stored with the
job), with the messaging attributes; failures are recorded; a bulk enqueue is one span;
a job enqueued over HTTP with a traceparent header runs in the caller's trace; so does a
job of every mode (unique, debounced: the last enqueue's trace, sequenced, dependent, of
a workflow, of a limited queue)."""

from __future__ import annotations

import importlib
import itertools
import sys

import pytest
from examplekit import loaded_example
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode

import pgqueue
from pgqueue import JobState, RetryPolicy
from pgqueue.contrib.opentelemetry import instrument, uninstrument
from pgqueue.extras import ExtraNotInstalledError
from pgqueue.service import ServiceSettings, create_app
from pgqueue.testing import running_worker, wait_for_job

FAST_RETRY = RetryPolicy(base=0.01, factor=1.0, max_delay=0.05, jitter=0)
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def spans_named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.name == name]


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    context = span.context
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


async def test_the_run_is_the_child_of_the_enqueue_in_one_trace(queue, provider, exporter):
    instrument(queue, tracer_provider=provider)
    tracer = provider.get_tracer("test")
    inner: list[SpanContext] = []

    @queue.task(name="otel.add", queue="math")
    async def add(a: int, b: int) -> int:
        with tracer.start_as_current_span("inside add") as span:
            inner.append(span.get_span_context())
        return a + b

    @queue.task(name="otel.report", queue="math")
    def report() -> str:  # a plain function: runs in a thread, in the run's context
        with tracer.start_as_current_span("inside report") as span:
            inner.append(span.get_span_context())
        return "done"

    async with running_worker(queue, queues=["math"], poll_interval=0.2):
        result = await add.enqueue(2, 3)
        other = report.enqueue_sync()
        assert (await wait_for_job(queue, result.id)).result == 5
        assert (await wait_for_job(queue, other.id)).result == "done"

    (send,) = spans_named(exporter, "send otel.add")
    (process,) = spans_named(exporter, "process otel.add")
    assert send.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    assert process.context.trace_id == send.context.trace_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert dict(send.attributes or {}) == {
        "messaging.system": "pgqueue",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "math",
        "pgqueue.task": "otel.add",
        "messaging.message.id": str(result.id),
    }
    assert dict(process.attributes or {}) == {
        "messaging.system": "pgqueue",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "math",
        "messaging.message.id": str(result.id),
        "pgqueue.task": "otel.add",
        "pgqueue.attempt": 1,
        "pgqueue.max_attempts": 3,
        "pgqueue.outcome": "succeeded",
    }
    assert process.status.status_code is StatusCode.UNSET
    # The job stores the enqueue span's context (W3C), and reads it back.
    job = await queue.get_job(result.id)
    assert job is not None
    assert job.trace_context == {"traceparent": traceparent_of(send)}
    # Spans made by the task's code are the run's children, in a thread too.
    (sync_send,) = spans_named(exporter, "send otel.report")
    (sync_process,) = spans_named(exporter, "process otel.report")
    assert sync_process.parent is not None
    assert sync_process.parent.span_id == sync_send.context.span_id
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    assert by_name["inside add"].parent.span_id == process.context.span_id
    assert by_name["inside report"].parent.span_id == sync_process.context.span_id
    assert len(inner) == 2


async def test_failed_attempts_record_the_exception_and_the_outcome(queue, provider, exporter):
    instrument(queue, tracer_provider=provider)

    @queue.task(name="otel.doomed", max_attempts=2, retry=FAST_RETRY)
    async def doomed() -> None:
        raise ValueError(f"attempt {pgqueue.current_job().attempt} went wrong")

    async with running_worker(queue, poll_interval=0.2):
        result = await doomed.enqueue()
        assert (await wait_for_job(queue, result.id)).state is JobState.FAILED

    (send,) = spans_named(exporter, "send otel.doomed")
    runs = sorted(
        spans_named(exporter, "process otel.doomed"),
        key=lambda s: (s.attributes or {})["pgqueue.attempt"],
    )
    assert [(s.attributes or {})["pgqueue.outcome"] for s in runs] == ["retrying", "failed"]
    assert [(s.attributes or {})["pgqueue.attempt"] for s in runs] == [1, 2]
    assert "pgqueue.retry_in" in (runs[0].attributes or {})
    for attempt, span in enumerate(runs, start=1):
        assert span.parent is not None
        assert span.parent.span_id == send.context.span_id  # every attempt, one parent
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == f"ValueError: attempt {attempt} went wrong"
        (event,) = [e for e in span.events if e.name == "exception"]
        assert (event.attributes or {})["exception.type"] == "ValueError"


async def test_a_bulk_enqueue_is_one_span_and_every_job_joins_it(queue, provider, exporter):
    instrument(queue, tracer_provider=provider)

    @queue.task(name="otel.item")
    async def item(n: int) -> int:
        return n

    specs = [item.job(n=i) for i in range(5)]
    assert all(spec.copyable for spec in specs)  # the COPY path carries the context
    async with running_worker(queue, poll_interval=0.2):
        results = await queue.enqueue_many(specs)
        for result in results:
            await wait_for_job(queue, result.id)

    (send,) = spans_named(exporter, "send otel.item")
    assert (send.attributes or {})["messaging.batch.message_count"] == 5
    runs = spans_named(exporter, "process otel.item")
    assert len(runs) == 5
    assert {s.parent.span_id for s in runs if s.parent} == {send.context.span_id}
    assert {s.context.trace_id for s in runs} == {send.context.trace_id}


async def test_a_job_enqueued_over_http_with_a_traceparent_runs_in_that_trace(
    dsn, queue, provider, exporter
):
    instrument(queue, tracer_provider=provider)

    @queue.task(name="otel.remote")
    async def remote(n: int) -> int:
        return n * 2

    headers = {
        "traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01",
        "tracestate": "vendor=abc",
    }
    async with AsyncTestClient(create_app(ServiceSettings(dsn=dsn, auth=False))) as client:
        posted = await client.post(
            "/v1/jobs", json={"task": "otel.remote", "args": {"n": 4}}, headers=headers
        )
        assert posted.status_code == 202, posted.text
        assert posted.json()["trace_context"] == headers
        # A body's own trace_context wins over the headers; an invalid header is ignored.
        own = {"traceparent": f"00-{'1' * 32}-{'2' * 16}-00"}
        body = await client.post(
            "/v1/jobs",
            json={"task": "otel.remote", "args": {"n": 1}, "trace_context": own},
            headers=headers,
        )
        assert body.json()["trace_context"] == own
        ignored = await client.post(
            "/v1/jobs",
            json={"task": "otel.remote", "args": {"n": 2}},
            headers={"traceparent": "00-not-a-trace-01"},
        )
        assert ignored.status_code == 202
        assert ignored.json()["trace_context"] is None
        batch = await client.post(
            "/v1/jobs/batch",
            json={"jobs": [{"task": "otel.remote", "args": {"n": 3}}]},
            headers=headers,
        )
        assert batch.status_code == 202
    batch_job = await queue.get_job(batch.json()["jobs"][0]["id"])
    assert batch_job is not None
    assert batch_job.trace_context == headers

    async with running_worker(queue, poll_interval=0.2):
        job = await wait_for_job(queue, posted.json()["id"])
    assert job.result == 8
    (run,) = [
        s
        for s in spans_named(exporter, "process otel.remote")
        if (s.attributes or {})["messaging.message.id"] == str(job.id)
    ]
    assert f"{run.context.trace_id:032x}" == CALLER_TRACE
    assert run.parent is not None
    assert f"{run.parent.span_id:016x}" == CALLER_SPAN
    assert run.parent.is_remote


def test_inline_mode_and_uninstrument(provider, exporter):
    queue = pgqueue.Queue(inline=True)
    instrument(queue, tracer_provider=provider)
    instrument(queue, tracer_provider=provider)  # a second call replaces the first
    assert len(queue.hooks.instrumentations) == 1

    @queue.task(name="otel.inline")
    def double(n: int) -> int:
        return n * 2

    double.enqueue_sync(n=2)
    (send,) = spans_named(exporter, "send otel.inline")
    (process,) = spans_named(exporter, "process otel.inline")
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    uninstrument(queue)
    double.enqueue_sync(n=3)
    assert len(exporter.get_finished_spans()) == 2


def test_without_the_extra_the_import_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    monkeypatch.delitem(sys.modules, "pgqueue.contrib.opentelemetry")
    with pytest.raises(ExtraNotInstalledError, match=r"pip install 'pgqueue-jobs\[otel\]'"):
        importlib.import_module("pgqueue.contrib.opentelemetry")


async def test_the_tracing_example_puts_request_enqueue_run_and_task_in_one_trace(dsn):
    with loaded_example("tracing.py") as module:
        spans = {span.name: span for span in await module.main(dsn)}
    chain = ["GET /pages/7", "send example.render", "process example.render", "render page"]
    assert sorted(spans) == sorted(chain)
    assert len({spans[name].context.trace_id for name in chain}) == 1
    for parent, child in itertools.pairwise(chain):
        assert spans[child].parent is not None
        assert spans[child].parent.span_id == spans[parent].context.span_id


# --- every way of enqueueing carries the context ----------------------------------------


def run_of(exporter: InMemorySpanExporter, job_id: int) -> ReadableSpan:
    """The one run span of the job ``job_id``."""
    (run,) = [
        s
        for s in exporter.get_finished_spans()
        if s.kind is SpanKind.CONSUMER
        and (s.attributes or {})["messaging.message.id"] == str(job_id)
    ]
    return run


def sends_of(exporter: InMemorySpanExporter, job_id: int) -> list[ReadableSpan]:
    """The enqueue spans that wrote or returned the job ``job_id``, oldest first."""
    return sorted(
        (
            s
            for s in exporter.get_finished_spans()
            if s.kind is SpanKind.PRODUCER
            and (s.attributes or {}).get("messaging.message.id") == str(job_id)
        ),
        key=lambda s: s.start_time or 0,
    )


def assert_child_of(run: ReadableSpan, parent: ReadableSpan) -> None:
    assert run.context.trace_id == parent.context.trace_id
    assert run.parent is not None
    assert run.parent.span_id == parent.context.span_id


async def test_unique_debounced_sequenced_and_dependent_jobs_run_in_their_enqueues_trace(
    queue, provider, exporter
):
    instrument(queue, tracer_provider=provider)

    @queue.task(name="otel.keyed", queue="keyed")
    async def keyed(n: int) -> int:
        return n

    unique = keyed.with_options(unique_for=3600, unique_key="otel-unique")
    first = await unique.enqueue(n=1)
    held = await unique.enqueue(n=2)  # inside the window: the first job, as it was
    assert (held.id, held.duplicate) == (first.id, True)
    # Each enqueue of a pending debounced job gives it its args, and its trace context.
    debounced = keyed.with_options(debounce=0.05, unique_key="otel-debounce")
    edits = [await debounced.enqueue(n=10 + n) for n in range(3)]
    assert {e.id for e in edits} == {edits[0].id}
    # The second of a sequence is written blocked, and queued by trigger once the first
    # ends: it runs in its own enqueue's trace all the same.
    sequenced = keyed.with_options(sequence_key="otel-sequence")
    ahead, behind = await sequenced.enqueue(n=20), await sequenced.enqueue(n=21)
    dependent = await keyed.with_options(depends_on=[ahead.id]).enqueue(n=30)

    async with running_worker(queue, queues=["keyed"], poll_interval=0.2):
        for job_id in (first.id, edits[0].id, ahead.id, behind.id, dependent.id):
            assert (await wait_for_job(queue, job_id)).state is JobState.SUCCEEDED

    first_send, held_send = sends_of(exporter, first.id)
    assert (held_send.attributes or {})["pgqueue.duplicate"] is True
    assert_child_of(run_of(exporter, first.id), first_send)
    edit_sends = sends_of(exporter, edits[0].id)
    assert len(edit_sends) == 3
    debounced_run = run_of(exporter, edits[0].id)
    assert (debounced_run.attributes or {})["pgqueue.attempt"] == 1
    assert_child_of(debounced_run, edit_sends[-1])  # the last enqueue's trace
    job = await queue.get_job(edits[0].id)
    assert job is not None
    assert (job.args, job.trace_context) == (
        {"n": 12},
        {"traceparent": traceparent_of(edit_sends[-1])},
    )
    for result in (ahead, behind, dependent):
        (send,) = sends_of(exporter, result.id)
        assert_child_of(run_of(exporter, result.id), send)


async def test_jobs_of_a_limited_queue_run_in_their_enqueues_trace(queue, provider, exporter):
    # One at a time: the first claim is claim_jobs_limited, the next ones the refills
    # made with the previous job's outcome (complete_and_claim_limited).
    instrument(queue, tracer_provider=provider)
    queue.limit("otel.limited", concurrency=1)

    @queue.task(name="otel.limited", queue="otel.limited")
    async def limited(n: int) -> int:
        return n

    results = [await limited.enqueue(n=n) for n in range(4)]
    async with running_worker(queue, queues=["otel.limited"], concurrency=2, poll_interval=0.2):
        for result in results:
            assert (await wait_for_job(queue, result.id)).result is not None
    for result in results:
        (send,) = sends_of(exporter, result.id)
        assert_child_of(run_of(exporter, result.id), send)


async def test_a_workflows_jobs_run_in_the_trace_of_the_context_they_were_given(
    queue, provider, exporter
):
    # enqueue_dependants writes each job's trace context (a workflow, and a job enqueued
    # with depends_on): here the caller's own, given with each job.
    instrument(queue, tracer_provider=provider)

    @queue.task(name="otel.step", queue="steps")
    async def step(n: int) -> int:
        return n

    with provider.get_tracer("test").start_as_current_span("request"):
        pass
    (request,) = spans_named(exporter, "request")
    carrier = {"traceparent": traceparent_of(request), "tracestate": "caller=1"}
    traced = step.with_options(trace_context=carrier)
    done = await queue.enqueue_workflow(
        pgqueue.chain(traced.job(n=1), pgqueue.group(traced.job(n=2), traced.job(n=3)))
    )
    async with running_worker(queue, queues=["steps"], poll_interval=0.2):
        for job_id in done.job_ids:
            assert (await wait_for_job(queue, job_id)).state is JobState.SUCCEEDED
    for job_id in done.job_ids:
        assert_child_of(run_of(exporter, job_id), request)
    status = await queue.get_workflow(done.id)  # get_workflow reads it back
    assert status is not None
    assert [job.trace_context for job in status.jobs] == [carrier] * 3


async def test_a_workflow_enqueued_in_a_span_runs_every_job_in_that_trace(
    queue, provider, exporter
):
    instrument(queue, tracer_provider=provider)

    @queue.task(name="otel.node", queue="nodes")
    async def node(n: int) -> int:
        return n

    with provider.get_tracer("test").start_as_current_span("request"):
        done = await queue.enqueue_workflow(
            pgqueue.chord(pgqueue.group(node.job(n=1), node.job(n=2)), node.job(n=3))
        )
    async with running_worker(queue, queues=["nodes"], poll_interval=0.2):
        for job_id in done.job_ids:
            await wait_for_job(queue, job_id)
    (send,) = spans_named(exporter, "send otel.node")
    assert (send.attributes or {})["messaging.batch.message_count"] == 3
    (request,) = spans_named(exporter, "request")
    assert_child_of(send, request)
    for job_id in done.job_ids:
        assert_child_of(run_of(exporter, job_id), send)
