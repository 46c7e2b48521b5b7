"""Trace context across parties (W3C ``traceparent`` in every envelope).

The coordinator opens a span per ceremony and puts its context in the start
command's envelope; each party records that carrier with the ceremony,
parents its round spans on it and copies it into every envelope it sends.
With no tracer provider installed these calls cost next to nothing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import propagate, trace

__all__ = ["carrier", "span", "install"]

_tracer = trace.get_tracer("conclave")


def carrier() -> dict[str, str]:
    """The current trace context as envelope ``trace`` entries."""
    out: dict[str, str] = {}
    propagate.inject(out)
    return {k: v for k, v in out.items() if k in ("traceparent", "tracestate")}


@contextmanager
def span(name: str, parent: Mapping[str, str] | None = None, **attributes: object) -> Iterator[object]:
    ctx = propagate.extract(dict(parent)) if parent else None
    with _tracer.start_as_current_span(name, context=ctx, attributes=attributes) as s:
        yield s


def install(service: str) -> None:
    """Install the SDK tracer provider; ``CONCLAVE_TRACE=console`` also prints finished spans."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if os.environ.get("CONCLAVE_TRACE") == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    trace.set_tracer_provider(provider)
