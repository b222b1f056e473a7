"""What core owns that the SDK side and the state manager side must agree on: ids derived from run and
state ids, the run root's span context and flags, attribute values (tests/test_ids.py has the mapping's
properties, tests/test_semconv.py and tests/test_docs.py the names against the conventions and docs)."""

from __future__ import annotations

import hashlib

from opentelemetry import baggage, trace

from exo_otel.core import attributes as attr
from exo_otel.core.ids import (
    h64,
    outcome_span_id,
    run_root_span_context,
    run_span_id,
    state_span_id,
    trace_id_for_run,
)
from exo_otel.sdk.state_context import RunInfo, carried_context, run_from_payload, run_root_context
from exo_otel.server.context import RunContext

RUN_ID = "9d2c6f0e-3b1a-4c5d-8e7f-001122334455"


def _h64(text: bytes) -> int:
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


def test_the_outcome_span_id_is_h64_of_its_own_kind_and_differs_from_the_roots() -> None:
    assert outcome_span_id(RUN_ID) == _h64(f"exosphere.run-outcome:{RUN_ID}".encode())
    assert len({outcome_span_id(RUN_ID), run_span_id(RUN_ID), state_span_id(RUN_ID)}) == 3


def test_a_hostile_id_with_a_lone_surrogate_still_hashes_as_its_surrogatepass_bytes() -> None:
    hostile = "state-\ud800"
    assert state_span_id(hostile) == _h64("exosphere.state:state-\ud800".encode("utf-8", "surrogatepass"))
    assert h64("exosphere.run", hostile) == run_span_id(hostile)
    assert 0 < trace_id_for_run(hostile) < 1 << 128


def test_both_sides_derive_the_same_run_root_for_both_sampling_decisions() -> None:
    for sampled in (True, False):
        server = RunContext(RUN_ID, "ns", "g", 1, sampled).root_span_context()
        runtime = run_root_context(RunInfo(RUN_ID, "g"), sampled)
        core = run_root_span_context(RUN_ID, sampled)
        assert server == runtime == core
        assert (core.trace_id, core.span_id) == (trace_id_for_run(RUN_ID), run_span_id(RUN_ID))
        assert core.is_remote
        assert core.trace_flags.sampled is sampled


def test_the_carrier_the_server_writes_is_the_root_the_runtime_extracts() -> None:
    for sampled in (True, False):
        run = RunContext(RUN_ID, "ns", "g", 1, sampled, baggage={"tenant": "acme"})
        carrier = run.carrier()
        state = {"state_id": "s", "run_id": RUN_ID, "graph_name": "g", **carrier, "node_spans": "server"}
        info = run_from_payload(state)
        assert info is not None and info.node_spans_by_server
        extracted = carried_context(info)
        assert extracted is not None
        root = trace.get_current_span(extracted).get_span_context()
        assert (root.trace_id, root.span_id) == (trace_id_for_run(RUN_ID), run_span_id(RUN_ID))
        assert root.trace_flags.sampled is sampled
        assert baggage.get_all(extracted) == {"tenant": "acme"}


def test_a_carrier_naming_another_trace_is_not_taken_for_the_run() -> None:
    other = RunContext("0f2c6f0e-3b1a-4c5d-8e7f-001122334455", "ns", "g", 1, True).carrier()
    info = run_from_payload({"state_id": "s", "run_id": RUN_ID, **other})
    assert info is not None and carried_context(info) is None


def test_the_messaging_attributes_of_the_two_sides_of_the_queue() -> None:
    assert attr.trigger_messaging("greet") == {
        "messaging.system": "exosphere",
        "messaging.operation.type": "send",
        "messaging.operation.name": "trigger",
        "messaging.destination.name": "greet",
    }
    assert attr.execute_messaging() == {
        "messaging.system": "exosphere",
        "messaging.operation.type": "process",
        "messaging.operation.name": "execute",
    }
    assert attr.execute_messaging() is not attr.execute_messaging()  # callers may extend their copy


def test_outcome_values_and_baggage_keys_are_the_documented_ones() -> None:
    outcomes = (attr.OUTCOME_EXECUTED, attr.OUTCOME_ERRORED, attr.OUTCOME_PRUNED, attr.OUTCOME_REQUEUED,
                attr.OUTCOME_INTERRUPTED)
    assert outcomes == ("executed", "errored", "pruned", "requeued", "interrupted")
    assert attr.BAGGAGE_KEYS == (
        "exosphere.run.id", "exosphere.namespace", "exosphere.graph.name", "exosphere.node.identifier",
        "exosphere.state.id",
    )
    assert attr.ERROR_TYPE == "error.type" and attr.ERROR_TYPE_OTHER == "_OTHER"
    assert attr.SCHEMA_URL == "https://opentelemetry.io/schemas/1.44.0"
