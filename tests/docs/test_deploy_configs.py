"""Checks of the local stack under deploy/jaeger/: every config parses and agrees with the others,
Prometheus's own tools accept its config, the dashboard validates and every PromQL query it runs is
accepted by a real Prometheus."""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.deploy_checks import (
    COMPOSE_FILE,
    DASHBOARD_SCHEMA_FILE,
    DATASOURCES_FILE,
    EMPTY_PROMETHEUS_CONFIG,
    STACK_DIR,
    dashboard_queries,
    in_ci,
    instant_query,
    iter_panels,
    load_compose,
    load_dashboard,
    load_yaml,
    metric_names,
    prometheus_binary,
    render,
    rendered_dashboard_queries,
    start_prometheus,
    template_values,
    yaml_files,
)

JAEGER_MAX_VERSION = (2, 20, 0)

# Series exo_otel's metrics become after the collector's prometheus exporter (see trace-model.md).
EXO_OTEL_SERIES = {
    "exosphere_trigger_count_total",
    "exosphere_node_duration_seconds_bucket",
    "exosphere_node_duration_seconds_count",
    "exosphere_node_duration_seconds_sum",
    "exosphere_node_queue_wait_seconds_bucket",
    "exosphere_node_queue_wait_seconds_count",
    "exosphere_node_queue_wait_seconds_sum",
    "exosphere_node_executions_total",
    "exosphere_node_cpu_time_seconds_bucket",
    "exosphere_node_cpu_time_seconds_count",
    "exosphere_node_cpu_time_seconds_sum",
    "exosphere_run_cpu_time_seconds_bucket",
    "exosphere_run_cpu_time_seconds_count",
    "exosphere_run_cpu_time_seconds_sum",
    "exosphere_runtime_inflight",
    "exosphere_runtime_poll_duration_seconds_bucket",
    "exosphere_runtime_poll_duration_seconds_count",
    "exosphere_runtime_poll_duration_seconds_sum",
}
EXO_OTEL_LABELS = {
    "exosphere_namespace",
    "exosphere_graph_name",
    "exosphere_node_name",
    "exosphere_state_outcome",
}

# Dashboard queries that need series only the collector or Tempo's metrics-generator makes
# (traces_spanmetrics_*, otelcol_*, collector-added labels), as (panel title, expression). The demo's
# exo_otel metrics cannot give them data. Empty: every panel runs on exo_otel's own series.
COLLECTOR_OR_TEMPO_ONLY_QUERIES: list[tuple[str, str]] = []


def require_tool(name: str, found: bool) -> None:
    """Skip when a system tool is missing, but fail in CI, where install-test-deps.sh provides it."""
    if found:
        return
    message = f"{name} is not installed; scripts/install-test-deps.sh installs it"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


@pytest.fixture(scope="module")
def datasources() -> list[dict[str, Any]]:
    return list(load_yaml(DATASOURCES_FILE)["datasources"])


@pytest.fixture(scope="module")
def datasource_uids(datasources: list[dict[str, Any]]) -> set[str]:
    return {ds["uid"] for ds in datasources}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def mounted_config(service: dict[str, Any], container_path: str) -> Path:
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if target == container_path:
            return (COMPOSE_FILE.parent / source).resolve()
    raise AssertionError(f"nothing is mounted at {container_path}")


def service_config(service: dict[str, Any], flag_prefix: str) -> Path:
    """The host file behind a service's --config-style flag."""
    args = service.get("command", [])
    for arg in args:
        if arg.startswith(flag_prefix):
            return mounted_config(service, arg.split("=", 1)[1])
    raise AssertionError(f"no {flag_prefix} in {args}")


# --- YAML and compose -------------------------------------------------------------------------


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(STACK_DIR.parent)))
def test_yaml_parses(path: Path) -> None:
    assert load_yaml(path) is not None


def test_compose_lists_the_stack(services: dict[str, Any]) -> None:
    expected = {"otel-collector", "jaeger", "tempo", "prometheus", "grafana", "mongodb", "state-manager",
                "runtime", "trigger"}
    assert expected <= services.keys()


def test_every_service_has_image_or_build(services: dict[str, Any]) -> None:
    for name, service in services.items():
        assert "image" in service or "build" in service, name


