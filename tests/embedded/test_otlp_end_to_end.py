"""`exo-otel demo` exporting over OTLP (HTTP/protobuf and gRPC) to in-test receivers: what arrives on
the wire is one correctly shaped trace per run, and metrics whose exemplars point into those traces."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import pytest

from exo_otel import format_trace_id, run_span_id, state_span_id
from exo_otel.core.metrics import (
    NODE_DURATION,
    NODE_EXECUTIONS,
    NODE_QUEUE_WAIT,
    RUNTIME_INFLIGHT,
    RUNTIME_POLL_DURATION,
    TRIGGER_COUNT,
)
from exo_otel_demo.graph import GRAPH_NAME, ITEMS_PER_RUN, NAMESPACE
from exo_otel_demo.run import NOT_EXPORTED_NOTE
from helpers.demo_helpers import demo_env, parse_report, run_demo, triggered_run_ids
from helpers.otlp_receiver import MetricPoint, OtlpGrpcReceiver, OtlpHttpReceiver, Span
from helpers.trace_checks import integrity

RUNS = 2
KIND_INTERNAL, KIND_PRODUCER, KIND_CONSUMER = 1, 4, 5
STATUS_ERROR = 2
NODE_CLASSES = {
    "fetch": "FetchBatch",
    "split": "SplitBatch",
    "score": "ScoreItem",
    "merge": "MergeScores",
    "publish": "PublishReport",
}
# Per run: every node executes once, except score: four items, and item #2 once more after its failure.
EXECUTIONS = {"fetch": 1, "split": 1, "score": ITEMS_PER_RUN + 1, "merge": 1, "publish": 1}


Exported = tuple[list[str], list[Span], list[MetricPoint]]
# Keys a state's spans leave out (docs/trace-model.md, section "Attributes"): the trace says them.
SAID_BY_THE_TRACE = {
    "exosphere.run.id", "exosphere.namespace", "exosphere.graph.name", "exosphere.node.identifier",
    "messaging.destination.name", "messaging.message.id",
}


# Module scope: one demo run per protocol serves both tests.
@pytest.fixture(scope="module", params=["http/protobuf", "grpc"])
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """Run the demo against a receiver of the protocol; its run ids, and the spans and metric points."""
    receiver = OtlpHttpReceiver() if request.param == "http/protobuf" else OtlpGrpcReceiver()
    with receiver:
        env = demo_env(
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint, OTEL_EXPORTER_OTLP_PROTOCOL=request.param,
            EXO_OTEL_JAEGER_URL="http://jaeger.example:16686/", EXO_OTEL_GRAFANA_URL="https://grafana.example",
        )
        result = run_demo("--runs", str(RUNS), env=env, cwd=tmp_path_factory.mktemp("demo"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"spans: OTLP ({request.param}) to {receiver.endpoint}" in result.stdout
        run_ids = triggered_run_ids(result.stdout)
        assert len(run_ids) == RUNS
        _assert_links_where_the_spans_went(result.stdout, run_ids)
        assert f"flushing spans and metrics to {receiver.endpoint} ..." in result.stdout
        assert re.search(r"^flushed in [\d.]+ s$", result.stdout, flags=re.M), result.stdout
        # The demo shuts its providers down before exiting, which flushes both signals.
        receiver.wait_for(lambda rx: rx.spans() and rx.metric_points(), timeout=10)
        return run_ids, receiver.spans(), receiver.metric_points()


def _assert_links_where_the_spans_went(stdout: str, run_ids: list[str]) -> None:
    """The spans went to a collector: each run names its Jaeger page and its Grafana dashboard view."""
    report = parse_report(stdout)
    assert [run.fields["run id"] for run in report] == run_ids
    for run in report:
        trace_id = run.fields["trace id"]
        assert run.fields["jaeger"] == f"http://jaeger.example:16686/trace/{trace_id}"
        dashboard = f"https://grafana.example/d/exosphere-runs?var-run_id={run.fields['run id']}"
        assert run.fields["grafana"] == dashboard
    assert NOT_EXPORTED_NOTE not in stdout


def test_each_run_arrives_as_one_trace_rooted_at_its_trigger(exported: Exported) -> None:
    run_ids, spans, _points = exported
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for span in spans:
        by_trace[span.trace_id].append(span)
    for run_id in run_ids:
        _assert_run_tree(run_id, by_trace[format_trace_id(run_id)])


def _assert_run_tree(run_id: str, trace: list[Span]) -> None:
    assert trace, f"no spans for run {run_id}"
    references = integrity(trace)  # the trace is whole: no id twice, every parent and link target in it
    assert references.whole, references.problems
    assert {s.service_name for s in trace} == {"exo-otel-demo"}
    (root,) = [s for s in trace if s.parent_span_id is None]
    assert root.name == f"trigger {GRAPH_NAME}"
    assert root.kind == KIND_PRODUCER
    assert root.span_id == f"{run_span_id(run_id):016x}"
    assert root.attributes["exosphere.run.id"] == run_id
    assert root.attributes["exosphere.graph.name"] == GRAPH_NAME
    assert root.attributes["exosphere.namespace"] == NAMESPACE
    # The trace id is the run id, the span name the node, the parent the state: the root alone names
    # the run, and no state's span repeats what the trace says.
    for span in trace:
        if span is not root:
            assert not SAID_BY_THE_TRACE & set(span.attributes), (span.name, sorted(span.attributes))

    nodes = {s.span_id: s for s in trace if s.name.startswith("node ")}
    executes = [s for s in trace if s.name.startswith("execute ")]
    assert len(nodes) + len(executes) + 1 == len(trace), sorted(s.name for s in trace)
    for node in nodes.values():
        identifier = node.name.removeprefix("node ")
        assert node.attributes["exosphere.node.name"] == NODE_CLASSES[identifier]
        assert node.kind == KIND_INTERNAL
        assert node.parent_span_id == root.span_id  # flat: every state under the run's root
        assert node.span_id == f"{state_span_id(node.attributes['exosphere.state.id']):016x}"
    children: dict[str, list[Span]] = defaultdict(list)
    for execute in executes:
        assert execute.kind == KIND_CONSUMER
        assert execute.parent_span_id in nodes, f"{execute.name} is not under a node span"
        node = nodes[execute.parent_span_id]  # its state's: the node span's id is the state's
        identifier = node.name.removeprefix("node ")
        assert execute.name == f"execute {NODE_CLASSES[identifier]}"
        children[execute.parent_span_id].append(execute)

    executed = Counter(nodes[parent].name.removeprefix("node ") for parent in children)
    assert executed == EXECUTIONS
    assert all(len(attempts) == 1 for attempts in children.values())  # a retry is a new state
    # Node spans without an execute child are the fan-out copies of split's state, one per extra item:
    # each names the executed split state as the one it copies, and links to its span.
    copies = [n for span_id, n in nodes.items() if span_id not in children]
    assert len(copies) == ITEMS_PER_RUN - 1, sorted(n.name for n in copies)
    (split,) = [nodes[parent] for parent in children if nodes[parent].name == "node split"]
    split_state = split.attributes["exosphere.state.id"]
    for copy in copies:
        assert copy.name == "node split"
        assert copy.attributes["exosphere.node.name"] == NODE_CLASSES["split"]
        assert copy.attributes["exosphere.state.fanout_of"] == split_state
        assert copy.attributes["exosphere.state.id"] != split_state
        assert (copy.trace_id, split.span_id) in copy.links, copy.links
    assert len({c.attributes["exosphere.state.id"] for c in copies}) == len(copies)
    assert not any("exosphere.state.fanout_of" in s.attributes for s in trace if s not in copies)

    failed = [s for s in trace if s.status_code == STATUS_ERROR]
    assert sorted(s.name for s in failed) == ["execute ScoreItem", "node score"]
    assert {s.attributes["error.type"] for s in failed} == {"exo_otel_demo.graph.ScoringError"}
    assert all(s.attributes["exosphere.state.outcome"] == "errored" for s in failed)


def _last_points(points: list[MetricPoint], name: str) -> list[MetricPoint]:
    """The latest point of each attribute set (cumulative temporality: the last one has the totals)."""
    latest: dict[tuple[tuple[str, object], ...], MetricPoint] = {}
    for point in points:
        if point.name == name:
            latest[tuple(sorted(point.attributes.items()))] = point
    return list(latest.values())


def test_metrics_arrive_with_exemplars_pointing_into_run_traces(exported: Exported) -> None:
    run_ids, _spans, points = exported
    names = {p.name for p in points}
    expected = {TRIGGER_COUNT, NODE_DURATION, NODE_QUEUE_WAIT, NODE_EXECUTIONS, RUNTIME_INFLIGHT,
                RUNTIME_POLL_DURATION}
    assert expected <= names, expected - names
    assert all(p.service_name == "exo-otel-demo" for p in points if p.name in expected)

    assert sum(p.value or 0 for p in _last_points(points, TRIGGER_COUNT)) == RUNS
    outcomes: Counter[str] = Counter()
    for point in _last_points(points, NODE_EXECUTIONS):
        assert point.attributes["exosphere.namespace"] == NAMESPACE
        assert not any("id" in key.split(".")[-1] for key in point.attributes), point.attributes  # no ids
        outcomes[point.attributes["exosphere.state.outcome"]] += int(point.value or 0)
    assert outcomes == {"executed": RUNS * (sum(EXECUTIONS.values()) - 1), "errored": RUNS}

    run_traces = {format_trace_id(run_id) for run_id in run_ids}
    for name in (NODE_DURATION, NODE_QUEUE_WAIT):
        exemplars = {t for p in _last_points(points, name) for t in p.exemplar_trace_ids}
        assert exemplars, f"{name} carries no exemplar"
        assert exemplars <= run_traces, f"{name} exemplars outside the run traces: {exemplars - run_traces}"
    durations = _last_points(points, NODE_DURATION)
    assert sum(p.value or 0 for p in durations) == RUNS * sum(EXECUTIONS.values())
    errored = [p for p in durations if p.attributes.get("exosphere.state.outcome") == "errored"]
    assert errored and {t for p in errored for t in p.exemplar_trace_ids} <= run_traces
