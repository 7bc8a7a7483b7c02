"""OpenTelemetry: an enqueue and the run of its job in one trace.

    pip install 'pgqueue-jobs[otel]' opentelemetry-sdk
    python examples/tracing.py [DSN]     # the embedded server when no DSN is given

Your app sets up the SDK and its exporter (OTLP to a collector, usually) as it does
already; ``instrument(queue)`` does the rest, in the workers started on the Queue
(``pgqueue worker tracing:queue``) too. Here the spans are printed: the run's span
(``process``) is the child of the enqueue's (``send``), and the span the task makes is
the child of the run's.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import pgqueue
from pgqueue import migrate
from pgqueue.contrib.opentelemetry import instrument
from pgqueue.testing import running_worker, use_database, wait_for_job

# Usually: provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter())) and
# trace.set_tracer_provider(provider), once at start-up; instrument(queue) then takes the
# global provider.
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))

queue = pgqueue.Queue()
instrument(queue, tracer_provider=provider)
tracer = provider.get_tracer("example")


@queue.task(name="example.render")
async def render(page: int) -> str:
    with tracer.start_as_current_span("render page"):  # a child of the run's span
        return f"page {page}"


async def main(dsn: str | None = None) -> list[ReadableSpan]:
    """Enqueue a job inside a request's span, run it on a real worker; the spans."""
    exporter.clear()
    with use_database(queue, dsn) if dsn is not None else contextlib.nullcontext(queue):
        migrate.upgrade(queue.dsn)
        async with running_worker(queue, poll_interval=0.2):
            with tracer.start_as_current_span("GET /pages/7", kind=trace.SpanKind.SERVER):
                result = await render.enqueue(page=7)
            await wait_for_job(queue, result.id)
    return list(exporter.get_finished_spans())


if __name__ == "__main__":
    for span in asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else None)):
        parent = f"{span.parent.span_id:016x}" if span.parent else "-" * 16
        print(  # noqa: T201 - the script's output
            f"trace {span.context.trace_id:032x} span {span.context.span_id:016x} "
            f"parent {parent} {span.kind.name:8} {span.name}"
        )
