"""A subject actor: everything counted for one user, device, receiver name, phone, address,
IP or region.

Counters are lifetime quantities (held plus confirmed) per SKU, SPU, activity and coupon; windows
are the risk-rule sliding windows. Users also carry their auto-blacklist totals. The actor is a
plain object with synchronous methods: the one event loop owns it, so it needs no lock.
"""

from __future__ import annotations

from actors.window import Window
from gateway.types import CounterKey, SubjectKey, WindowKey


class SubjectActor:
    __slots__ = ("key", "counts", "windows", "discount_total", "margin_total")

    def __init__(self, key: SubjectKey) -> None:
        self.key = key
        self.counts: dict[CounterKey, int] = {}
        self.windows: dict[WindowKey, Window] = {}
        # Auto-blacklist totals over confirmed orders (users only).
        self.discount_total = 0
        self.margin_total = 0

    def used(self, counter: CounterKey) -> int:
        return self.counts.get(counter, 0)

    def add(self, counter: CounterKey, quantity: int) -> None:
        value = self.counts.get(counter, 0) + quantity
        if value:
            self.counts[counter] = value
        else:
            del self.counts[counter]

    def window_count(self, key: WindowKey, now: int) -> int:
        window = self.windows.get(key)
        return window.count(now) if window is not None else 0

    def window_add(self, key: WindowKey, t: int, order_id: str, quantity: int) -> Window:
        window = self.windows.get(key)
        if window is None:
            window = self.windows[key] = Window(key[2])
        window.add(t, order_id, quantity)
        return window

    def window_remove(self, key: WindowKey, t: int, order_id: str, quantity: int) -> None:
        window = self.windows.get(key)
        if window is not None:
            window.remove(t, order_id, quantity)
            if not window.events:
                del self.windows[key]

    def prune_windows(self, now: int) -> int | None:
        """Drop old events and empty windows; the earliest time anything left will expire."""
        soonest: int | None = None
        for key in list(self.windows):
            window = self.windows[key]
            window.prune(now)
            nxt = window.next_expiry()
            if nxt is None:
                del self.windows[key]
            elif soonest is None or nxt < soonest:
                soonest = nxt
        return soonest

    def is_empty(self) -> bool:
        return not self.counts and not self.windows and not self.discount_total and not self.margin_total
