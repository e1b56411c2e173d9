"""Orders and their footprints: what one order holds, as data.

A footprint is the list of every increment an order made (subject counters, window events, activity
budget, SKU units, auto-blacklist amounts). Holding applies it, releasing takes it back, confirming
moves budget and units from held to spent. Because it is plain data it is also the journal record
of a hold, and the unit by which actors could one day be partitioned across nodes.

Both are `gc=False` structs: an order holds strings, ints and tuples, never a cycle, and a sale
keeps hundreds of thousands of them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.types import CounterKey, OrderState, SubjectKey, WindowKey


class Footprint(msgspec.Struct, gc=False):
    counts: tuple[tuple[SubjectKey, CounterKey, int], ...] = ()
    windows: tuple[tuple[SubjectKey, WindowKey, int, int], ...] = ()  # (subject, window, seconds, qty)
    budget: tuple[tuple[str, int], ...] = ()
    units: tuple[tuple[str, int], ...] = ()
    discount: int = 0  # counted discount (auto-blacklist)
    margin: int = 0  # paid - cost_price * quantity over the items whose cost is known

    def to_record(self) -> list[Any]:
        return [self.counts, self.windows, self.budget, self.units, self.discount, self.margin]

    @classmethod
    def from_record(cls, rec: list[Any]) -> Footprint:
        counts, windows, budget, units, discount, margin = rec
        return cls(
            tuple((s, c, q) for s, c, q in counts),
            tuple((s, w, secs, q) for s, w, secs, q in windows),
            tuple((a, m) for a, m in budget),
            tuple((s, q) for s, q in units),
            discount,
            margin,
        )


class Order(msgspec.Struct, gc=False):
    """One checked order. `response` is the first answer, returned again for a repeated check."""

    order_id: str
    digest: bytes
    user_id: str
    state: OrderState
    created_at: int
    expires_at: int | None
    footprint: Footprint | None
    response: bytes  # the first answer, msgpack-encoded: compact, and returned as is on a repeat
    updated_at: int = 0

    def to_record(self) -> list[Any]:
        fp = self.footprint.to_record() if self.footprint is not None else None
        return [
            self.order_id,
            self.digest,
            self.user_id,
            self.state.value,
            self.created_at,
            self.expires_at,
            fp,
            self.response,
            self.updated_at,
        ]

    @classmethod
    def from_record(cls, rec: list[Any]) -> Order:
        order_id, digest, user_id, state, created_at, expires_at, fp, response, updated_at = rec
        return cls(
            order_id,
            digest,
            user_id,
            OrderState(state),
            created_at,
            expires_at,
            Footprint.from_record(fp) if fp is not None else None,
            response,
            updated_at,
        )
