"""An exact sliding window of quantities, for risk rules (SPEC section 3).

A window holds the orders checked at `t` with `now - seconds < t <= now`. Events are kept sorted
by (t, order_id) in a SortedList so that a cancelled or expired hold leaves at once, wherever it
sits; a running total makes reading the window O(1) after the old events are dropped.
"""

from __future__ import annotations

from sortedcontainers import SortedList


class Window:
    __slots__ = ("seconds", "events", "total")

    def __init__(self, seconds: int) -> None:
        self.seconds = seconds
        self.events: SortedList = SortedList()  # (t, order_id, quantity)
        self.total = 0

    def prune(self, now: int) -> None:
        """Drop events that have left the window; this is also what keeps memory bounded."""
        events = self.events
        horizon = now - self.seconds
        while events and events[0][0] <= horizon:
            self.total -= events.pop(0)[2]

    def count(self, now: int) -> int:
        self.prune(now)
        return self.total

    def add(self, t: int, order_id: str, quantity: int) -> None:
        self.events.add((t, order_id, quantity))
        self.total += quantity

    def remove(self, t: int, order_id: str, quantity: int) -> None:
        """Take an order's event out, if it is still inside the window."""
        event = (t, order_id, quantity)
        if event in self.events:
            self.events.remove(event)
            self.total -= quantity

    def next_expiry(self) -> int | None:
        """When the oldest event leaves, so the sweeper can come back then."""
        return self.events[0][0] + self.seconds if self.events else None
