"""Orders and their footprints: what one order holds, as data; and the book of every order.

A footprint is the list of every increment an order made (subject counters, window events, activity
budget, SKU units, auto-blacklist amounts). Holding applies it, releasing takes it back, confirming
moves budget and units from held to spent. Because it is plain data it is also the journal record
of a hold, and the unit by which actors could one day be partitioned across nodes.

Both are `gc=False` structs: an order holds strings, ints and tuples, never a cycle, and a sale
keeps hundreds of thousands of them. `array_like` makes their msgpack form (journal, snapshots) a
compact array, decoded straight back into these types.

The book keeps a settled order packed (`pack`: a 15-byte header, then its msgpack form deflated
against a fixed dictionary of the schema's own words), about 260 bytes against 3.4 KB decoded,
and retires settled orders past `settings.order_retention` (see `OrderBook`).
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from collections.abc import Iterator

import msgspec

from actors.archive import Archive, Entries
from actors.archive import write as write_archive
from actors.retired import RetiredIds, fingerprint

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


# -- the packed form of a settled order ---------------------------------------------------------
#
# `PACKED_TAG` (0xc1, a byte msgpack never writes, so a packed order is told apart from the plain
# msgpack form snapshots of format 2 hold) | dictionary version | state | created_at u64 |
# updated_at - created_at u32 | raw deflate of the order's msgpack form (its `order_id` emptied: the
# book's key holds it) with `ZDICT` as the preset dictionary. The header lets retirement read an
# order's state and times without inflating it.

PACKED_TAG = 0xC1
_PACKED = bytes([PACKED_TAG])


def is_packed(entry: bytes) -> bool:
    """Whether a book entry is in the packed form (else the plain msgpack form of format 2)."""
    return entry[:1] == _PACKED


ZDICT_VERSION = 1
_HEADER = struct.Struct("<BBBQI")
_STATES = tuple(OrderState)
_STATE_INDEX = {state: i for i, state in enumerate(_STATES)}
_LEVEL, _WBITS, _MEMLEVEL = 1, -15, 8  # level 1: 22 µs an order; level 6 saves 4% for 45% more time


def _zdict() -> bytes:
    """The preset dictionary: the words and fragments every order repeats (field names, codes, key
    prefixes, states, messages). NEVER change it: packed orders in snapshots are inflated with it
    byte for byte. Another one needs another `ZDICT_VERSION` (and this one kept for reading)."""
    enc = msgspec.msgpack.encode
    parts: list[bytes] = []
    for subject in ("address:province", "address:city", "address:district", "address:town", "receiver_address",
                    "receiver_phone", "receiver_name", "ip", "device", "user"):  # fmt: skip
        parts.append(enc(subject + "\x1f"))
    for fragment in ("\x1f\x1f900", "\x1f\x1f3600", "\x1f\x1f86400", "\x1f\x1f604800", "category\x1f", "brand\x1f",
                     "spu_id\x1f", "sku_id\x1f", "\x1f900", "\x1f3600", "\x1f86400", "\x1f604800", "actsku\x1f", "act\x1f",
                     "spu\x1f", "sku\x1f", "coupon\x1f"):  # fmt: skip
        parts.append(fragment.encode())
    for code in ("BLACKLISTED", "ACTIVITY_NOT_ACTIVE", "ACTIVITY_BUDGET_EXHAUSTED", "PRICE_FUSE", "ACTIVITY_SKU_LIMIT",
                 "ACTIVITY_USER_LIMIT", "SKU_LIMIT", "SPU_LIMIT", "RISK_RULE", "WHITELISTED", "UNKNOWN_SKU", "UNKNOWN_ACTIVITY"):  # fmt: skip
        parts.append(enc({"code": code, "sku_id": None, "subject": "user", "limit": 1, "used": 1, "requested": 1, "degradable": False}))
    for text in ("当前下单人数太多，请稍后再试", "当前活动已结束，是否去除优惠继续下单", "当前商品限购数量为", "，您已超过限购数量",
                 "Too many orders right now, please try again later", "This promotion has ended. Continue without the discount?",
                 "This item is limited to ", " per customer"):  # fmt: skip
        parts.append(enc(text))
    for decision in ("deny", "degrade", "allow"):
        parts.append(enc({"order_id": "o-1", "decision": decision, "reasons": [], "shadow": [], "warnings": [], "message": None,
                          "hold": {"expires_at": 1800000000}, "payable": 100000, "stripped": []}))  # fmt: skip
    for state in ("held", "confirmed", "cancelled", "expired", "denied"):
        parts.append(enc(state))
    return b"".join(parts)


ZDICT = _zdict()


def pack(order: Order) -> bytes:
    """A settled order's packed form (see above); its plain msgpack form if its times do not fit
    the header (a manual clock set decades ahead)."""
    order_id, order.order_id = order.order_id, ""
    try:
        body = _order_encoder.encode(order)
    finally:
        order.order_id = order_id
    delta = order.updated_at - order.created_at
    if not (0 <= order.created_at < 2**64 and 0 <= delta < 2**32):
        return _order_encoder.encode(order)
    deflate = zlib.compressobj(_LEVEL, zlib.DEFLATED, _WBITS, _MEMLEVEL, zlib.Z_DEFAULT_STRATEGY, ZDICT)
    header = _HEADER.pack(PACKED_TAG, ZDICT_VERSION, _STATE_INDEX[order.state], order.created_at, delta)
    return header + deflate.compress(body) + deflate.flush()


def unpack(order_id: str, data: bytes) -> Order:
    """An order from its packed or plain msgpack form (ValueError or msgspec's errors if neither)."""
    if not is_packed(data):
        return _order_decoder.decode(data)
    if len(data) < _HEADER.size or data[1] != ZDICT_VERSION:
        raise ValueError(f"order {order_id!r}: packed with an unknown dictionary")
    inflate = zlib.decompressobj(_WBITS, ZDICT)
    order = _order_decoder.decode(inflate.decompress(data[_HEADER.size :]) + inflate.flush())
    order.order_id = order_id
    return order


def meta(order_id: str, entry: Order | bytes) -> tuple[OrderState, int, int]:
    """(state, created_at, updated_at) of a book entry, without inflating a packed one."""
    if isinstance(entry, Order):
        return entry.state, entry.created_at, entry.updated_at
    if is_packed(entry) and len(entry) >= _HEADER.size:
        _, _, state, created, delta = _HEADER.unpack_from(entry)
        return _STATES[state], created, created + delta
    order = unpack(order_id, entry)
    return order.state, order.created_at, order.updated_at


class OrderBook:
    """Every order by id, and the ids of those retired.

    Memory: a settled order is kept packed (`pack`), decoded only while something uses it. The
    `_fresh` queue holds the ids of orders that may be decoded and settled (appended when one is
    checked, settles or is decoded again); `pack_step`, run by the sweeper in chunks, packs those
    settled for `PACK_AFTER` seconds. A held order is always decoded (its expiry is due), so an
    order in bytes is never held. Settled orders restored from a snapshot stay in its `archive`
    (`actors.archive`, read in place) until used: `get` then decodes one into the dict, which
    shadows its archived copy from then on (`_gone`).

    Retention: a settled order whose last change (`updated_at`) is at or before `horizon` is
    retired. `horizon` only moves forward (`advance`, to `now - settings.order_retention` at every
    call and journal record), so retirement is a pure function of the state and the times it was
    changed at: the compaction process, which replays the journal, retires exactly what the serving
    process had retired at that record, and never an order the serving process still changed
    afterwards (see `Coordinator.replay`). A retired order still in the dict reads as retired
    (`is_retired`) at once; `retire_step`, run by the sweeper in chunks, moves it from the dict to
    `retired` (8 bytes, see `RetiredIds`). It scans `_queue`, every id in check order: it stops at
    the first order created after the horizon (every later one is younger), and moves an old order
    that cannot retire yet (held, or changed since) to the back. An archived order reads as retired
    the same way (its stored time); it leaves the archive when a snapshot is written (`settled`),
    and until then only a mapped file's pages hold it, which the kernel may take back.
    """

    __slots__ = ("_orders", "_queue", "_fresh", "retired", "horizon", "archive", "_gone")

    PACK_AFTER = 60  # seconds a settled order stays decoded: a repeat, a confirm or a cancel is likely soon

    def __init__(
        self, orders: dict[str, Order | bytes] | None = None, retired: RetiredIds | None = None, horizon: int = 0, archive: Archive | None = None
    ) -> None:
        self._orders: dict[str, Order | bytes] = orders if orders is not None else {}
        self._queue: deque[str] = deque(self._orders)
        self._fresh: deque[str] = deque(k for k, o in self._orders.items() if isinstance(o, Order))
        self.retired = retired if retired is not None else RetiredIds()
        self.horizon = horizon
        self.archive = archive if archive is not None else Archive()
        self._gone: set[int] = set()  # archive entries no longer the archive's: decoded into `_orders`, or retired

    def get(self, order_id: str) -> Order | None:
        order = self._orders.get(order_id)
        if isinstance(order, bytes):
            order = self._orders[order_id] = unpack(order_id, order)
            self._fresh.append(order_id)  # settled: pack it again once it is left alone
        elif order is None and self.archive:
            i = self._archived(order_id)
            if i is not None:
                self._gone.add(i)
                self[order_id] = order = unpack(order_id, self.archive.entry(i)[1])
        return order

    def _archived(self, order_id: str) -> int | None:
        """The archive entry that is still `order_id` (one that is gone was decoded into `_orders`
        and, not being there now, retired from it)."""
        i = self.archive.find(order_id, fingerprint(order_id))
        return None if i is None or i in self._gone else i

    def __getitem__(self, order_id: str) -> Order:
        order = self.get(order_id)
        if order is None:
            raise KeyError(order_id)
        return order

    def __setitem__(self, order_id: str, order: Order) -> None:
        if order_id not in self._orders:
            self._queue.append(order_id)
            self._fresh.append(order_id)
        self._orders[order_id] = order

    def __contains__(self, order_id: object) -> bool:
        if order_id in self._orders:
            return True
        return isinstance(order_id, str) and bool(self.archive) and self._archived(order_id) is not None

    def __len__(self) -> int:
        return len(self._orders) + len(self.archive) - len(self._gone)

    def __iter__(self) -> Iterator[str]:
        yield from list(self._orders)
        for i in range(len(self.archive)):
            if i not in self._gone:
                yield self.archive.entry(i)[0]

    def values(self) -> Iterator[Order]:
        """Every order, decoding those still in bytes (audits and tests; not the request path)."""
        for order_id in list(self):
            yield self[order_id]

    def items(self) -> Iterator[tuple[str, Order]]:
        for order_id in list(self):
            yield order_id, self[order_id]

    def held(self) -> list[Order]:
        return [o for o in self._orders.values() if isinstance(o, Order) and o.state is OrderState.HELD]

    def settled_now(self, order_id: str) -> None:
        """The order just settled (confirmed, cancelled, expired): pack it once it is left alone."""
        self._fresh.append(order_id)

    # -- retention ---------------------------------------------------------------------------

    def advance(self, horizon: int) -> None:
        """Retire, from now on, every settled order last changed at or before `horizon`."""
        if horizon > self.horizon:
            self.horizon = horizon

    def is_retired(self, order: Order) -> bool:
        return order.state is not OrderState.HELD and order.updated_at <= self.horizon

    def retire_step(self, limit: int) -> tuple[int, int, bool]:
        """Retire what `horizon` retires, looking at no more than `limit` orders (one synchronous
        step of the sweeper); returns (looked at, retired, whether more may be due)."""
        queue, orders, horizon = self._queue, self._orders, self.horizon
        looked = retired = 0
        while looked < limit:
            if not queue:
                return looked, retired, False
            order_id = queue[0]
            entry = orders.get(order_id)
            looked += 1
            if entry is None:  # retired already (a snapshot at shutdown retires in its pass)
                queue.popleft()
                continue
            state, created, updated = meta(order_id, entry)
            if created > horizon:
                return looked, retired, False  # this one and every later one are too young
            queue.popleft()
            if state is OrderState.HELD or updated > horizon:
                queue.append(order_id)  # old, but held or changed since: looked at again later
            else:
                del orders[order_id]
                self.retired.add(order_id)
                retired += 1
        return looked, retired, True

    def pack_step(self, before: int, limit: int) -> tuple[int, int, bool]:
        """Pack the decoded orders that settled at or before `before`, looking at no more than
        `limit` queued ids; returns (looked at, packed, whether more may be due)."""
        fresh, orders = self._fresh, self._orders
        looked = packed = 0
        while looked < limit:
            if not fresh:
                return looked, packed, False
            order_id = fresh[0]
            order = orders.get(order_id)
            looked += 1
            if not isinstance(order, Order) or order.state is OrderState.HELD:
                fresh.popleft()  # gone, packed already, or held (queued again when it settles)
                continue
            if order.updated_at > before:
                return looked, packed, False  # queued about in time order: the rest are as fresh
            fresh.popleft()
            orders[order_id] = pack(order)
            packed += 1
        return looked, packed, True

    def settled(self) -> Iterator[bytes | memoryview]:
        """For a snapshot: the archive (`actors.archive`) of the orders neither held nor retired,
        as buffers to write one after the other. Those that read as retired leave for `retired`
        now (the snapshot holds what it would after the sweeper's next round). The archive's own
        entries are carried over as they are: none is decoded."""
        fresh, gone, horizon = Entries(), [], self.horizon
        for order_id, entry in self._orders.items():
            state, _, updated = meta(order_id, entry)
            if state is OrderState.HELD:
                continue
            if updated <= horizon:
                gone.append(order_id)
                continue
            if isinstance(entry, Order):
                entry = pack(entry)
            elif not is_packed(entry):  # the plain form of a format-2 snapshot
                entry = pack(unpack(order_id, entry))
            fresh.add(order_id, updated, entry)
        for order_id in gone:
            del self._orders[order_id]
            self.retired.add(order_id)
        archive = self.archive
        for i, updated in enumerate(archive.updated):
            if updated <= horizon and i not in self._gone:
                self._gone.add(i)
                self.retired.add_fingerprint(archive.fingerprints[i])
        return write_archive(archive, set(self._gone), fresh)
