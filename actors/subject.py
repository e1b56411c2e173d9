"""A subject actor: everything counted for one user, device, receiver name, phone, address,
IP or region.

Counters are lifetime quantities (held plus confirmed) per SKU, SPU, activity and coupon; windows
are the risk-rule sliding windows. Users also carry their auto-blacklist totals. The actor is a
plain object with synchronous methods: the one event loop owns it, so it needs no lock.
"""

from __future__ import annotations

import msgspec

from actors.window import Window
from domain.types import CounterKey, WindowKey


class SubjectActor(msgspec.Struct, gc=False, array_like=True):
    """`gc=False`: an actor holds only strings, ints and windows, never a cycle, and there are
    millions of them; keeping them out of the collector's scans halves the cost of a check."""

    counts: dict[CounterKey, int] = msgspec.field(default_factory=dict)
    windows: dict[WindowKey, Window] = msgspec.field(default_factory=dict)
    # Auto-blacklist totals over confirmed orders (users only), and how many times an operator
    # pardoned the user (zeroed the totals): orders confirmed before a pardon no longer count.
    discount_total: int = 0
    margin_total: int = 0
    pardons: int = 0
    sweep_at: int = 0  # when the live heap entry will sweep this actor's windows (0: none)

    def used(self, counter: CounterKey) -> int:
        return self.counts.get(counter, 0)

    def add(self, counter: CounterKey, quantity: int) -> None:
        value = self.counts.get(counter, 0) + quantity
        if value:
            self.counts[counter] = value
        else:
            del self.counts[counter]

    def add_all(self, increments: tuple[tuple[CounterKey, int], ...]) -> None:
        """Count an order's increments (each counter once, each quantity positive)."""
        counts = self.counts
        if not counts:
            counts.update(increments)  # the subject's first order (the usual case in a sale): one C call
            return
        for counter, qty in increments:
            counts[counter] = counts.get(counter, 0) + qty

    def window_count(self, key: WindowKey, now: int) -> int:
        window = self.windows.get(key)
        return window.count(now) if window is not None else 0

    def window_add(self, key: WindowKey, seconds: int, t: int, quantity: int) -> bool:
        """Count an order in a window; True when the window is new (its expiry needs scheduling)."""
        window = self.windows.get(key)
        if window is None:
            self.windows[key] = Window(seconds, ((t, quantity),), quantity)
            return True
        window.add(t, quantity)
        return False

    def window_remove(self, key: WindowKey, t: int, quantity: int) -> None:
        window = self.windows.get(key)
        if window is not None:
            window.remove(t, quantity)
            if not window.buckets:
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
        return not (self.counts or self.windows or self.discount_total or self.margin_total or self.pardons)


class ColdSubject(msgspec.Struct, gc=False, array_like=True):
    """A subject actor as a snapshot stored it, left encoded until something touches it (see
    `Ledger.find`). After a restart most of a sale's millions of subjects are never touched again,
    and decoding them all was most of a restore's time and memory. `sweep_at` sits outside the
    blob so that the expiry heap is rebuilt without decoding it."""

    sweep_at: int
    blob: bytes

    @classmethod
    def freeze(cls, actor: SubjectActor) -> ColdSubject:
        return cls(actor.sweep_at, _encoder.encode(actor))

    def thaw(self) -> SubjectActor:
        actor = _decoder.decode(self.blob)
        for window in actor.windows.values():
            window.restored()
        return actor


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SubjectActor)
