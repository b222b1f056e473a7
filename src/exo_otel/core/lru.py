"""`LruCache`: the one bounded mapping behind every cache exo_otel keeps, on both sides.

Everything exo_otel remembers in memory (runs' traces and contexts, states' runs and node spans,
metric attribute sets) is a cache of something it can derive or read again, so one policy serves
all: at most ``max_entries`` entries, the least recently used forgotten first. Reads and writes are
single operations on an ordered dict, safe under the GIL between threads; `snapshot` is a copy that
a metrics callback thread can iterate while the event loop writes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator


class LruCache[K: Hashable, V]:
    """At most ``max_entries`` entries; ``get`` and ``put`` make an entry the most recently used, and
    ``put`` forgets the least recently used beyond the bound, telling ``on_evict`` when given."""

    __slots__ = ("_entries", "_max", "_on_evict")

    def __init__(self, max_entries: int, on_evict: Callable[[K, V], None] | None = None) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        self._max = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()
        self._on_evict = on_evict

    def get(self, key: K) -> V | None:
        """The entry's value (now the most recently used), or None when it is not kept."""
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """The entry's value without touching its recency, or None."""
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` as the most recently used; forget the oldest beyond the bound."""
        entries = self._entries
        entries[key] = value
        entries.move_to_end(key)
        while len(entries) > self._max:
            evicted_key, evicted = entries.popitem(last=False)
            if self._on_evict is not None:
                self._on_evict(evicted_key, evicted)

    def oldest(self) -> tuple[K, V] | None:
        """The least recently used entry (not touched), or None when the cache is empty."""
        for key, value in self._entries.items():
            return key, value
        return None

    def pop(self, key: K) -> V | None:
        """Forget an entry; its value, or None when it was not kept."""
        return self._entries.pop(key, None)

    def snapshot(self) -> list[tuple[K, V]]:
        """The entries now, oldest first (a copy)."""
        return list(self._entries.copy().items())

    def values(self) -> Iterator[V]:
        """The values, oldest first; the cache must not change while they are iterated."""
        return iter(self._entries.values())

    def __iter__(self) -> Iterator[K]:
        """The keys, oldest first; the cache must not change while they are iterated."""
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries
