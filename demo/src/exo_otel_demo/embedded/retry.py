"""Delays of a retry policy, in milliseconds."""

from __future__ import annotations

import random

from exo_otel_demo.embedded.models import RetryPolicy


def base_delay(policy: RetryPolicy, retry: int) -> int:
    """The delay before retry number ``retry`` (1 for the first) without jitter or cap."""
    if retry < 1:
        raise ValueError(f"retries are numbered from 1, got {retry}")
    family = policy.strategy.value.split("_", 1)[0]
    if family == "EXPONENTIAL":
        return int(policy.backoff_factor * policy.exponent ** (retry - 1))
    if family == "LINEAR":
        return policy.backoff_factor * retry
    return policy.backoff_factor


def compute_delay(policy: RetryPolicy, retry: int, rng: random.Random | None = None) -> int:
    """The delay before retry number ``retry``: the base delay, jittered if the strategy says so,
    then capped by ``max_delay``.

    Full jitter draws uniformly from [0, base]; equal jitter keeps half the base and draws the
    other half uniformly.
    """
    base = base_delay(policy, retry)
    draw = (rng or random).uniform
    if policy.strategy.value.endswith("_FULL_JITTER"):
        delay = int(draw(0, base))
    elif policy.strategy.value.endswith("_EQUAL_JITTER"):
        delay = int(base / 2 + draw(0, base / 2))
    else:
        delay = base
    if policy.max_delay is not None:
        delay = min(delay, policy.max_delay)
    return delay


