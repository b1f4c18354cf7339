"""A bounded least-recently-used mapping that hands each entry it pushes out to a callback.

spoolup keeps four such caches -- spool file descriptors (spool.Spool), chunk and
dead-letter file descriptors (files.py) and live compressors (chunks.ChunkStore) --
and each must *do* something with what it evicts (close a descriptor, sync it
first, finish a compressed member): functools.lru_cache caches results of calls
and drops evicted values silently, so it does not fit.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Iterator, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """At most `capacity` entries, least recently used first.  get() and put() make an
    entry the most recent; an entry pushed out by put() (or by a lowered capacity at the
    next put()) is removed first, then given to `evict(key, value)`.  pop() and clear()
    never call `evict`: the caller removing an entry deals with it itself."""

    def __init__(self, capacity: int, evict: Callable[[K, V], None]):
        self.capacity = capacity
        self._evict = evict
        self._d: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._d.get(key)
        if value is not None:
            self._d.move_to_end(key)
        return value

    def peek(self, key: K) -> V | None:
        """The entry, without making it the most recent."""
        return self._d.get(key)

    def put(self, key: K, value: V) -> None:
        """Add (or replace) `key` as the most recent entry, then evict the least recent
        ones while there are more than `capacity`."""
        self._d[key] = value
        self._d.move_to_end(key)
        while len(self._d) > self.capacity:
            old_key, old = self._d.popitem(last=False)
            self._evict(old_key, old)

    def pop(self, key: K, default: V | None = None) -> V | None:
        return self._d.pop(key, default)

    def clear(self) -> None:
        self._d.clear()

    def values(self):
        return self._d.values()

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def __iter__(self) -> Iterator[K]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)