def test_build_context_and_dockerfile_exist(services: dict[str, Any]) -> None:
    for name, service in services.items():
        build = service.get("build")
        if build is None:
            continue
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert (context / "pyproject.toml").is_file(), f"{name}: build context is not the repo root"
        assert (context / build["dockerfile"]).is_file(), name


def test_dockerfile_installs_repo_and_uses_launcher(services: dict[str, Any]) -> None:
    dockerfile = (STACK_DIR / "Dockerfile").read_text()
    assert re.search(r'pip install "?\.\[sdk\]', dockerfile)
    assert "opentelemetry-distro" in dockerfile
    for name in ("runtime", "trigger"):
        service = services[name]
        argv = service.get("entrypoint") or service["command"]
        assert argv[0] == "opentelemetry-instrument", name
        env = service["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4317"
        assert env["OTEL_PYTHON_ID_GENERATOR"] == "exosphere"
        assert env["OTEL_SERVICE_NAME"]


def test_every_host_mount_exists(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name}: {source} is missing"


def test_jaeger_is_pinned_at_most_2_20_0(services: dict[str, Any]) -> None:
    image, _, tag = services["jaeger"]["image"].rpartition(":")
    assert image == "jaegertracing/jaeger"
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"pin an exact version, not {tag!r}"
    version = tuple(int(part) for part in tag.split("."))
    assert (2, 0, 0) <= version <= JAEGER_MAX_VERSION


def test_images_are_pinned(services: dict[str, Any]) -> None:
    for name, service in services.items():
        image = service.get("image", "")
        if "build" in service or not image:
            continue
        tag = image.rpartition(":")[2]
        assert tag and tag != "latest" and "/" not in tag, f"{name}: pin {image}"


def test_prometheus_keeps_exemplars(services: dict[str, Any]) -> None:
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]


def test_prometheus_scrapes_the_collector_exporter(services: dict[str, Any]) -> None:
    collector = load_yaml(service_config(services["otel-collector"], "--config="))
    port = collector["exporters"]["prometheus"]["endpoint"].rsplit(":", 1)[1]
    prometheus = load_yaml(service_config(services["prometheus"], "--config.file="))
    jobs = prometheus["scrape_configs"]
    targets = {t for job in jobs for static in job["static_configs"] for t in static["targets"]}
    assert f"otel-collector:{port}" in targets


