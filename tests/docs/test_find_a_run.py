"""The README's "Find a run" queries, as written there, against the spans of real runs.

The tables of that section are parsed (so the README's text is what is tested): every Jaeger search
form and every TraceQL query in them. Two runs go through a real exospherehost Runtime against the
embedded state manager, once with the state manager side and once without: one run succeeds slowly,
one fails fast. The spans come from the real OpenTelemetry SDK (the state manager, and the runtime
with the trigger, each with a provider and a service name of its own). Then:

- every span name and attribute a query names exists on the emitted spans, with the value the query
  asks for (a query naming a span or value that is never emitted fails, whatever it selects);
- each query, evaluated over those spans, selects what its row promises: the failed run's ``settle``
  span and not the successful run's, the slow run and not the fast one, and so on;
- the runs dashboard's trace queries and links (deploy/jaeger), read from its JSON, find what they
  say over the same spans (the run by its id, the failed runs).

The evaluators know exactly the constructs the README uses: Jaeger's search fields (Service,
Operation, Tags as ``key=value``, Min/Max Duration, one span matching all of them, as Jaeger's own
storage does), and TraceQL's single spanset filter ``{ a && b }`` over ``name``, ``status``,
``duration``, ``kind``, ``trace:id``, ``trace:rootName``, ``trace:duration``, ``span.<attribute>``
and ``resource.<attribute>``, with ``=``, ``!=``, ``=~``, ``!~``, ``<``, ``<=``, ``>``, ``>=``.
Anything else raises `Unsupported`, which fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from exospherehost import BaseNode, GraphNodeModel, RetryPolicyModel, Runtime, StateManager
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from pydantic import BaseModel

from exo_otel.core.ids import run_span_id
from exo_otel.sdk.instrumentor import ExosphereInstrumentor
from exo_otel_demo import cli
from exo_otel_demo.embedded import EmbeddedStateManager

README = Path(__file__).parents[2] / "README.md"
DASHBOARD = Path(__file__).parents[2] / "deploy/jaeger/grafana/dashboards/exosphere-runs.json"
SECTION = "## Find a run"
WITH_SIDE = "### With the state manager side"
WITHOUT_SIDE = "### Without the state manager side"

SM_SERVICE = "exosphere-state-manager"
APP_SERVICE = "find-a-run-app"  # the runtime and the trigger (one instrumentor, one provider)
GRAPH = "find-a-run"
SLOW_NODE = "work"
SLOW_S = 3.0
N_SECONDS = 2  # <N>: the slow run and its slow node last longer, the failed run much less
BURN_S = 0.2  # CPU the slow run's slow node burns
CPU_SECONDS = 0.1  # <S>: the slow run used more, the failed run much less
POLL_INTERVAL = 0.05


# --- The README -------------------------------------------------------------------------------


@dataclass(frozen=True)
class JaegerSearch:
    """One filled-in Jaeger search form."""

    service: str
    operation: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    min_duration_ns: int | None = None
    max_duration_ns: int | None = None


@dataclass(frozen=True)
class OpenTrace:
    """Jaeger's trace page, ``/trace/<trace id>``."""

    trace_id: str


@dataclass
class Row:
    label: str
    jaeger: list[str] = field(default_factory=list)  # raw alternatives that name something
    traceql: list[str] = field(default_factory=list)


def section(title: str, text: str) -> str:
    start = text.index(f"\n{title}\n")
    level = title.split(" ", 1)[0]
    following = re.search(rf"\n#{{2,{len(level)}}} ", text[start + len(title) + 2 :])
    return text[start : start + len(title) + 2 + following.start()] if following else text[start:]


