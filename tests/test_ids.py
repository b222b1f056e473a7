"""Properties of the run id to trace id mapping, and ratio sampling over run trace ids."""

from __future__ import annotations

import math
import random
import re
import uuid

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from exo_otel import format_trace_id, h64, run_id_for_trace, trace_id_for_run
from exo_otel.core.ids import RunIdGenerator, pinned_ids, run_span_id, state_span_id

MASK_128 = (1 << 128) - 1
# Exosphere issues UUID4 run ids; every RFC 4122 version maps the same way.
RFC_4122_UUIDS = st.integers(min_value=1, max_value=5).flatmap(lambda version: st.uuids(version=version))
VARIANT_BITS = st.integers(min_value=0, max_value=MASK_128).map(
    # Both byte 0 and byte 8 carry the RFC 4122 variant (10xxxxxx), so the id and its swap are UUIDs.
    lambda v: (v & ~(0xC0 << 120) & ~(0xC0 << 56)) | (0x80 << 120) | (0x80 << 56)
)


@given(RFC_4122_UUIDS)
def test_uuid_run_ids_round_trip(run_uuid: uuid.UUID) -> None:
    run_id = str(run_uuid)
    assert run_id_for_trace(trace_id_for_run(run_id)) == run_id
    assert run_id_for_trace(format_trace_id(run_id)) == run_id


@given(VARIANT_BITS)
def test_mapping_is_its_own_inverse_on_128_bit_ids(value: int) -> None:
    once = trace_id_for_run(str(uuid.UUID(int=value)))
    assert once != value or (value >> 120) == (value >> 56) & 0xFF
    assert trace_id_for_run(str(uuid.UUID(int=once))) == value
    assert run_id_for_trace(once) == str(uuid.UUID(int=value))


@given(RFC_4122_UUIDS)
def test_trace_id_is_the_uuid_with_bytes_0_and_8_swapped(run_uuid: uuid.UUID) -> None:
    raw = run_uuid.bytes
    expected = raw[8:9] + raw[1:8] + raw[0:1] + raw[9:]
    assert trace_id_for_run(str(run_uuid)) == int.from_bytes(expected, "big")


@given(st.text())
def test_every_run_id_maps_to_a_valid_trace_id(run_id: str) -> None:
    trace_id = trace_id_for_run(run_id)
    assert 0 < trace_id <= MASK_128
    assert trace_id == trace_id_for_run(run_id)


@given(st.text().filter(lambda s: not re.fullmatch(r"[0-9a-fA-F-]{36}", s)))
def test_non_uuid_run_ids_are_deterministic_and_do_not_map_back(run_id: str) -> None:
    assert trace_id_for_run(run_id) == trace_id_for_run(run_id)
    assert run_id_for_trace(trace_id_for_run(run_id)) is None


def test_zero_and_garbage_trace_ids_have_no_run() -> None:
    assert run_id_for_trace(0) is None
    assert run_id_for_trace("not hex") is None
    assert run_id_for_trace(1 << 128) is None


@given(st.uuids() | st.text())
def test_format_trace_id_is_32_lowercase_hex(run_id: uuid.UUID | str) -> None:
    assert re.fullmatch(r"[0-9a-f]{32}", format_trace_id(str(run_id)))


def test_h64_matches_its_definition() -> None:
    import hashlib

    digest = hashlib.sha256(b"exosphere.run:abc").digest()
    assert h64("exosphere.run", "abc") == int.from_bytes(digest[:8], "big")
    assert run_span_id("abc") == h64("exosphere.run", "abc")
    assert state_span_id("abc") == h64("exosphere.state", "abc")
    assert run_span_id("abc") != state_span_id("abc")


def test_id_generator_pins_only_inside_the_block() -> None:
    generator = RunIdGenerator()
    with pinned_ids(trace_id=7, span_id=9):
        assert generator.generate_trace_id() == 7
        assert generator.generate_span_id() == 9
    assert generator.generate_span_id() != 9
    with pinned_ids(span_id=11):
        assert generator.generate_span_id() == 11
        assert generator.generate_trace_id() != 0


def test_ratio_sampling_is_uniform_over_run_ids() -> None:
    runs = 5000
    # Seeded: the same 5,000 UUID4 run ids every time, so a 3 sigma bound cannot fail by chance.
    rng = random.Random(20261122)
    run_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(runs)]
    for ratio in (0.1, 0.5):
        sampler = TraceIdRatioBased(ratio)
        sampled = sum(
            sampler.should_sample(None, trace_id_for_run(run_id), "trigger g").decision
            is Decision.RECORD_AND_SAMPLE
            for run_id in run_ids
        )
        sigma = math.sqrt(runs * ratio * (1 - ratio))
        assert abs(sampled - runs * ratio) <= 3 * sigma, (ratio, sampled)
