"""OpenTelemetry tracing for a Queue: ``instrument(queue)``. Needs the ``otel`` extra
(``pip install 'pgqueue-jobs[otel]'``, the API only: configure an SDK and an exporter in
your app as usual).

Built on :mod:`pgqueue.hooks`; what it adds, following OpenTelemetry's semantic
conventions for messaging (``messaging.system`` is ``pgqueue``, the queue is the
destination, the job id the message id):

- an enqueue is a PRODUCER span ``send <task>`` (``messaging.operation.name`` ``send``,
  ``messaging.destination.name`` the queue, ``pgqueue.task``, ``messaging.message.id``
  the job id once written, ``pgqueue.duplicate`` when an existing job was returned). Its
  context is stored with the job (``trace_context``, the W3C traceparent and
  tracestate). A bulk enqueue is one span, ``send`` (``send <task>`` when every job has
  the same task), with ``messaging.batch.message_count``; every job of it stores that
  span's context.
- each attempt a worker runs is a CONSUMER span ``process <task>`` (``messaging.operation.
  name`` ``process``, the queue, task and job id as above, ``pgqueue.attempt``,
  ``pgqueue.max_attempts``, and ``pgqueue.outcome``: succeeded, retrying, failed,
  timed_out, snoozed, cancelled, abandoned or withdrawn). A failed or timed-out attempt
  records its exception and sets the status to ERROR. The span is current while the
  task runs (in its thread too), so spans the task's code makes are its children.

**Parent, not link.** A run's span is the child of the stored context: the span of the
enqueue, or the caller's span for a job enqueued over HTTP with a ``traceparent``
header. Each job is one message processed alone, for which the conventions let the
creation context be the parent; so a request, the jobs it enqueued and everything they
did are one trace, which is what trace views show best. Every attempt of a job is a
child of the same enqueue span. (A job enqueued days before it runs makes a long trace;
that is what happened.) A job with no stored context starts a trace of its own.

The span names hold the task, not the queue, as the target of the operation: tasks are
few (low-cardinality, as span names must be), and a task is what one looks for.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from pgqueue.extras import ExtraNotInstalledError

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # the one-line error of every missing extra
    raise ExtraNotInstalledError("otel", "pgqueue.contrib.opentelemetry") from exc

from pgqueue._version import __version__

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pgqueue.app import Queue
    from pgqueue.hooks import EnqueueCall, JobRun

__all__ = ["PgQueueInstrumentation", "instrument", "uninstrument"]

SYSTEM = "pgqueue"
# Only the W3C trace context goes with a job: the global propagator may add baggage,
# which a job's trace_context does not take (and which could carry what it should not).
_PROPAGATOR = TraceContextTextMapPropagator()
# The outcomes of a failed attempt: their spans have status ERROR and the exception.
_FAILED = frozenset({"retrying", "failed", "timed_out"})


class PgQueueInstrumentation:
    """The spans of one Queue's enqueues and runs (see the module's docstring)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer(
            "pgqueue.contrib.opentelemetry", __version__, tracer_provider=tracer_provider
        )

    @contextlib.contextmanager
    def enqueue(self, call: EnqueueCall) -> Iterator[None]:
        tasks = {spec.task for spec in call.specs}
        queues = {spec.queue for spec in call.specs}
        task = next(iter(tasks)) if len(tasks) == 1 else None
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.name": "send",
            "messaging.operation.type": "send",
        }
        if len(queues) == 1:
            attributes["messaging.destination.name"] = next(iter(queues))
        if task is not None:
            attributes["pgqueue.task"] = task
        if call.bulk:
            attributes["messaging.batch.message_count"] = len(call.specs)
        name = "send" if task is None else f"send {task}"
        with self.tracer.start_as_current_span(
            name, kind=trace.SpanKind.PRODUCER, attributes=attributes
        ) as span:
            carrier: dict[str, str] = {}
            _PROPAGATOR.inject(carrier)
            if "traceparent" in carrier:
                call.set_trace_context(carrier)
            yield
            results = call.results or []
            if not call.bulk and results:
                span.set_attribute("messaging.message.id", str(results[0].id))
                if results[0].duplicate:
                    span.set_attributes({"pgqueue.duplicate": True})

    @contextlib.contextmanager
    def run(self, run: JobRun) -> Iterator[None]:
        job = run.job
        parent = _PROPAGATOR.extract(job.trace_context) if job.trace_context else None
        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": job.queue,
            "messaging.message.id": str(job.id),
            "pgqueue.task": job.task,
            "pgqueue.attempt": job.attempt,
            "pgqueue.max_attempts": job.max_attempts,
        }
        with self.tracer.start_as_current_span(
            f"process {job.task}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            yield
            if run.outcome is not None:
                span.set_attribute("pgqueue.outcome", run.outcome)
            if run.retry_in is not None:
                span.set_attribute("pgqueue.retry_in", run.retry_in)
            if run.outcome in _FAILED and run.error is not None:
                span.record_exception(run.error)
                span.set_status(
                    trace.Status(trace.StatusCode.ERROR, f"{type(run.error).__name__}: {run.error}")
                )


def instrument(
    queue: Queue, tracer_provider: trace.TracerProvider | None = None
) -> PgQueueInstrumentation:
    """Trace ``queue``'s enqueues and the runs of its jobs (in workers started on it, and
    in inline mode), with ``tracer_provider`` or else the global one. Once per Queue: a
    second call replaces the first."""
    uninstrument(queue)
    instrumentation = PgQueueInstrumentation(tracer_provider)
    queue.instrument(instrumentation)
    return instrumentation


def uninstrument(queue: Queue) -> None:
    """Stop tracing ``queue`` (what :func:`instrument` added)."""
    queue.hooks.instrumentations[:] = [
        i for i in queue.hooks.instrumentations if not isinstance(i, PgQueueInstrumentation)
    ]