def table_rows(text: str) -> list[Row]:
    """The rows of the one ``| to find | Jaeger ... | Tempo ... |`` table in ``text``."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, text
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == ["to find", "Jaeger: search form", "Tempo: TraceQL"], header
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        assert len(cells) == 3, line  # no "|" inside a cell: TraceQL's || is not used
        label, jaeger, tempo = cells
        row = Row(label)
        # Alternatives are separated by ";"; one that shows a value (backticks) is a query.
        row.jaeger = [part.strip() for part in jaeger.split(";") if "`" in part]
        row.traceql = re.findall(r"`([^`]*)`", tempo)
        rows.append(row)
    return rows


def readme_tables() -> dict[str, list[Row]]:
    text = section(SECTION, README.read_text())
    return {title: table_rows(section(title, text)) for title in (WITH_SIDE, WITHOUT_SIDE)}


JAEGER_FIELDS = ("Service", "Operation", "Tags", "Min Duration", "Max Duration")


def parse_jaeger(alternative: str) -> JaegerSearch | OpenTrace:
    """``open `/trace/<id>` ...`` or ``Service `x`, Operation `y`, Tags `k=v`, Min Duration `2s```."""
    values = re.findall(r"`([^`]*)`", alternative)
    if len(values) == 1 and values[0].startswith("/trace/"):
        return OpenTrace(values[0].removeprefix("/trace/"))
    pairs = re.findall(r"(?:^|,\s*)(?:or\s+)?(" + "|".join(JAEGER_FIELDS) + r") `([^`]*)`", alternative)
    if len(pairs) != len(values):
        raise Unsupported(f"a Jaeger search field this test does not know: {alternative!r}")
    form = dict(pairs)
    if len(form) != len(pairs) or "Service" not in form:
        raise Unsupported(f"a Jaeger search needs one Service and each field once: {alternative!r}")
    return JaegerSearch(
        service=form["Service"],
        operation=form.get("Operation"),
        tags=tuple(parse_logfmt(form.get("Tags", ""))),
        min_duration_ns=go_duration(form["Min Duration"]) if "Min Duration" in form else None,
        max_duration_ns=go_duration(form["Max Duration"]) if "Max Duration" in form else None,
    )


def parse_logfmt(text: str) -> Iterator[tuple[str, str]]:
    for match in re.finditer(r'\s*([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)', text):
        value = match.group(2)
        yield match.group(1), value[1:-1] if value.startswith('"') else value
    if re.sub(r'\s*[^\s=]+=("(?:[^"\\]|\\.)*"|\S*)', "", text).strip():
        raise Unsupported(f"tags that are not key=value pairs: {text!r}")


_UNITS = {
    "ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
}


def go_duration(text: str) -> int:
    """A duration as Jaeger and TraceQL write them (``1.5s``, ``250ms``), in nanoseconds."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text.strip())
    if not match:
        raise Unsupported(f"not a duration: {text!r}")
    return round(float(match.group(1)) * _UNITS[match.group(2)])


# --- The dashboard's trace queries and links -----------------------------------------------------


@dataclass(frozen=True)
class DashboardQuery:
    """A TraceQL query or a Jaeger search the runs dashboard runs or links to (``$run_id`` unfilled)."""

    where: str  # the panel's title, and the link's text
    traceql: str | None = None
    jaeger: JaegerSearch | None = None


def dashboard_trace_queries(dashboard: dict[str, Any] | None = None) -> list[DashboardQuery]:
    """Every Tempo TraceQL target, and every link of a text panel to Jaeger's search or to Explore."""
    board = dashboard if dashboard is not None else json.loads(DASHBOARD.read_text())
    panels = [p for top in board.get("panels", []) for p in (top, *top.get("panels", []))]
    found = []
    for panel in panels:
        title = panel.get("title", "")
        for target in panel.get("targets", []):
            if target.get("queryType") == "traceql":
                found.append(DashboardQuery(title, traceql=target["query"]))
        content = panel.get("options", {}).get("content", "")
        for text, url in re.findall(r"\[([^\]]+)\]\(([^)\s]+)\)", content):
            found.extend(_linked_queries(f"{title}: {text}", url))
    return found


def _linked_queries(where: str, url: str) -> list[DashboardQuery]:
    parts = urllib.parse.urlsplit(url)
    params = urllib.parse.parse_qs(parts.query)
    if parts.path.endswith("/search"):  # Jaeger's search page: service, operation, tags (JSON), durations
        known = {"service", "operation", "tags", "minDuration", "maxDuration", "lookback", "limit"}
        if set(params) - known or "service" not in params:
            raise Unsupported(f"a Jaeger search link this test does not know: {url}")
        tags = json.loads(params["tags"][0]) if "tags" in params else {}
        search = JaegerSearch(
            service=params["service"][0],
            operation=params["operation"][0] if "operation" in params else None,
            tags=tuple((str(k), str(v)) for k, v in tags.items()),
            min_duration_ns=go_duration(params["minDuration"][0]) if "minDuration" in params else None,
            max_duration_ns=go_duration(params["maxDuration"][0]) if "maxDuration" in params else None,
        )
        return [DashboardQuery(where, jaeger=search)]
    if parts.path.endswith("/explore"):
        state = json.loads(params["left"][0]) if "left" in params else None
        if state is None or state.get("datasource") != "tempo":
            raise Unsupported(f"an Explore link this test does not know: {url}")
        queries = [q["query"] for q in state["queries"] if q.get("queryType") == "traceql"]
        if len(queries) != len(state["queries"]):
            raise Unsupported(f"an Explore query that is not TraceQL: {url}")
        return [DashboardQuery(where, traceql=query) for query in queries]
    raise Unsupported(f"a link this test does not know: {url}")


# --- TraceQL: the constructs the README uses ------------------------------------------------------


