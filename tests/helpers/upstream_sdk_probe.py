"""A pytest plugin for runs of upstream's python-sdk tests (tests/upstream/test_upstream_sdk_suite.py):
reports whether exo_otel's SDK side was loaded in that process and how many spans it ended, as JSON to the
file named by ``EXO_OTEL_PROBE_OUT``. It instruments nothing itself: it counts the spans the
process's SDK tracer provider ends (the launcher's, or tests/helpers/upstream_sdk_instrument.py's).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider


class _Counter(SpanProcessor):
    def __init__(self) -> None:
        self.ended = 0
        self.names: dict[str, int] = {}

    def on_end(self, span: ReadableSpan) -> None:
        self.ended += 1
        kind = span.name.split(" ", 1)[0]
        self.names[kind] = self.names.get(kind, 0) + 1


_counter = _Counter()


def _instrumented() -> bool:
    from exospherehost.runtime import Runtime

    return hasattr(Runtime.__init__, "__wrapped__") and hasattr(Runtime._worker, "__wrapped__")


@pytest.hookimpl(trylast=True)  # after the plugin that sets the provider
def pytest_configure(config: Any) -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, SdkTracerProvider):
        provider.add_span_processor(_counter)


def pytest_unconfigure(config: Any) -> None:
    out = os.environ.get("EXO_OTEL_PROBE_OUT")
    if not out:
        return
    provider = trace.get_tracer_provider()
    report = {
        "instrumented": _instrumented(),
        "sdk_provider": isinstance(provider, SdkTracerProvider),
        "spans": _counter.ended,
        "span_kinds": _counter.names,
    }
    with open(out, "w") as handle:
        json.dump(report, handle)
