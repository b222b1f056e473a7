"""Pure functions from Exosphere ids to trace and span ids, and the id generator that pins them."""

from __future__ import annotations

import contextvars
import functools
import hashlib
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import SpanContext, TraceFlags

RUN_KIND: Final = "exosphere.run"
STATE_KIND: Final = "exosphere.state"
OUTCOME_KIND: Final = "exosphere.run-outcome"
STATE_TRACE_PREFIX: Final = "exosphere.state-trace:"
_NON_UUID_PREFIX: Final = "exosphere.run-id:"
_MASK_128: Final = (1 << 128) - 1
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED: Final = TraceFlags(TraceFlags.DEFAULT)


def h64(kind: str, value: str) -> int:
    """First 8 bytes of SHA-256 over ``kind:value``, big-endian; 1 where that is 0 (0 is invalid)."""
    # surrogatepass: an id from a hostile payload (a lone surrogate) still hashes, never raises.
    digest = hashlib.sha256(f"{kind}:{value}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") or 1


def run_span_id(run_id: str) -> int:
    """Span id of a run's root: the state manager side's ``run`` span, else the client's ``trigger``."""
    return h64(RUN_KIND, run_id)


def trace_flags(sampled: bool) -> TraceFlags:
    """The W3C trace flags of a sampling decision."""
    return _SAMPLED if sampled else _NOT_SAMPLED


def remote_span_context(trace_id: int, span_id: int, sampled: bool) -> SpanContext:
    """A span another process emits (or emitted), as a parent or link target here."""
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace_flags(sampled))


def run_root_span_context(run_id: str, sampled: bool) -> SpanContext:
    """The run's root (``run`` with the state manager side, else ``trigger``), from the run id alone."""
    return remote_span_context(trace_id_for_run(run_id), run_span_id(run_id), sampled)


def outcome_span_id(run_id: str) -> int:
    """Span id of a run's outcome span (``settle``, state manager side)."""
    return h64(OUTCOME_KIND, run_id)


@functools.lru_cache(maxsize=4096)
def state_span_id(state_id: str) -> int:
    """Span id of a state's node span. Remembered for the latest states: a runtime derives a state's
    id for its own spans and again for the states after it (their links, or their parent)."""
    return h64(STATE_KIND, state_id)


def trace_id_for_state(state_id: str) -> int:
    """The trace id of a state placed in no run: the same for all its attempts, in any runtime.

    The first 16 bytes of SHA-256 over ``"exosphere.state-trace:" + state_id``, with the top two bits
    of byte 0 set and the high nibble of byte 6 cleared. Run trace ids never look like that: a UUID
    run id's byte 0 carries the variant (10), a hashed run id's byte 0 has its top bit clear, and a
    version 7 run id keeps its version nibble (7) in byte 6. So a state trace never collides with a
    run trace and `run_id_for_trace` answers None for it. The low 64 bits (what ratio samplers read)
    and the rightmost 7 bytes stay the hash's.
    """
    text = (STATE_TRACE_PREFIX + str(state_id)).encode("utf-8", "surrogatepass")
    digest = bytearray(hashlib.sha256(text).digest()[:16])
    digest[0] |= 0xC0
    digest[6] &= 0x0F
    return int.from_bytes(digest, "big")


def is_state_trace_id(trace_id: int) -> bool:
    """Whether a trace id has the shape of `trace_id_for_state` (never true of a run's trace id)."""
    raw = trace_id.to_bytes(16, "big")
    return raw[0] >> 6 == 0b11 and raw[6] >> 4 == 0


def _swap_random_byte(raw: bytes) -> bytes:
    """Swap byte 8 (the variant) with a random byte of the UUID: byte 0, or byte 7 for version 7.

    UUIDs fix the variant bits at the top of byte 8; OpenTelemetry's ratio sampler reads the low 64
    bits. Swapping moves the fixed bits out of the sampled half. A version 4 UUID is random in byte 0;
    a version 7 UUID starts with a timestamp, which would sample nearly every run, but is random in
    byte 7. The version nibble (byte 6) is untouched by either swap, so the swap is its own inverse.
    """
    b = bytearray(raw)
    other = 7 if b[6] >> 4 == 7 else 0
    b[other], b[8] = b[8], b[other]
    return bytes(b)