class Unsupported(AssertionError):
    """A construct the evaluators do not know: the test fails (it never skips a query)."""


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any  # str, int, float, ("status", name), ("kind", name), ("duration", ns)


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*")
      | (?P<duration>\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h)\b)
      | (?P<number>-?\d+(?:\.\d+)?)
      | (?P<op>&&|=~|!~|!=|>=|<=|=|<|>|\{|\})
      | (?P<word>[A-Za-z_][\w.:]*)
    )""",
    re.X,
)
_INTRINSICS = {"name", "status", "duration", "kind", "span:name", "span:status", "span:duration", "span:kind",
               "trace:id", "trace:rootName", "trace:duration"}
_STATUSES = {"error", "ok", "unset"}
_KINDS = {"server", "client", "producer", "consumer", "internal", "unspecified"}


def tokens(query: str) -> list[tuple[str, str]]:
    found, position = [], 0
    while position < len(query.rstrip()):
        match = _TOKEN.match(query, position)
        if not match or match.end() == position:
            raise Unsupported(f"TraceQL this test cannot read at {query[position:]!r} in {query!r}")
        kind = match.lastgroup
        assert kind is not None
        found.append((kind, match.group(kind)))
        position = match.end()
    return found


def parse_traceql(query: str) -> list[Condition]:
    """``{ cond && cond ... }``: one spanset filter, conditions joined by ``&&`` (nothing else)."""
    toks = tokens(query)
    if len(toks) < 2 or toks[0] != ("op", "{") or toks[-1] != ("op", "}"):
        raise Unsupported(f"not a single spanset filter {{ ... }}: {query!r}")
    body, conditions = toks[1:-1], []
    while body:
        if len(body) < 3:
            raise Unsupported(f"an incomplete condition in {query!r}")
        (kind, name), (op_kind, op), (value_kind, raw) = body[:3]
        if kind != "word" or op_kind != "op" or op in ("&&", "{", "}"):
            raise Unsupported(f"not a field, operator and value at {name!r} in {query!r}")
        conditions.append(Condition(field_name(name, query), op, literal(name, value_kind, raw, query)))
        body = body[3:]
        if body:
            if body[0] != ("op", "&&"):
                raise Unsupported(f"only && joins conditions here, not {body[0][1]!r}: {query!r}")
            body = body[1:]
            if not body:
                raise Unsupported(f"&& with nothing after it: {query!r}")
    return conditions


def field_name(name: str, query: str) -> str:
    if name in _INTRINSICS:
        return name.removeprefix("span:")
    if name.startswith(("span.", "resource.")) and len(name.split(".", 1)[1]) > 0:
        return name
    raise Unsupported(f"a field this test does not know: {name!r} in {query!r}")


def literal(name: str, kind: str, raw: str, query: str) -> Any:
    if kind == "string":
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    if kind == "duration":
        return ("duration", go_duration(raw))
    if kind == "number":
        return float(raw) if "." in raw else int(raw)
    if kind == "word" and name.endswith("status") and raw in _STATUSES:
        return ("status", raw)
    if kind == "word" and name.endswith("kind") and raw in _KINDS:
        return ("kind", raw)
    raise Unsupported(f"a value this test does not know: {raw!r} in {query!r}")


# --- The spans, as the backends see them ----------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """What Jaeger and Tempo see of one exported span."""

    name: str
    trace_id: str
    span_id: int
    parent_id: int | None
    service: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    event_attributes: tuple[dict[str, Any], ...]
    status: str
    kind: str
    start_ns: int
    end_ns: int

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    @classmethod
    def of(cls, span: ReadableSpan) -> Span:
        assert span.context is not None and span.start_time is not None and span.end_time is not None
        resource = dict(span.resource.attributes)
        return cls(
            name=span.name,
            trace_id=f"{span.context.trace_id:032x}",
            span_id=span.context.span_id,
            parent_id=span.parent.span_id if span.parent is not None else None,
            service=str(resource.get("service.name")),
            attributes=dict(span.attributes or {}),
            resource=resource,
            event_attributes=tuple(dict(event.attributes or {}) for event in span.events),
            status={StatusCode.ERROR: "error", StatusCode.OK: "ok"}.get(span.status.status_code, "unset"),
            kind={SpanKind.SERVER: "server", SpanKind.CLIENT: "client", SpanKind.PRODUCER: "producer",
                  SpanKind.CONSUMER: "consumer"}.get(span.kind, "internal"),
            start_ns=span.start_time,
            end_ns=span.end_time,
        )


def by_trace(spans: Iterable[Span]) -> dict[str, list[Span]]:
    traces: dict[str, list[Span]] = {}
    for span in spans:
        traces.setdefault(span.trace_id, []).append(span)
    return traces


def _compare(actual: Any, op: str, expected: Any) -> bool:
    if actual is None:  # the span lacks the field: only != matches (as TraceQL's nil would)
        return op in ("!=", "!~")
    if op in ("=~", "!~"):
        if not isinstance(expected, str) or not isinstance(actual, str):
            return False
        found = re.fullmatch(expected, actual) is not None  # TraceQL anchors regular expressions
        return found if op == "=~" else not found
    if isinstance(expected, str) != isinstance(actual, str) or isinstance(actual, bool):
        return op == "!="
    checks: dict[str, Callable[[Any, Any], bool]] = {
        "=": lambda a, b: a == b, "!=": lambda a, b: a != b, ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    }
    return checks[op](actual, expected)


def holds(condition: Condition, span: Span, trace: list[Span]) -> bool:
    value = condition.value
    tagged = isinstance(value, tuple)
    expected = value[1] if tagged else value
    actual: Any
    match condition.field:
        case "name" | "trace:id" | "trace:rootName" if tagged:
            raise Unsupported(f"{condition.field} compared with {value[0]}")
        case "name":
            actual = span.name
        case "trace:id":
            actual = span.trace_id
        case "trace:rootName":
            roots = [s.name for s in trace if s.parent_id is None]
            actual = roots[0] if len(roots) == 1 else None
        case "status" | "kind":
            if not tagged or value[0] != condition.field or condition.op not in ("=", "!="):
                raise Unsupported(f"{condition.field} compared with {value!r} by {condition.op}")
            actual = span.status if condition.field == "status" else span.kind
        case "duration" | "trace:duration":
            if not tagged or value[0] != "duration":
                raise Unsupported(f"{condition.field} compared with {value!r}")
            actual = (
                span.duration_ns
                if condition.field == "duration"
                else max(s.end_ns for s in trace) - min(s.start_ns for s in trace)
            )
        case _ if condition.field.startswith("span."):
            actual = span.attributes.get(condition.field.removeprefix("span."))
        case _ if condition.field.startswith("resource."):
            actual = span.resource.get(condition.field.removeprefix("resource."))
        case _:
            raise Unsupported(condition.field)
    if tagged and condition.field not in ("status", "kind", "duration", "trace:duration"):
        raise Unsupported(f"{condition.field} compared with {value!r}")
    return _compare(actual, condition.op, expected)


def run_traceql(conditions: list[Condition], spans: list[Span]) -> dict[str, list[Span]]:
    """Trace id -> the spans that matched, for every trace with at least one."""
    result = {}
    for trace_id, trace in by_trace(spans).items():
        matched = [s for s in trace if all(holds(c, s, trace) for c in conditions)]
        if matched:
            result[trace_id] = matched
    return result


def jaeger_tags(span: Span) -> list[tuple[str, str]]:
    """Span tags, process (resource) tags and log fields, as Jaeger's search compares them: as text."""

    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    pairs = [*span.attributes.items(), *span.resource.items()]
    pairs += [item for attributes in span.event_attributes for item in attributes.items()]
    return [(key, text(value)) for key, value in pairs]


