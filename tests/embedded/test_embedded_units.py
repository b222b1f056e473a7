"""Pure parts of the embedded state manager: retry delays and template placeholders."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exo_otel_demo.embedded.models import RetryPolicy, RetryStrategy
from exo_otel_demo.embedded.retry import base_delay, compute_delay
from exo_otel_demo.embedded.templates import Placeholder, TemplateError, parse


@pytest.mark.parametrize(("strategy", "delays"), [
    (RetryStrategy.EXPONENTIAL, [100, 300, 900, 2700]),
    (RetryStrategy.LINEAR, [100, 200, 300, 400]),
    (RetryStrategy.FIXED, [100, 100, 100, 100]),
])
def test_plain_delays(strategy: RetryStrategy, delays: list[int]) -> None:
    policy = RetryPolicy(strategy=strategy, backoff_factor=100, exponent=3)
    assert [compute_delay(policy, n) for n in (1, 2, 3, 4)] == delays
    capped = RetryPolicy(strategy=strategy, backoff_factor=100, exponent=3, max_delay=250)
    assert [compute_delay(capped, n) for n in (1, 2, 3, 4)] == [min(d, 250) for d in delays]


@given(st.sampled_from(list(RetryStrategy)), st.integers(1, 10_000), st.integers(1, 4), st.integers(1, 6),
       st.integers(0, 2**32))
def test_jitter_stays_within_its_band(strategy: RetryStrategy, backoff: int, exponent: int, retry: int,
                                      seed: int) -> None:
    policy = RetryPolicy(strategy=strategy, backoff_factor=backoff, exponent=exponent)
    base = base_delay(policy, retry)
    delay = compute_delay(policy, retry, random.Random(seed))
    if strategy.value.endswith("FULL_JITTER"):
        assert 0 <= delay <= base
    elif strategy.value.endswith("EQUAL_JITTER"):
        assert base // 2 <= delay <= base
    else:
        assert delay == base


def test_retry_numbers_start_at_one() -> None:
    with pytest.raises(ValueError):
        compute_delay(RetryPolicy(), 0)


def test_templates_parse_and_render() -> None:
    template = parse("a ${{ x.outputs.y }} b ${{store.k}}${{ z . outputs . w }}")
    assert template.placeholders == (Placeholder("x", "y"), Placeholder("store", "k"), Placeholder("z", "w"))
    values = {("x", "y"): "1", ("store", "k"): "2", ("z", "w"): "3"}
    assert template.render(lambda p: values[(p.source, p.field)]) == "a 1 b 23"
    assert parse("plain").render(lambda p: "never") == "plain"


@pytest.mark.parametrize("text", ["${{ x.outputs.y", "${{ x.y }}", "${{ store }}", "${{ x.inputs.y }}"])
def test_bad_templates(text: str) -> None:
    with pytest.raises(TemplateError):
        parse(text)


def test_render_refuses_values_that_are_not_strings() -> None:
    with pytest.raises(TemplateError):
        parse("${{ x.outputs.n }}").render(lambda p: 3)  # type: ignore[arg-type, return-value]
