"""Orders and their footprints: what one order holds, as data; and the book of every order.

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

from domain.types import CounterKey, OrderState, SubjectKey, WindowKey


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


_order_encoder = msgspec.msgpack.Encoder()
_order_decoder = msgspec.msgpack.Decoder(Order)


class OrderBook:
    """Every order by id. Orders restored from a snapshot that had settled (confirmed, cancelled,
    expired, denied) stay in their msgpack form until something asks for one: a sale's history is
    mostly orders nobody touches again, and decoding a million of them was half of a restore's
    time and memory. A held order is always decoded (its expiry is due), so an order still in bytes
    is never held."""

    __slots__ = ("_orders",)

    def __init__(self, orders: dict[str, Order | bytes] | None = None) -> None:
        self._orders: dict[str, Order | bytes] = orders if orders is not None else {}

    def get(self, order_id: str) -> Order | None:
        order = self._orders.get(order_id)
        if isinstance(order, bytes):
            order = self._orders[order_id] = _order_decoder.decode(order)
        return order

    def __getitem__(self, order_id: str) -> Order:
        order = self.get(order_id)
        if order is None:
            raise KeyError(order_id)
        return order

    def __setitem__(self, order_id: str, order: Order) -> None:
        self._orders[order_id] = order

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._orders

    def __len__(self) -> int:
        return len(self._orders)

    def __iter__(self) -> Iterator[str]:
        return iter(self._orders)

    def values(self) -> Iterator[Order]:
        """Every order, decoding those still in bytes (audits and tests; not the request path)."""
        for order_id in list(self._orders):
            yield self[order_id]

    def items(self) -> Iterator[tuple[str, Order]]:
        for order_id in list(self._orders):
            yield order_id, self[order_id]

    def held(self) -> list[Order]:
        return [o for o in self._orders.values() if isinstance(o, Order) and o.state is OrderState.HELD]

    def settled(self) -> dict[str, bytes]:
        """The orders that are not held, in msgpack form (those never decoded as they were read)."""
        out: dict[str, bytes] = {}
        encode = _order_encoder.encode
        for order_id, order in self._orders.items():
            if isinstance(order, bytes):
                out[order_id] = order
            elif order.state is not OrderState.HELD:
                out[order_id] = encode(order)
        return out