def jaeger_span_matches(search: JaegerSearch, span: Span) -> bool:
    if span.service != search.service:
        return False
    if search.operation is not None and span.name != search.operation:
        return False
    if search.min_duration_ns is not None and span.duration_ns < search.min_duration_ns:
        return False
    if search.max_duration_ns is not None and span.duration_ns > search.max_duration_ns:
        return False
    tags = jaeger_tags(span)
    return all(tag in tags for tag in search.tags)


def run_jaeger(form: JaegerSearch | OpenTrace, spans: list[Span]) -> set[str]:
    """The trace ids Jaeger answers: one span matching the whole form, or the trace page's id."""
    if isinstance(form, OpenTrace):
        return {form.trace_id} & {s.trace_id for s in spans}
    return {s.trace_id for s in spans if jaeger_span_matches(form, s)}


# --- The runs -------------------------------------------------------------------------------------


class Prepare(BaseNode):  # type: ignore[misc]
    class Inputs(BaseModel):
        fail: str
        delay_s: str

    class Outputs(BaseModel):
        fail: str
        delay_s: str

    async def execute(self) -> BaseNode.Outputs:
        return self.Outputs(fail=self.inputs.fail, delay_s=self.inputs.delay_s)


class Work(BaseNode):  # type: ignore[misc]
    class Inputs(BaseModel):
        fail: str
        delay_s: str

    class Outputs(BaseModel):
        done: str

    async def execute(self) -> BaseNode.Outputs:
        if self.inputs.fail == "yes":
            raise RuntimeError("the work failed, as planned")
        burn_started = time.thread_time()
        while time.thread_time() - burn_started < BURN_S:
            pass
        await asyncio.sleep(float(self.inputs.delay_s))
        return self.Outputs(done="yes")


