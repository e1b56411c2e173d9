"""An exact sliding window of quantities, for risk rules (SPEC section 3).

A window counts the orders checked at `t` with `now - seconds < t <= now`. Time is whole seconds,
so orders of the same second share one bucket (t -> quantity) without losing exactness: a
cancelled or expired hold takes its quantity out of its second's bucket at once, and a bucket
leaves the window whole. A running total makes reading O(1) once old buckets are dropped.

Like Redis' small sorted sets (a listpack until they grow), a window starts small: a tuple of
(t, quantity) pairs, rebuilt on change. Most subjects see a handful of orders, and a tuple of ints
is tiny and invisible to the garbage collector, which matters with millions of windows. Past
`SMALL` buckets it becomes a `sortedcontainers.SortedDict`, so the hot windows (a village's
address, a city over 7 days) keep O(log n) updates and pruning.
"""

from __future__ import annotations

from bisect import bisect_left

import msgspec
from sortedcontainers import SortedDict

SMALL = 32

Bucket = tuple[int, int]


class Window(msgspec.Struct, gc=False, array_like=True):
    seconds: int
    # A SortedDict when big (a dict subclass: stored as a msgpack map, decoded as a plain dict
    # that `restored` sorts again).
    buckets: tuple[Bucket, ...] | dict[int, int] = ()
    total: int = 0

    def prune(self, now: int) -> None:
        """Drop buckets that have left the window; this is also what keeps memory bounded."""
        buckets = self.buckets
        horizon = now - self.seconds
        if isinstance(buckets, dict):
            big: SortedDict = buckets
            while big and big.peekitem(0)[0] <= horizon:
                self.total -= big.popitem(0)[1]
            return
        k = 0
        while k < len(buckets) and buckets[k][0] <= horizon:
            self.total -= buckets[k][1]
            k += 1
        if k:
            self.buckets = buckets[k:]

    def count(self, now: int) -> int:
        buckets = self.buckets
        # The usual case needs no pruning: a small window whose oldest second is still inside it.
        if buckets.__class__ is not tuple or (buckets and buckets[0][0] <= now - self.seconds):
            self.prune(now)
        return self.total

    def add(self, t: int, quantity: int) -> None:
        self.total += quantity
        buckets = self.buckets
        if isinstance(buckets, dict):
            buckets[t] = buckets.get(t, 0) + quantity
            return
        if buckets:  # the usual cases: another order in the last second, or in a later one
            last, held = buckets[-1]
            if last == t:
                self.buckets = buckets[:-1] + ((t, held + quantity),)
                return
            if last < t and len(buckets) < SMALL:
                self.buckets = buckets + ((t, quantity),)
                return
        i = bisect_left(buckets, (t,))
        if i < len(buckets) and buckets[i][0] == t:
            self.buckets = buckets[:i] + ((t, buckets[i][1] + quantity),) + buckets[i + 1 :]
        else:
            self.buckets = buckets[:i] + ((t, quantity),) + buckets[i:]
            if len(self.buckets) > SMALL:
                self.buckets = SortedDict(self.buckets)

    def remove(self, t: int, quantity: int) -> None:
        """Take an order's quantity out of its second, if that second is still inside the window."""
        buckets = self.buckets
        if isinstance(buckets, dict):
            left = buckets.get(t)
            if left is None:
                return  # already pruned: it had left the window
            if left > quantity:
                buckets[t] = left - quantity
            else:
                del buckets[t]
        else:
            i = bisect_left(buckets, (t,))
            if i == len(buckets) or buckets[i][0] != t:
                return
            left = buckets[i][1] - quantity
            rest = buckets[i + 1 :]
            self.buckets = buckets[:i] + (((t, left),) if left > 0 else ()) + rest
        self.total -= quantity

    def restored(self) -> None:
        """After decoding: a big window's buckets come back as a plain dict."""
        if isinstance(self.buckets, dict) and not isinstance(self.buckets, SortedDict):
            self.buckets = SortedDict(self.buckets)

    def next_expiry(self) -> int | None:
        """When the oldest bucket leaves, so the sweeper can come back then."""
        buckets = self.buckets
        if not buckets:
            return None
        big: SortedDict = buckets
        first = big.peekitem(0)[0] if isinstance(buckets, dict) else buckets[0][0]
        return first + self.seconds
