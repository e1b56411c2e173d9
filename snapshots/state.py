"""The coordinator's whole state as one msgpack document, and back.

The document is typed (`State`): msgspec encodes the actors and orders as compact arrays and
decodes them straight back into the same gc-free structs, validating every field on the way. A
snapshot that decodes but does not describe a valid state is refused as a whole, never half
applied: nothing is swapped into the coordinator until the entire document has been decoded and
checked.

Two parts stay encoded, one blob each, until first used: subject actors (`ColdSubject`) and
settled orders (`OrderBook`). They are most of a sale's state and most of them are never touched
again; decoding them all took two thirds of a restore at a million users and tripled its memory.
Their bytes are covered by the snapshot's checksum like the rest; each is validated (typed) when
it is decoded, and a check decodes its order's subjects before it changes anything.

Retention (format 3): settled orders are stored packed (see `actors.orders.pack`), those retired
by the state's horizon are left out (`OrderBook.settled` retires them as it writes), and the
retired ids' fingerprints are one blob (`RetiredIds.to_bytes`, 8 bytes an id) with the horizon.
A format-2 snapshot (plain msgpack orders, no retired ids) is read as it was: its orders are packed
when the next snapshot is written.

Format 4 stores the settled orders as one archive (`actors.archive`: sorted fingerprints, times
and offsets, then the entries) after the document: `0xc1 | document length u64 | document |
archive`. The archive is read in place, as a view of the body, which `snapshots.snapshot.read`
maps from the file, so a restore makes no object per settled order (ten million of them took
40 s as a dict, 6 s as an archive), and it is written as it is carried over, never as one
buffer (a msgpack `bin` would also stop at 4 GB, about 13 million orders). Formats 2 and 3 are
read as they were.

The expiry heap is not stored: it is rebuilt in one heapify from each held order's expiry and each
subject's `sweep_at` (exactly the live entries; stale ones are not needed).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from itertools import chain
from typing import Any

import msgspec

from actors.activity import ActivityActor
from actors.archive import Archive
from actors.expiry import Due
from actors.ledger import Ledger
from actors.orders import Order, OrderBook
from actors.retired import RetiredIds
from actors.sku import SkuActor
from actors.subject import ColdSubject
from domain.config import Config
from domain.document import build_config
from domain.types import OrderState

FORMAT = 4  # 2: subjects and settled orders as msgpack blobs, decoded when first used; 3: + retention; 4: settled orders as an archive
FIELDS = {2: 9, 3: 11, 4: 11}  # the formats this build reads, and the length of each one's array
ARCHIVED = 0xC1  # the first byte of a format-4 body (one msgpack never writes): see above
_ARCHIVED = struct.Struct("<BQ")


class StateInvalid(ValueError):
    """Decoded data that is not a valid state."""


class State(msgspec.Struct, array_like=True):
    format: int
    lsn: int
    now: int
    config: dict[str, Any]
    subjects: dict[str, ColdSubject]
    activities: dict[str, ActivityActor]
    skus: dict[str, SkuActor]
    held: list[Order]
    settled: dict[str, bytes]  # order id -> its packed (format 2: msgpack) form; format 4: empty, the archive follows
    horizon: int = 0  # format 3: every settled order last changed at or before it is retired
    retired: bytes = b""  # format 3: the retired ids' fingerprints (`RetiredIds.to_bytes`)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(State)


def encode(config: Config, ledger: Ledger, orders: OrderBook, now: int, lsn: int) -> Iterator[bytes | memoryview]:
    """The body, as buffers to write one after the other (`snapshots.snapshot.write`)."""
    settled = orders.settled()  # first: it retires what reads as retired
    state = State(
        FORMAT, lsn, now, config.to_doc(secrets=True), ledger.frozen_subjects(), ledger.activities, ledger.skus, orders.held(), {},
        orders.horizon, orders.retired.to_bytes(),
    )  # fmt: skip
    document = _encoder.encode(state)
    return chain((_ARCHIVED.pack(ARCHIVED, len(document)), document), settled)


def decode(body: bytes | memoryview) -> tuple[Config, Ledger, OrderBook, int]:
    """(config, ledger, orders, clock) from a snapshot body; raises StateInvalid on any problem."""
    try:
        document, archive = memoryview(body), None
        if document[:1] == bytes([ARCHIVED]):
            _, length = _ARCHIVED.unpack_from(document) if len(document) >= _ARCHIVED.size else (0, len(document))
            if _ARCHIVED.size + length + 8 > len(document):  # the archive starts with its count
                raise StateInvalid(f"a format-4 body of {len(document)} bytes cannot hold a document of {length} and an archive")
            document, archive = document[_ARCHIVED.size : _ARCHIVED.size + length], Archive(document[_ARCHIVED.size + length :])
        state = _decoder.decode(document)
        if state.format not in FIELDS:
            raise StateInvalid(f"state format {state.format}, this build reads {' and '.join(map(str, FIELDS))}")
        if document[0] != 0x90 | FIELDS[state.format]:  # a fixarray: format 3's two last fields have defaults for format 2's sake
            raise StateInvalid(f"a format-{state.format} state has {FIELDS[state.format]} fields")
        if (archive is not None) != (state.format >= 4) or (archive is not None and state.settled):
            raise StateInvalid(f"a format-{state.format} state {'without' if archive is None else 'with'} an archive of settled orders")
        config = build_config(state.config)
        ledger = Ledger()
        ledger.cold, ledger.activities, ledger.skus = state.subjects, state.activities, state.skus
        # each subject's live heap entry, as it was (stale ones are not needed)
        sweeps = [(cold.sweep_at, Due.WINDOWS, key) for key, cold in state.subjects.items() if cold.sweep_at]
        holds: list[tuple[int, int, str]] = []
        orders: dict[str, Order | bytes] = dict(state.settled)
        book = OrderBook(orders, RetiredIds.from_bytes(state.retired), state.horizon, archive)
        for order in state.held:
            if order.state is not OrderState.HELD or order.expires_at is None or order.footprint is None:
                raise StateInvalid(f"order {order.order_id!r} among the holds is not a hold")
            if order.order_id in book:
                raise StateInvalid(f"order {order.order_id!r} is both held and settled")
            book[order.order_id] = order
            holds.append((order.expires_at, Due.HOLD, order.order_id))
        ledger.expiry.rebuild(sweeps + holds)
        return config, ledger, book, state.now
    except StateInvalid:
        raise
    except Exception as e:  # msgspec's decode and validation errors, a bad config, anything deep inside
        raise StateInvalid(f"{type(e).__name__}: {e}") from None