def graph_nodes(namespace: str) -> list[GraphNodeModel]:
    return [
        GraphNodeModel(node_name="Prepare", namespace=namespace, identifier="prepare",
                       inputs={"fail": "no", "delay_s": "0"}, next_nodes=[SLOW_NODE]),
        GraphNodeModel(
            node_name="Work", namespace=namespace, identifier=SLOW_NODE,
            inputs={"fail": "${{ prepare.outputs.fail }}", "delay_s": "${{ prepare.outputs.delay_s }}"},
        ),
    ]


@dataclass(frozen=True)
class Run:
    run_id: str
    trace_id: str  # as `exo-otel trace-id` prints it
    status: str


@dataclass(frozen=True)
class Runs:
    side: bool
    namespace: str
    slow: Run  # succeeds, its `work` node takes SLOW_S
    failed: Run  # fails at once in `work`
    spans: list[Span]

    def trace(self, run: Run) -> list[Span]:
        return [s for s in self.spans if s.trace_id == run.trace_id]

    def trace_of(self, span: Span) -> list[Span]:
        return [s for s in self.spans if s.trace_id == span.trace_id]

    def values(self, run: Run) -> dict[str, str]:
        return {
            "<run id>": run.run_id, "<trace id>": run.trace_id, "<graph>": GRAPH,
            "<namespace>": self.namespace, "<identifier>": SLOW_NODE, "<N>": str(N_SECONDS),
            "<S>": str(CPU_SECONDS),
            "<state manager>": SM_SERVICE, "<runtime>": APP_SERVICE, "<trigger>": APP_SERVICE,
        }


