"""The one bounded cache (`exo_otel.core.lru.LruCache`) and the caches built on it."""

from __future__ import annotations

import pytest
from opentelemetry.trace import SpanContext

from exo_otel.core.lru import LruCache
from exo_otel.sdk.placement import PlacementMemory
from exo_otel.sdk.run_index import GraphNodes, RunIndex
from exo_otel.sdk.state_context import RunInfo


def test_least_recently_used_is_forgotten_first() -> None:
    evicted: list[tuple[str, int]] = []
    cache: LruCache[str, int] = LruCache(3, on_evict=lambda key, value: evicted.append((key, value)))
    for key, value in (("a", 1), ("b", 2), ("c", 3)):
        cache.put(key, value)
    assert cache.get("a") == 1  # "a" is now the most recently used
    cache.put("d", 4)
    assert evicted == [("b", 2)]
    assert list(cache) == ["c", "a", "d"]
    assert cache.peek("c") == 3
    cache.put("e", 5)  # peek did not make "c" recent
    assert evicted[-1] == ("c", 3)
    assert len(cache) == 3 and "c" not in cache and "e" in cache


def test_put_of_a_kept_key_replaces_it_and_makes_it_recent() -> None:
    cache: LruCache[str, int] = LruCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    cache.put("c", 3)
    assert cache.snapshot() == [("a", 10), ("c", 3)]
    assert cache.pop("a") == 10 and cache.pop("a") is None
    assert cache.pop("c") == 3
    assert len(cache) == 0 and cache.get("c") is None


def test_bound_holds_over_many_puts() -> None:
    cache: LruCache[int, int] = LruCache(100)
    for key in range(10_000):
        cache.put(key, key * 2)
        if key % 7 == 0:
            assert cache.get(key // 2) in (None, (key // 2) * 2)  # a read never grows it
    assert len(cache) == 100
    assert all(cache.peek(key) == key * 2 for key in cache)


def test_a_bound_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        LruCache(0)


def test_placement_memory_keeps_the_latest_states() -> None:
    memory = PlacementMemory(max_states=2)
    contexts = [SpanContext(1, n, is_remote=True) for n in (1, 2, 3)]
    for state_id, span in zip(("s1", "s2", "s3"), contexts, strict=True):
        memory.remember(state_id, None, span)
    assert memory.get("s1") is None
    placed = memory.get("s3")
    assert placed is not None and placed.context == contexts[2]


def test_run_index_marks_a_run_stale_when_one_of_its_states_is_forgotten() -> None:
    index = RunIndex(max_states=3, max_runs=4)
    index.index_graph("r1", GraphNodes("g", ["a", "b"], {}, {}), 1.0)
    index.index_graph("r2", GraphNodes("g", ["c", "d"], {}, {}), 2.0)
    r1, r2 = index.runs.peek("r1"), index.runs.peek("r2")
    assert r1 is not None and r2 is not None
    assert r1.indexed_count == -1 and r1.complete_at == float("-inf")  # "a" was forgotten
    assert r2.indexed_count == 2 and r2.complete_at == 2.0
    assert index.known("a") is None
    assert index.known("d") == RunInfo("r2", "g", None)


def test_oldest_is_the_least_recently_used_untouched() -> None:
    cache: LruCache[str, int] = LruCache(3)
    assert cache.oldest() is None
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.oldest() == ("a", 1) and cache.oldest() == ("a", 1)
    cache.get("a")
    assert cache.oldest() == ("b", 2)
