"""Properties of the run id to trace id mapping, and ratio sampling over run trace ids."""

from __future__ import annotations

import hashlib
import math
import random
import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from exo_otel import format_trace_id, h64, run_id_for_trace, trace_id_for_run
from exo_otel.core.ids import RunIdGenerator, pinned_ids, run_span_id, state_span_id

MASK_128 = (1 << 128) - 1
# Exosphere issues UUID4 run ids; every RFC 4122 version maps the same way.
RFC_4122_UUIDS = st.integers(min_value=1, max_value=5).flatmap(lambda version: st.uuids(version=version))
VARIANT_MASK = (0xC0 << 120) | (0xC0 << 64) | (0xC0 << 56)
VARIANT_SET = (0x80 << 120) | (0x80 << 64) | (0x80 << 56)
VARIANT_BITS = st.integers(min_value=0, max_value=MASK_128).map(
    # Bytes 0, 7 and 8 carry the RFC 4122 variant (10xxxxxx), so the id and its swap are UUIDs
    # whatever the version nibble says (byte 7 is the one swapped for version 7).
    lambda v: (v & ~VARIANT_MASK) | VARIANT_SET
)
# RFC 9562 version 7: 48-bit Unix milliseconds, version, 12 random bits, variant, 62 random bits.
UUID7_TIMESTAMPS_MS = st.integers(min_value=0, max_value=(1 << 48) - 1)


def uuid7(timestamp_ms: int, rand_a: int, rand_b: int) -> uuid.UUID:
    """A version 7 UUID from its fields (Python 3.12 has no uuid.uuid7)."""
    value = (timestamp_ms << 80) | (0x7 << 76) | ((rand_a & 0xFFF) << 64)
    value |= (0b10 << 62) | (rand_b & ((1 << 62) - 1))
    return uuid.UUID(int=value)


UUID7S = st.builds(uuid7, UUID7_TIMESTAMPS_MS, st.integers(0, 0xFFF), st.integers(0, (1 << 62) - 1))


@given(RFC_4122_UUIDS)
def test_uuid_run_ids_round_trip(run_uuid: uuid.UUID) -> None:
    run_id = str(run_uuid)
    assert run_id_for_trace(trace_id_for_run(run_id)) == run_id
    assert run_id_for_trace(format_trace_id(run_id)) == run_id


@given(VARIANT_BITS)
def test_mapping_is_its_own_inverse_on_128_bit_ids(value: int) -> None:
    once = trace_id_for_run(str(uuid.UUID(int=value)))
    swapped_byte = 7 if (value >> 76) & 0xF == 7 else 0
    assert once != value or (value >> (120 - 8 * swapped_byte)) & 0xFF == (value >> 56) & 0xFF
    assert trace_id_for_run(str(uuid.UUID(int=once))) == value
    assert run_id_for_trace(once) == str(uuid.UUID(int=value))


@given(RFC_4122_UUIDS)
def test_trace_id_is_the_uuid_with_bytes_0_and_8_swapped(run_uuid: uuid.UUID) -> None:
    raw = run_uuid.bytes
    expected = raw[8:9] + raw[1:8] + raw[0:1] + raw[9:]
    assert trace_id_for_run(str(run_uuid)) == int.from_bytes(expected, "big")


@given(UUID7S)
def test_uuid7_run_ids_swap_bytes_7_and_8_and_round_trip(run_uuid: uuid.UUID) -> None:
    assert run_uuid.version == 7 and run_uuid.variant == uuid.RFC_4122
    raw = run_uuid.bytes
    expected = raw[:7] + raw[8:9] + raw[7:8] + raw[9:]
    trace_id = trace_id_for_run(str(run_uuid))
    assert trace_id == int.from_bytes(expected, "big")
    # The timestamp stays where it was (high bytes), the rightmost 7 bytes stay the UUID's random ones.
    assert trace_id.to_bytes(16, "big")[9:] == raw[9:]
    assert run_id_for_trace(trace_id) == str(run_uuid)
    assert run_id_for_trace(format_trace_id(str(run_uuid))) == str(run_uuid)


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


def test_hashed_run_ids_whose_trace_id_reads_as_version_7_do_not_map_back() -> None:
    # Byte 6 of a hashed id says "version 7" for about 1 id in 16: those take the byte 7 swap back.
    version_7_like = [
        run_id for run_id in (f"run-{i}" for i in range(2000)) if (trace_id_for_run(run_id) >> 76) & 0xF == 7
    ]
    assert len(version_7_like) > 50
    assert all(run_id_for_trace(trace_id_for_run(run_id)) is None for run_id in version_7_like)