def fill(template: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        template = template.replace(placeholder, value)
    left = re.findall(r"<[a-z ]+>", template)
    assert not left, f"placeholders this test cannot fill: {left} in {template!r}"
    return template


SAMPLE_RUN_ID = "9d2c6f0e-3b1a-4c5d-8e7f-001122334455"
SAMPLE = {
    "<run id>": SAMPLE_RUN_ID, "<trace id>": "8e2c6f0e3b1a4c5d9d7f001122334455", "<graph>": GRAPH,
    "<namespace>": "ns", "<identifier>": SLOW_NODE, "<N>": "2", "<S>": "0.5", "<state manager>": SM_SERVICE,
    "<runtime>": APP_SERVICE, "<trigger>": APP_SERVICE,
}


def trace_id_command(run_id: str) -> str:
    """What `exo-otel trace-id <run id>` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["trace-id", run_id]) == 0
    return out.getvalue().strip()


def provider(exporter: InMemorySpanExporter, service: str) -> TracerProvider:
    tracer_provider = TracerProvider(resource=Resource.create({"service.name": service}))
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    return tracer_provider


async def _two_runs(side: bool) -> Runs:
    exporter = InMemorySpanExporter()
    sm_provider, app_provider = provider(exporter, SM_SERVICE), provider(exporter, APP_SERVICE)
    instrumentor = ExosphereInstrumentor()
    instrumentor.instrument(tracer_provider=app_provider, cpu_time=True)  # the CPU rows need it
    namespace = f"find-{uuid.uuid4().hex[:8]}"
    try:
        async with EmbeddedStateManager(
            server_side=side, expose_run_context=not side, tracer_provider=sm_provider
        ) as sm:
            runtime = Runtime(
                namespace=namespace, name="find-a-run-runtime", nodes=[Prepare, Work],
                state_manager_uri=sm.uri, key=sm.api_key, workers=4, poll_interval=POLL_INTERVAL,
            )
            task = runtime.start()
            assert task is not None
            try:
                await wait(lambda: task.done() or {"Prepare", "Work"} <= sm.registered_nodes(namespace), 20)
                assert not task.done(), task
                client = StateManager(namespace=namespace, state_manager_uri=sm.uri, key=sm.api_key)
                # No retry: the failed run fails at once (the default policy retries 3 times, 14 s).
                await client.upsert_graph(
                    GRAPH, graph_nodes(namespace), {}, retry_policy=RetryPolicyModel(max_retries=0)
                )
                slow = await client.trigger(GRAPH, inputs={"fail": "no", "delay_s": str(SLOW_S)})
                failed = await client.trigger(GRAPH, inputs={"fail": "yes", "delay_s": "0"})
                ids = [str(slow["run_id"]), str(failed["run_id"])]
                trace_ids = [trace_id_command(r) for r in ids]
                statuses = [await wait(lambda r=r: (s := sm.run_status(r)) not in (None, "PENDING") and s, 30)
                            for r in ids]
                assert [str(s) for s in statuses] == ["SUCCESS", "FAILED"], statuses
                expected = {"execute Prepare", "execute Work", "node prepare", f"node {SLOW_NODE}"}
                expected |= {f"settle {GRAPH}", f"run {GRAPH}"} if side else {f"trigger {GRAPH}"}

                def complete() -> bool:
                    names = by_trace(Span.of(s) for s in exporter.get_finished_spans())
                    traces = [names.get(trace_id, []) for trace_id in trace_ids]
                    return all(expected <= {s.name for s in trace} for trace in traces)

                await wait(complete, 30)
                await asyncio.sleep(0.2)  # anything still on its way (the trigger span under a side root)
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    finally:
        instrumentor.uninstrument()
        sm_provider.shutdown()
        app_provider.shutdown()
    spans = [Span.of(s) for s in exporter.get_finished_spans()]
    runs = [Run(r, t, str(s)) for r, t, s in zip(ids, trace_ids, statuses, strict=True)]
    return Runs(side, namespace, runs[0], runs[1], spans)


async def wait(predicate: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert time.monotonic() < deadline, f"not within {timeout} s"
        await asyncio.sleep(0.05)
    return result


@pytest.fixture(scope="module")
def with_side() -> Runs:
    return asyncio.run(_two_runs(side=True))


@pytest.fixture(scope="module")
def without_side() -> Runs:
    return asyncio.run(_two_runs(side=False))


# --- What each row promises ---------------------------------------------------------------------


@dataclass(frozen=True)
class Promise:
    """What a row's queries find: the runs, and (TraceQL) the spans it lists in each."""

    per_run: bool  # the query names one run: checked with each run filled in
    traces: Callable[[Runs, Run], set[str]]
    spans: Callable[[Runs, Run, list[Span]], bool] | None = None
    jaeger: bool = True  # False: the README says Jaeger's form cannot answer it


def _only(run: Callable[[Runs], Run]) -> Callable[[Runs, Run], set[str]]:
    return lambda runs, _target: {run(runs).trace_id}


def _settle_of(run: Callable[[Runs], Run]) -> Callable[[Runs, Run, list[Span]], bool]:
    def listed(runs: Runs, _target: Run, spans: list[Span]) -> bool:
        return [s.name for s in spans] == [f"settle {GRAPH}"] and spans[0].trace_id == run(runs).trace_id

    return listed


def _node_spans_of_the_run(runs: Runs, target: Run, spans: list[Span]) -> bool:
    nodes = [s for s in runs.trace(target) if s.name.startswith("node ")]
    slowest = max(spans, key=lambda s: s.duration_ns)
    # The slow run's slowest node is the one that slept; the failed run's list is complete too.
    return sorted(s.span_id for s in spans) == sorted(s.span_id for s in nodes) and (
        target != runs.slow or slowest.name == f"node {SLOW_NODE}"
    )


def _the_root_listed(runs: Runs, target: Run, spans: list[Span]) -> bool:
    # { trace:id } lists every span of the trace, { span.exosphere.run.id } those carrying it: the root too.
    return run_span_id(target.run_id) in {s.span_id for s in spans}


def _the_failed_node(runs: Runs, _target: Run, spans: list[Span]) -> bool:
    return [s.name for s in spans] == [f"node {SLOW_NODE}"] and spans[0].trace_id == runs.failed.trace_id


def _every_span_of_the_slow_run(runs: Runs, _target: Run, spans: list[Span]) -> bool:
    return sorted(s.span_id for s in spans) == sorted(s.span_id for s in runs.trace(runs.slow))


def _the_slow_node(runs: Runs, _target: Run, spans: list[Span]) -> bool:
    return [s.name for s in spans] == [f"node {SLOW_NODE}"] and spans[0].trace_id == runs.slow.trace_id


def _the_busy_execution(runs: Runs, _target: Run, spans: list[Span]) -> bool:
    return [s.name for s in spans] == ["execute Work"] and spans[0].trace_id == runs.slow.trace_id


_BUSY_EXECUTION = Promise(False, _only(lambda r: r.slow), _the_busy_execution, jaeger=False)
_BY_RUN_ID = Promise(True, lambda _runs, target: {target.trace_id}, _the_root_listed)
_SLOWEST_NODE = Promise(True, lambda _runs, target: {target.trace_id}, _node_spans_of_the_run)
_SLOW_NODE = Promise(False, _only(lambda r: r.slow), _the_slow_node)

PROMISES: dict[str, dict[str, Promise]] = {
    WITH_SIDE: {
        "a run, by its run id": _BY_RUN_ID,
        "the failed runs of a graph": Promise(
            False, _only(lambda r: r.failed), _settle_of(lambda r: r.failed)
        ),
        "the runs of a graph slower than N seconds": Promise(
            False, _only(lambda r: r.slow), _settle_of(lambda r: r.slow)
        ),
        "the runs of a graph that used more than S seconds of CPU": Promise(
            False, _only(lambda r: r.slow), _settle_of(lambda r: r.slow), jaeger=False
        ),
        "the runs where a node took longer than N seconds": _SLOW_NODE,
        "the node executions that used more than S seconds of CPU": _BUSY_EXECUTION,
        "the slowest node of a run": _SLOWEST_NODE,
    },
    WITHOUT_SIDE: {
        "a run, by its run id": _BY_RUN_ID,
        "the runs with a failed state (a failure that was retried counts too)": Promise(
            False, _only(lambda r: r.failed), _the_failed_node
        ),
        "the runs of a graph slower than N seconds": Promise(
            False, _only(lambda r: r.slow), _every_span_of_the_slow_run, jaeger=False
        ),
        "the runs where a node took longer than N seconds": _SLOW_NODE,
        "the node executions that used more than S seconds of CPU": _BUSY_EXECUTION,
        "the slowest node of a run": _SLOWEST_NODE,
    },
}


def _cases() -> list[tuple[str, str]]:
    return [(table, label) for table, rows in PROMISES.items() for label in rows]


def test_the_readme_tables_are_the_rows_this_test_checks() -> None:
    tables = readme_tables()
    assert {table: [row.label for row in rows] for table, rows in tables.items()} == {
        table: list(rows) for table, rows in PROMISES.items()
    }
    for table, rows in tables.items():
        for row in rows:
            assert row.traceql, f"{table}: {row.label!r} gives no TraceQL"
            # Filled in as a user would (a placeholder may hold a blank, a run id never does).
            for query in row.traceql:
                if query != "<trace id>":
                    parse_traceql(fill(query, SAMPLE))  # raises on a construct the evaluator does not know
            for alternative in row.jaeger:
                parse_jaeger(fill(alternative, SAMPLE))
            assert bool(row.jaeger) == PROMISES[table][row.label].jaeger, (table, row.label)


def test_the_evaluators_refuse_what_they_do_not_know() -> None:
    for query in (
        '{ name = "a" } | count() > 2', '{ name = "a" || name = "b" }', '{ span.x = "a" } && { }',
        '{ nestedSetParent < 0 }', '{ name = a }', '{ duration > 5 parsecs }', '{ name = "a" &&  }',
    ):
        with pytest.raises(Unsupported):
            parse_traceql(query)
    with pytest.raises(Unsupported):
        parse_jaeger("Service `x`, Lookback `1h`")
    with pytest.raises(Unsupported):
        parse_jaeger("Operation `settle g`")


def _runs(request: pytest.FixtureRequest, table: str) -> Runs:
    return request.getfixturevalue("with_side" if table == WITH_SIDE else "without_side")  # type: ignore[no-any-return]


def _row(table: str, label: str) -> Row:
    [row] = [row for row in readme_tables()[table] if row.label == label]
    return row


@pytest.mark.timeout(180)
def test_the_runs_have_the_shape_the_section_describes(with_side: Runs, without_side: Runs) -> None:
    for runs in (with_side, without_side):
        assert runs.slow.status == "SUCCESS" and runs.failed.status == "FAILED"
        for run in (runs.slow, runs.failed):
            trace = runs.trace(run)
            roots = [s for s in trace if s.parent_id is None]
            assert [s.span_id for s in roots] == [run_span_id(run.run_id)], [s.name for s in roots]
            if not runs.side:
                assert roots[0].name == f"trigger {GRAPH}"
                assert not any(s.name.startswith("settle ") for s in trace)
                continue
            root = roots[0]
            assert (root.name, root.kind, root.service) == (f"run {GRAPH}", "producer", SM_SERVICE)
            [settle] = [s for s in trace if s.name == f"settle {GRAPH}"]
            assert settle.parent_id == root.span_id and settle.start_ns == root.start_ns
            assert settle.end_ns >= max(s.end_ns for s in trace if s.name.startswith("node "))
            run_attributes = {"exosphere.namespace": runs.namespace, "exosphere.graph.name": GRAPH,
                              "exosphere.run.id": run.run_id}
            assert run_attributes.items() <= root.attributes.items()
            assert run_attributes.items() <= settle.attributes.items()
            assert settle.attributes["exosphere.run.status"] == run.status
            assert settle.attributes["exosphere.run.states.total"] == 2
            assert settle.status == ("error" if run.status == "FAILED" else "unset")
            for node in (s for s in trace if s.name.startswith("node ")):
                assert node.parent_id == root.span_id and "exosphere.run.id" not in node.attributes


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("table", "label"), _cases())
def test_every_name_and_value_a_query_uses_is_emitted(
    request: pytest.FixtureRequest, table: str, label: str
) -> None:
    runs, row = _runs(request, table), _row(table, label)
    for run in (runs.slow, runs.failed):
        values = runs.values(run)
        for query in row.traceql:
            if query == "<trace id>":
                continue
            for condition in parse_traceql(fill(query, values)):
                if condition.op in ("!=", "!~"):
                    continue  # a negation names nothing that must exist
                assert any(
                    holds(condition, span, runs.trace_of(span)) for span in runs.spans
                ), f"{table} / {label}: no emitted span has {condition} ({query})"
        for alternative in row.jaeger:
            form = parse_jaeger(fill(alternative, values))
            if isinstance(form, OpenTrace):
                continue
            of_service = [s for s in runs.spans if s.service == form.service]
            assert of_service, f"{label}: no span of service {form.service!r}"
            if form.operation is not None:
                assert any(s.name == form.operation for s in of_service), f"{label}: no {form.operation!r}"
            for tag in form.tags:
                assert any(tag in jaeger_tags(s) for s in of_service), f"{label}: no span has {tag}"
            if form.min_duration_ns is not None:
                lasting = [s for s in of_service if form.operation in (None, s.name)]
                assert any(s.duration_ns >= form.min_duration_ns for s in lasting), f"{label}: none that long"