def trace_id_for_run(run_id: str) -> int:
    """The trace id of a run: its UUID bytes with byte 8 swapped with byte 0 (byte 7 for UUID v7).

    A run id that is not a UUID maps to the first 16 bytes of SHA-256 over
    ``"exosphere.run-id:" + run_id`` (never 0).
    """
    raw = _uuid_bytes(run_id)
    if raw is None:
        text = (_NON_UUID_PREFIX + str(run_id)).encode("utf-8", "surrogatepass")
        digest = bytearray(hashlib.sha256(text).digest()[:16])
        # The byte a swap would move to byte 8 of the UUID this maps back to (byte 0, or byte 7 when
        # the nibble in byte 6 reads as version 7): clearing its top bit makes that UUID's variant
        # non-RFC 4122, so run_id_for_trace tells a hashed id from a real run id every time.
        # Sampling reads the low 64 bits, which stay intact.
        digest[7 if digest[6] >> 4 == 7 else 0] &= 0x7F
        return int.from_bytes(digest, "big") or 1
    # _swap_random_byte on the integer: byte i (0 the most significant) is at bit 8 * (15 - i).
    value = int.from_bytes(raw, "big")
    shift = 64 if (value >> 76) & 0xF == 7 else 120  # byte 7 for version 7, else byte 0
    moved = ((value >> shift) ^ (value >> 56)) & 0xFF
    return (value ^ (moved << shift) ^ (moved << 56)) or 1


# Only the canonical 8-4-4-4-12 form (any case) with the RFC 4122 variant (10xx: the first digit
# of the fourth group is 8, 9, a or b) counts as a UUID run id: it is what Exosphere issues, and
# the only form run_id_for_trace can give back.
_CANONICAL_UUID: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
)


def _uuid_bytes(run_id: str) -> bytes | None:
    """The 16 bytes of a canonical RFC 4122 UUID run id; None for any other run id."""
    if not isinstance(run_id, str) or len(run_id) != 36 or _CANONICAL_UUID.fullmatch(run_id) is None:
        return None
    return bytes.fromhex(run_id.replace("-", ""))


def run_id_for_trace(trace_id: int | str) -> str | None:
    """The run id whose trace this is, or None when the trace id does not come from a UUID run id.

    Args:
        trace_id: the trace id as an integer or as 32 hex digits.
    """
    try:
        value = int(trace_id, 16) if isinstance(trace_id, str) else int(trace_id)
    except ValueError:
        return None
    if not 0 < value <= _MASK_128:
        return None
    candidate = uuid.UUID(bytes=_swap_random_byte(value.to_bytes(16, "big")))
    # Hashed (non-UUID) run ids and most foreign trace ids lack the RFC 4122 variant.
    if candidate.variant != uuid.RFC_4122:
        return None
    return str(candidate)


def format_trace_id(run_id: str) -> str:
    """The run's trace id as 32 lowercase hex digits, as Jaeger and Tempo show it."""
    return f"{trace_id_for_run(run_id):032x}"


_pinned: contextvars.ContextVar[tuple[int | None, int | None] | None] = contextvars.ContextVar(
    "exo_otel_pinned_ids", default=None
)


PinToken = contextvars.Token[tuple[int | None, int | None] | None]


def pin_ids(trace_id: int | None, span_id: int | None) -> PinToken:
    """Until `unpin_ids`, a `RunIdGenerator` hands out these ids instead of random ones."""
    return _pinned.set((trace_id, span_id))


def unpin_ids(token: PinToken) -> None:
    _pinned.reset(token)


@contextmanager
def pinned_ids(trace_id: int | None = None, span_id: int | None = None) -> Iterator[None]:
    """Within the block, a `RunIdGenerator` hands out these ids instead of random ones.

    Hold it around one ``start_span`` call only: every span started inside would get them.
    """
    token = pin_ids(trace_id, span_id)
    try:
        yield
    finally:
        unpin_ids(token)


class RunIdGenerator(IdGenerator):
    """An IdGenerator that returns ids pinned by `pinned_ids`, and otherwise its delegate's."""

    def __init__(self, delegate: IdGenerator | None = None) -> None:
        self.delegate: IdGenerator = delegate if delegate is not None else RandomIdGenerator()

    def generate_span_id(self) -> int:
        pinned = _pinned.get()
        if pinned is not None and pinned[1] is not None:
            return pinned[1]
        return self.delegate.generate_span_id()

    def generate_trace_id(self) -> int:
        pinned = _pinned.get()
        if pinned is not None and pinned[0] is not None:
            return pinned[0]
        return self.delegate.generate_trace_id()

    def is_trace_id_random(self) -> bool:
        # Run trace ids keep the UUID's random bytes at the right (W3C level 2); a pinned
        # non-UUID id is a hash, which is uniformly distributed too.
        return self.delegate.is_trace_id_random()


def is_uuid_run_id(run_id: str) -> bool:
    """Whether a run id is a UUID as Exosphere issues them (its trace id is then the UUID's bytes,
    rearranged, and `run_id_for_trace` gives it back); else its trace id is a hash of the text."""
    return run_id_for_trace(format_trace_id(run_id)) is not None