def test_collector_pipelines(services: dict[str, Any]) -> None:
    config = load_yaml(service_config(services["otel-collector"], "--config="))
    exporter = config["exporters"]["prometheus"]
    assert exporter["enable_open_metrics"] is True
    pipelines = config["service"]["pipelines"]
    for pipeline in pipelines.values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{component} is used but not defined"
    assert "prometheus" in pipelines["metrics"]["exporters"]
    trace_hosts = {config["exporters"][e]["endpoint"].split(":")[0] for e in pipelines["traces"]["exporters"]}
    assert trace_hosts == {"jaeger", "tempo"}
    assert trace_hosts <= services.keys()
    receivers = config["receivers"]["otlp"]["protocols"]
    assert receivers["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert receivers["http"]["endpoint"] == "0.0.0.0:4318"
    assert {"4317:4317", "4318:4318"} <= set(services["otel-collector"]["ports"])


def test_jaeger_config_wires_storage(services: dict[str, Any]) -> None:
    config = load_yaml(service_config(services["jaeger"], "--config="))
    backends = config["extensions"]["jaeger_storage"]["backends"]
    assert config["extensions"]["jaeger_query"]["storage"]["traces"] in backends
    assert config["exporters"]["jaeger_storage_exporter"]["trace_storage"] in backends
    assert config["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"] == "0.0.0.0:4317"


def test_tempo_receivers_bind_all_interfaces(services: dict[str, Any]) -> None:
    config = load_yaml(service_config(services["tempo"], "-config.file="))
    protocols = config["distributor"]["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:4317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:4318"
    assert config["storage"]["trace"]["backend"] == "local"


def test_compose_file_validates() -> None:
    """The Compose tool's own schema check: `docker compose config`, or docker-compose v1."""
    if shutil.which("docker") and subprocess.run(
        ["docker", "compose", "version"], capture_output=True, check=False
    ).returncode == 0:
        argv = ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "--quiet"]
    elif shutil.which("docker-compose"):
        argv = ["docker-compose", "-f", str(COMPOSE_FILE), "config", "--quiet"]
    else:
        require_tool("docker compose or docker-compose", False)
        return
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Grafana data sources ---------------------------------------------------------------------


def test_datasource_uids_are_fixed(datasource_uids: set[str]) -> None:
    assert {"prometheus", "tempo", "jaeger"} <= datasource_uids


def test_exemplars_link_to_traces(datasources: list[dict[str, Any]], datasource_uids: set[str]) -> None:
    prometheus = next(ds for ds in datasources if ds["type"] == "prometheus")
    destinations = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert destinations
    for destination in destinations:
        # The collector's prometheus exporter labels exemplars trace_id (Tempo's generator: traceID).
        assert destination["name"] == "trace_id"
        if "datasourceUid" in destination:
            assert destination["datasourceUid"] in datasource_uids
        else:
            assert destination["url"]
    assert "tempo" in {d.get("datasourceUid") for d in destinations}


def test_traces_link_to_metrics(datasources: list[dict[str, Any]], datasource_uids: set[str]) -> None:
    tempo = next(ds for ds in datasources if ds["uid"] == "tempo")
    traces_to_metrics = tempo["jsonData"]["tracesToMetrics"]
    assert traces_to_metrics["datasourceUid"] == "prometheus"
    for ds in datasources:
        link = ds.get("jsonData", {}).get("tracesToMetrics")
        if link:
            assert link["datasourceUid"] in datasource_uids
            for tag in link.get("tags", []):
                assert tag["value"] in EXO_OTEL_LABELS


def datasource_queries() -> list[tuple[str, str]]:
    """(data source name, PromQL) of every tracesToMetrics query, with $__tags filled in."""
    queries = []
    for ds in load_yaml(DATASOURCES_FILE)["datasources"]:
        for query in ds.get("jsonData", {}).get("tracesToMetrics", {}).get("queries", []):
            queries.append((ds["name"], render(query["query"], template_values())))
    return queries


# --- Dashboard --------------------------------------------------------------------------------


def test_dashboard_validates_against_schema(dashboard: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(DASHBOARD_SCHEMA_FILE.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(dashboard), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert dashboard["title"] == "Exosphere runs"
    ids = [panel["id"] for panel in iter_panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_dashboard_datasources_exist(dashboard: dict[str, Any], datasource_uids: set[str]) -> None:
    refs = []
    for panel in iter_panels(dashboard):
        refs.append(panel.get("datasource"))
        refs.extend(target.get("datasource") for target in panel.get("targets", []))
    refs.extend(v.get("datasource") for v in dashboard["templating"]["list"])
    for ref in filter(None, refs):
        assert ref["uid"] in datasource_uids, ref


def test_dashboard_covers_every_metric(dashboard: dict[str, Any]) -> None:
    text = " ".join(expr for _, expr in dashboard_queries(dashboard))
    for prefix in ("exosphere_trigger_count_total", "exosphere_node_duration_seconds_bucket",
                   "exosphere_node_queue_wait_seconds_bucket", "exosphere_node_executions_total",
                   "exosphere_runtime_inflight", "exosphere_runtime_poll_duration_seconds_bucket"):
        assert prefix in text
    assert 'exosphere_state_outcome="errored"' in text
    assert 'exosphere_state_outcome="pruned"' in text


def test_latency_and_run_cost_panels_show_exemplars(dashboard: dict[str, Any]) -> None:
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            histograms = ("exosphere_node_duration_seconds_bucket", "exosphere_run_cpu_time_seconds_bucket")
            if any(name in expr for name in histograms):
                assert target.get("exemplar") is True, panel["title"]


def test_a_run_is_found_by_its_run_id(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["run_id"]["type"] == "textbox"
    traceql = [
        target["query"]
        for panel in iter_panels(dashboard)
        for target in panel.get("targets", [])
        if target.get("queryType") == "traceql"
    ]
    assert '{ span.exosphere.run.id = "$run_id" }' in traceql


def _service_names(services: dict[str, Any]) -> dict[str, str]:
    """Compose service -> its OTEL_SERVICE_NAME, for the services that have one."""
    names = {}
    for name, service in services.items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment if "=" in item)
        if "OTEL_SERVICE_NAME" in environment:
            names[name] = str(environment["OTEL_SERVICE_NAME"])
    return names


def test_trace_links_name_the_spans_and_attributes_the_run_has(
    dashboard: dict[str, Any], services: dict[str, Any]
) -> None:
    """Every TraceQL query and Jaeger search of the dashboard names spans the stack emits (the state
    manager side is loaded: root `run {graph}`, outcome `settle {graph}`), and attributes of the span
    it must match; a query on a run's status names the outcome span, never the root. (What they
    select is checked against real runs by tests/docs/test_find_a_run.py.)"""
    from test_find_a_run import dashboard_trace_queries, parse_traceql

    from exo_otel.core import attributes
    from exo_otel.server import spans
    from exo_otel.server.context import outcome_name, root_name

    graph = "score-batch"
    names = {"run": root_name(graph), "settle": outcome_name(graph), "node": "node fetch",
             "execute": "execute FetchBatch", "trigger": f"trigger {graph}"}
    known = {v for m in (attributes, spans) for v in vars(m).values() if isinstance(v, str)}
    # What the run's root and outcome carry: a Jaeger search of the state manager matches those.
    run_keys = {attributes.NAMESPACE, attributes.GRAPH_NAME, attributes.RUN_ID, attributes.RUN_STATUS}
    state_manager = _service_names(services)["state-manager"]
    queries = dashboard_trace_queries(dashboard)
    assert {q.traceql is not None for q in queries} == {True, False}  # both kinds are there
    for query in queries:
        if query.jaeger is not None:
            assert query.jaeger.service == state_manager, query  # where run and settle come from
            assert query.jaeger.operation in (None, names["run"], names["settle"]), query
            assert {key for key, _ in query.jaeger.tags} <= run_keys, query
            continue
        assert query.traceql is not None
        conditions = parse_traceql(query.traceql.replace("$run_id", "9d2c6f0e-3b1a-4c5d-8e7f-001122334455"))
        matched = set(names)
        for condition in conditions:
            if condition.field == "name":
                test = re.fullmatch if condition.op == "=~" else str.__eq__
                matched = {kind for kind in matched if test(condition.value, names[kind])}
                assert matched, query  # the name matches a span the stack emits
            elif condition.field.startswith("span."):
                key = condition.field.removeprefix("span.")
                assert key in known or key.startswith(attributes.RUN_STATES_PREFIX), query
        # A run's status is on its outcome span (the root is emitted before the run has one): a query
        # on the span status must pick the outcome by name; one on exosphere.run.status may not exclude it.
        fields = {c.field for c in conditions}
        if "status" in fields:
            assert matched == {"settle"}, query
        if f"span.{attributes.RUN_STATUS}" in fields:
            assert "settle" in matched, query


def test_queries_use_only_exo_otel_series() -> None:
    for title, expr in dashboard_queries():
        if (title, expr) in COLLECTOR_OR_TEMPO_ONLY_QUERIES:
            continue
        unknown = metric_names(expr) - EXO_OTEL_SERIES
        assert not unknown, f"{title}: {sorted(unknown)} are not exo_otel series"
        labels = set(re.findall(r"\b(exosphere_[a-z_]+)\s*(?:=~|!~|!=|=)", expr))
        assert labels <= EXO_OTEL_LABELS, f"{title}: {sorted(labels - EXO_OTEL_LABELS)}"
    for _, expr in datasource_queries():
        assert metric_names(expr) <= EXO_OTEL_SERIES, expr


def test_every_query_has_its_variables_defined() -> None:
    for title, expr in rendered_dashboard_queries() + datasource_queries():
        assert "$" not in expr, f"{title}: undefined variable in {expr}"


# --- Tools that run here: promtool and a real Prometheus --------------------------------------


def test_promtool_accepts_prometheus_config(services: dict[str, Any]) -> None:
    promtool = shutil.which("promtool")
    require_tool("promtool", promtool is not None)
    assert promtool is not None
    config = service_config(services["prometheus"], "--config.file=")
    result = subprocess.run(
        [promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    require_tool("prometheus", prometheus_binary() is not None)
    url, stop = start_prometheus(EMPTY_PROMETHEUS_CONFIG, tmp_path_factory.mktemp("prometheus"))
    try:
        yield url
    finally:
        stop()


ALL_QUERIES = rendered_dashboard_queries() + datasource_queries()


QUERY_IDS = [f"{i}-{title}" for i, (title, _) in enumerate(ALL_QUERIES)]


@pytest.mark.parametrize(("title", "expr"), ALL_QUERIES, ids=QUERY_IDS)
def test_promql_parses(prometheus_url: str, title: str, expr: str) -> None:
    answer = instant_query(prometheus_url, expr)
    assert answer["status"] == "success", f"{title}: {answer.get('errorType')}: {answer.get('error')}"


def test_prometheus_rejects_a_bad_query(prometheus_url: str) -> None:
    """The parse check above can fail: a broken expression comes back as bad_data."""
    answer = instant_query(prometheus_url, "sum by (le (rate(exosphere_node_duration_seconds_bucket[1m]))")
    assert answer["status"] == "error"
    assert answer["errorType"] == "bad_data"


# --- The example runtime and trigger, against the real SDK -------------------------------------


def load_example(name: str) -> Any:
    example_dir = STACK_DIR / "example"
    if str(example_dir) not in sys.path:
        sys.path.insert(0, str(example_dir))
    spec = importlib.util.spec_from_file_location(f"exo_otel_example_{name}", example_dir / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_nodes_pass_sdk_validation() -> None:
    exospherehost = pytest.importorskip("exospherehost")
    runtime = load_example("runtime")
    # The constructor validates node classes (string-only fields etc.); it does not connect.
    exospherehost.Runtime(
        namespace="test", name="test", nodes=runtime.NODES, state_manager_uri="http://127.0.0.1:9", key="k"
    )


def test_example_graph_is_consistent() -> None:
    pytest.importorskip("exospherehost")
    runtime = load_example("runtime")
    graph = load_example("demo_graph")
    nodes = graph.graph_nodes()
    identifiers = {node.identifier for node in nodes}
    assert {node.node_name for node in nodes} == {cls.__name__ for cls in runtime.NODES}
    for node in nodes:
        assert set(node.next_nodes or []) <= identifiers
        for value in node.inputs.values():
            for source, field in re.findall(r"\$\{\{\s*(\w+)\.outputs\.(\w+)\s*\}\}", value):
                producer = next(n for n in nodes if n.identifier == source)
                outputs = next(c for c in runtime.NODES if c.__name__ == producer.node_name).Outputs
                assert field in outputs.model_fields, f"{node.identifier}: {source}.{field}"
    assert any(node.unites is not None and node.unites.identifier in identifiers for node in nodes)
    _assert_unites_above_the_fan_out(runtime, nodes)


def _assert_unites_above_the_fan_out(runtime: Any, nodes: list[Any]) -> None:
    """A unites node names a strict ancestor of the fan-out it waits for, never the fan-out node itself.

    A fan-out copies the fanned-out state once per extra output, so the branches share no state of that
    node: uniting it would run the unites node once per item instead of once per run.
    """
    by_id = {node.identifier: node for node in nodes}
    parents: dict[str, set[str]] = {identifier: set() for identifier in by_id}
    for node in nodes:
        for child in node.next_nodes or []:
            parents[child].add(node.identifier)

    def ancestors(identifier: str) -> set[str]:
        found: set[str] = set()
        todo = list(parents[identifier])
        while todo:
            if (current := todo.pop()) not in found:
                found.add(current)
                todo.extend(parents[current])
        return found

    classes = {cls.__name__: cls for cls in runtime.NODES}
    fan_outs = {
        identifier
        for identifier, node in by_id.items()
        if "list" in str(inspect.signature(classes[node.node_name].execute).return_annotation)
    }
    assert fan_outs, "the example graph has no fan-out node"
    uniting = [node for node in nodes if node.unites is not None]
    assert uniting, "the example graph has no unites node"
    for node in uniting:
        united = node.unites.identifier
        assert united not in fan_outs, f"{node.identifier} unites the fan-out node {united}"
        upstream = ancestors(node.identifier)
        fanned = {f for f in fan_outs if f in upstream}
        assert fanned, f"{node.identifier} waits for no fan-out"
        for fan_out in fanned:
            assert united in ancestors(fan_out), f"{node.identifier} unites {united}, not above {fan_out}"


def test_trigger_parses_arguments() -> None:
    pytest.importorskip("exospherehost")
    trigger = load_example("trigger")
    assert trigger.parse_args(["--runs", "3"]).runs == 3


def test_yaml_helper_rejects_broken_yaml(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(yaml.YAMLError):
        load_yaml(broken)