@pytest.mark.timeout(180)
@pytest.mark.parametrize(("table", "label"), _cases())
def test_each_query_selects_what_its_row_promises(
    request: pytest.FixtureRequest, table: str, label: str
) -> None:
    runs, row, promise = _runs(request, table), _row(table, label), PROMISES[table][label]
    for target in (runs.slow, runs.failed) if promise.per_run else (runs.slow,):
        values = runs.values(target)
        expected = promise.traces(runs, target)
        for query in row.traceql:
            filled = fill(query, values)
            if query == "<trace id>":  # the trace id alone: Grafana opens that trace
                assert {filled} & {s.trace_id for s in runs.spans} == expected, (label, filled)
                continue
            selected = run_traceql(parse_traceql(filled), runs.spans)
            names = {trace_id: [s.name for s in spans] for trace_id, spans in selected.items()}
            assert set(selected) == expected, (label, filled, names)
            if promise.spans is not None:
                listed = [s for spans in selected.values() for s in spans]
                assert promise.spans(runs, target, listed), (label, filled, [s.name for s in listed])
        for alternative in row.jaeger:
            filled = fill(alternative, values)
            assert run_jaeger(parse_jaeger(filled), runs.spans) == expected, (label, filled)


def test_the_trace_id_command_gives_the_runs_trace(with_side: Runs, without_side: Runs) -> None:
    # `exo-otel trace-id <run id>` is how the README opens a run: its answer is the trace the run is in.
    for runs in (with_side, without_side):
        for run in (runs.slow, runs.failed):
            assert run.trace_id in {s.trace_id for s in runs.spans}
            assert any(s.attributes.get("exosphere.run.id") == run.run_id for s in runs.trace(run))