def _sampled_share(trace_ids: list[int], ratio: float) -> int:
    sampler = TraceIdRatioBased(ratio)
    return sum(
        sampler.should_sample(None, trace_id, "trigger g").decision is Decision.RECORD_AND_SAMPLE
        for trace_id in trace_ids
    )


def test_ratio_sampling_is_uniform_over_uuid7_run_ids() -> None:
    runs = 5000
    # Seeded: 5,000 version 7 run ids minted over ten minutes of November 2026, as a server would.
    rng = random.Random(20261123)
    start_ms = 1_795_000_000_000
    run_ids = [
        str(uuid7(start_ms + rng.randrange(600_000), rng.getrandbits(12), rng.getrandbits(62)))
        for _ in range(runs)
    ]
    trace_ids = [trace_id_for_run(run_id) for run_id in run_ids]
    for ratio in (0.1, 0.5, 0.9):
        sampled = _sampled_share(trace_ids, ratio)
        sigma = math.sqrt(runs * ratio * (1 - ratio))
        assert abs(sampled - runs * ratio) <= 3 * sigma, (ratio, sampled)
    # What the version 4 swap (byte 0, a timestamp byte here) would do: sample every run at 10%.
    byte_0_swapped = [
        int.from_bytes(raw[8:9] + raw[1:8] + raw[0:1] + raw[9:], "big")
        for raw in (uuid.UUID(run_id).bytes for run_id in run_ids)
    ]
    assert _sampled_share(byte_0_swapped, 0.1) == runs


def _stdlib_rule(run_id: str) -> bool:
    """The rule by the standard library: a canonical RFC 4122 UUID string (any case)."""
    try:
        parsed = uuid.UUID(run_id)
    except ValueError:
        return False
    return len(run_id) == 36 and parsed.variant == uuid.RFC_4122 and str(parsed) == run_id.lower()


_TRICKY = [
    "{12345678-1234-4234-8234-123456789abc}",  # braces: uuid.UUID takes them, a run id is never that
    "urn:uuid:12345678-1234-4234-8234-123456789abc",
    "12345678123442348234123456789abc",  # no dashes
    "12345678-1234-4234-c234-123456789abc",  # Microsoft variant
    "12345678-1234-4234-7234-123456789abc",  # NCS variant
    "12345678-1234-4234-8234-123456789ABC",  # upper case: a UUID
    "12345678-1234-4234-8234-12345678٩abc",  # an Arabic-Indic digit, which int() reads
    "12345678-1234-4234-8234_123456789abc",
    " 2345678-1234-4234-8234-123456789abc",
]


def _expected_trace_id(run_id: str) -> int:
    """The mapping (docs/trace-model.md, section "Why the swap"), written out: a UUID's bytes with
    byte 8 swapped (with byte 7 for version 7, else byte 0); any other id hashed, the byte that
    would swap into 8 losing its top bit."""
    if _stdlib_rule(run_id):
        raw = bytearray(uuid.UUID(run_id).bytes)
        other = 7 if raw[6] >> 4 == 7 else 0
        raw[other], raw[8] = raw[8], raw[other]
        return int.from_bytes(raw, "big")
    text = f"exosphere.run-id:{run_id}".encode("utf-8", "surrogatepass")
    digest = bytearray(hashlib.sha256(text).digest()[:16])
    digest[7 if digest[6] >> 4 == 7 else 0] &= 0x7F
    return int.from_bytes(digest, "big") or 1


@pytest.mark.parametrize("run_id", _TRICKY)
def test_uuid_run_ids_are_recognised_as_the_standard_library_would(run_id: str) -> None:
    assert trace_id_for_run(run_id) == _expected_trace_id(run_id)


@given(st.uuids().map(str) | st.text(alphabet="0123456789abcdefABCDEF-{}:urn", min_size=30, max_size=40))
def test_fast_uuid_recognition_agrees_with_the_standard_library(run_id: str) -> None:
    assert trace_id_for_run(run_id) == _expected_trace_id(run_id)


def test_the_run_roots_context_is_derived_alike_for_both_decisions() -> None:
    from opentelemetry.trace import TraceFlags

    from exo_otel.core.ids import remote_span_context, run_root_span_context, run_span_id, trace_flags

    run_id = "6f1c2e5a-8b3d-4f7e-9a10-112233445566"
    for sampled in (True, False):
        root = run_root_span_context(run_id, sampled)
        assert (root.trace_id, root.span_id) == (trace_id_for_run(run_id), run_span_id(run_id))
        assert root.is_remote and root.trace_flags.sampled is sampled
        assert remote_span_context(1, 2, sampled).trace_flags == trace_flags(sampled)
    assert trace_flags(True) == TraceFlags(TraceFlags.SAMPLED) and trace_flags(False) == TraceFlags(0)
