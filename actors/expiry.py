"""Everything that ends with time, in one heap drained by one task (the sweeper).

Two kinds of deadline live here: a hold's `expires_at`, and the moment the oldest event of a
subject's risk windows leaves them (so stale events are dropped even for subjects nobody checks
again). Entries are never removed early: a confirmed hold or a re-scheduled subject leaves a stale
entry behind, which the drainer recognises and skips. That keeps scheduling O(log n).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

from domain.types import SubjectKey


class Due:
    """Kinds of deadline. Plain ints, not an Enum: a heap entry of ints and strings is untracked
    by the garbage collector, and the heap holds one per live hold."""

    HOLD = 0
    WINDOWS = 1


class Expiry:
    __slots__ = ("_heap",)

    def __init__(self) -> None:
        # (when, kind, key): ties break on the kind, then on keys of one kind (all strings).
        self._heap: list[tuple[int, int, str | SubjectKey]] = []

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, when: int, kind: int, key: str | SubjectKey) -> None:
        heapq.heappush(self._heap, (when, kind, key))

    def rebuild(self, entries: list[tuple[int, int, str | SubjectKey]]) -> None:
        """Replace the heap with `entries` (a restore): one O(n) heapify, not n pushes."""
        heapq.heapify(entries)
        self._heap = entries

    def any_due(self, now: int) -> bool:
        """The cheap test every check makes before draining."""
        return bool(self._heap) and self._heap[0][0] <= now

    def pop_due(self, now: int) -> Iterator[tuple[int, int, str | SubjectKey]]:
        """Yield (when, kind, key) for every entry due at `now`, earliest first."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, kind, key = heapq.heappop(heap)
            yield when, kind, key