# What each of the dashboard's trace queries finds, by where it is (``$run_id`` filled with each run).
DASHBOARD_PROMISES: dict[str, Callable[[Runs, Run], set[str]]] = {
    "Traces of run $run_id (Tempo)": lambda _runs, target: {target.trace_id},
    "Failed runs (Tempo)": lambda runs, _target: {runs.failed.trace_id},
    "Open the run elsewhere: Search the run in Jaeger": lambda _runs, target: {target.trace_id},
    "Open the run elsewhere: Explore in Tempo": lambda _runs, target: {target.trace_id},
    "Open the run elsewhere: in Jaeger": lambda runs, _target: {runs.failed.trace_id},
    "Open the run elsewhere: in Tempo": lambda runs, _target: {runs.failed.trace_id},
}


def test_the_dashboards_trace_queries_find_what_they_say(with_side: Runs) -> None:
    """The runs dashboard (deploy/jaeger) against the same runs: the stack runs the state manager side,
    and its state manager's service name is the one these runs' state manager had."""
    queries = dashboard_trace_queries()
    assert sorted(q.where for q in queries) == sorted(DASHBOARD_PROMISES)
    runs = with_side
    for query in queries:
        for target in (runs.slow, runs.failed):
            expected = DASHBOARD_PROMISES[query.where](runs, target)
            if query.traceql is not None:
                conditions = parse_traceql(query.traceql.replace("$run_id", target.run_id))
                selected = run_traceql(conditions, runs.spans)
                assert set(selected) == expected, (query.where, query.traceql)
                if "status" in {c.field for c in conditions}:  # a run's status: its outcome span only
                    assert {s.name for spans in selected.values() for s in spans} == {f"settle {GRAPH}"}
            else:
                assert query.jaeger is not None
                tags = tuple((k, v.replace("$run_id", target.run_id)) for k, v in query.jaeger.tags)
                form = JaegerSearch(query.jaeger.service, query.jaeger.operation, tags,
                                    query.jaeger.min_duration_ns, query.jaeger.max_duration_ns)
                assert run_jaeger(form, runs.spans) == expected, (query.where, form)
