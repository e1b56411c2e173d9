"""The coordinator's whole state as one msgpack document, and back.

The document is typed (`State`): msgspec encodes the actors and orders as compact arrays and
decodes them straight back into the same gc-free structs, validating every field on the way. That
is what makes a restore of millions of actors take seconds, and it means a snapshot that decodes
but does not describe a valid state is refused as a whole, never half applied: nothing is swapped
into the coordinator until the entire document has been decoded and checked.
"""

from __future__ import annotations

from typing import Any

import msgspec
from sortedcontainers import SortedDict

from actors.activity import ActivityActor
from actors.expiry import Due
from actors.ledger import Ledger
from actors.orders import Order
from actors.sku import SkuActor
from actors.subject import SubjectActor
from gateway.config import Config, build_config
from gateway.types import OrderState

FORMAT = 1


class StateInvalid(ValueError):
    """Decoded data that is not a valid state."""


class State(msgspec.Struct, array_like=True):
    format: int
    lsn: int
    now: int
    config: dict[str, Any]
    subjects: dict[str, SubjectActor]
    activities: dict[str, ActivityActor]
    skus: dict[str, SkuActor]
    orders: list[Order]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(State)


def encode(config: Config, ledger: Ledger, orders: dict[str, Order], now: int, lsn: int) -> bytes:
    state = State(
        FORMAT, lsn, now, config.to_doc(secrets=True), ledger.subjects, ledger.activities, ledger.skus, list(orders.values())
    )
    return _encoder.encode(state)


def decode(body: bytes | memoryview) -> tuple[Config, Ledger, dict[str, Order], int]:
    """(config, ledger, orders, clock) from a snapshot body; raises StateInvalid on any problem."""
    try:
        state = _decoder.decode(body)
        if state.format != FORMAT:
            raise StateInvalid(f"state format {state.format}, this build reads {FORMAT}")
        config = build_config(state.config)
        ledger = Ledger()
        ledger.subjects, ledger.activities, ledger.skus = state.subjects, state.activities, state.skus
        for key, actor in state.subjects.items():
            soonest: int | None = None
            for window in actor.windows.values():
                if isinstance(window.buckets, dict):
                    window.buckets = SortedDict(window.buckets)
                if window.recount() != window.total:
                    raise StateInvalid(f"subject {key!r}: a window's total does not match its buckets")
                nxt = window.next_expiry()
                if nxt is not None and (soonest is None or nxt < soonest):
                    soonest = nxt
            actor.sweep_at = 0  # the heap is rebuilt here; the saved time refers to the old one
            if soonest is not None:
                ledger.schedule_sweep(key, actor, soonest)
        orders: dict[str, Order] = {}
        for order in state.orders:
            orders[order.order_id] = order
            if order.state is OrderState.HELD:
                if order.expires_at is None or order.footprint is None:
                    raise StateInvalid(f"held order {order.order_id!r} without a hold")
                ledger.expiry.schedule(order.expires_at, Due.HOLD, order.order_id)
        return config, ledger, orders, state.now
    except StateInvalid:
        raise
    except Exception as e:  # msgspec's decode and validation errors, a bad config, anything deep inside
        raise StateInvalid(f"{type(e).__name__}: {e}") from None
