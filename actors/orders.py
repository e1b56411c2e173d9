"""Orders and their footprints: what one order holds, as data.

A footprint is the list of every increment an order made (subject counters, window events, activity
budget, SKU units, auto-blacklist amounts). Holding applies it, releasing takes it back, confirming
moves budget and units from held to spent. Because it is plain data it is also the journal record
of a hold, and the unit by which actors could one day be partitioned across nodes.

Both are `gc=False` structs: an order holds strings, ints and tuples, never a cycle, and a sale
keeps hundreds of thousands of them. `array_like` makes their msgpack form (journal, snapshots) a
compact array, decoded straight back into these types.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from gateway.types import CounterKey, OrderState, SubjectKey, WindowKey


class Footprint(msgspec.Struct, gc=False, array_like=True):
    # Every subject in `subjects` counts every (counter, qty) of `shared` (SKU and SPU quantities);
    # the user (subjects[0]) also counts `user` (activity quantities). Stored as a product rather
    # than as pairs, a footprint is a fifth of the size, and so are the journal and snapshots.
    subjects: tuple[SubjectKey, ...] = ()
    shared: tuple[tuple[CounterKey, int], ...] = ()
    user: tuple[tuple[CounterKey, int], ...] = ()
    windows: tuple[tuple[SubjectKey, WindowKey, int, int], ...] = ()  # (subject, window, seconds, qty)
    budget: tuple[tuple[str, int], ...] = ()
    units: tuple[tuple[str, int], ...] = ()
    discount: int = 0  # counted discount (auto-blacklist)
    margin: int = 0  # paid - cost_price * quantity over the items whose cost is known

    def increments(self) -> Iterator[tuple[SubjectKey, CounterKey, int]]:
        """Every (subject, counter, quantity) the footprint adds: for audits and recounts."""
        for skey in self.subjects:
            for counter, qty in self.shared:
                yield skey, counter, qty
        for counter, qty in self.user:
            yield self.subjects[0], counter, qty


class Order(msgspec.Struct, gc=False, array_like=True):
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
    pardons: int = 0  # the user's pardon count when the order was confirmed (see SubjectActor)
