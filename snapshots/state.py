"""The coordinator's whole state as plain msgpack-able data, and back.

`load` builds a complete new Ledger, order table and Config before anything is swapped in, and
checks the shape of everything it reads: a snapshot that decodes but does not describe a valid
state is refused as a whole (never half applied).
"""

from __future__ import annotations

from typing import Any

from sortedcontainers import SortedDict

from actors.activity import ActivityActor
from actors.expiry import Due
from actors.ledger import Ledger
from actors.orders import Order
from actors.sku import SkuActor
from actors.subject import SubjectActor
from actors.window import SMALL, Window
from gateway.config import Config, build_config
from gateway.types import OrderState

FORMAT = 1


class StateInvalid(ValueError):
    """Decoded data that is not a valid state."""


def dump(config: Config, ledger: Ledger, orders: dict[str, Order], now: int, lsn: int) -> dict[str, Any]:
    subjects = []
    for key, actor in ledger.subjects.items():
        windows = [
            [wkey, w.seconds, list(w.buckets.items()) if isinstance(w.buckets, SortedDict) else list(w.buckets)]
            for wkey, w in actor.windows.items()
        ]
        subjects.append([key, actor.counts, windows, actor.discount_total, actor.margin_total])
    return {
        "format": FORMAT,
        "lsn": lsn,
        "now": now,
        "config": config.to_doc(secrets=True),
        "subjects": subjects,
        "activities": [[a, x.held, x.spent] for a, x in ledger.activities.items()],
        "skus": [[s, x.held, x.confirmed] for s, x in ledger.skus.items()],
        "orders": [o.to_record() for o in orders.values()],
    }


def _int(v: Any) -> int:
    if type(v) is not int:
        raise StateInvalid(f"expected an integer, found {type(v).__name__}")
    return v


def _str(v: Any) -> str:
    if type(v) is not str:
        raise StateInvalid(f"expected a string, found {type(v).__name__}")
    return v


def load(state: Any) -> tuple[Config, Ledger, dict[str, Order], int]:
    """(config, ledger, orders, clock) from dumped data; raises StateInvalid on any bad shape."""
    try:
        return _load(state)
    except StateInvalid:
        raise
    except Exception as e:  # a wrong shape deep inside: unpacking, types, a bad config
        raise StateInvalid(f"{type(e).__name__}: {e}") from None


def _load(state: Any) -> tuple[Config, Ledger, dict[str, Order], int]:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise StateInvalid("not a state of format 1")
    config = build_config(state["config"])
    ledger = Ledger()
    for key, counts, windows, discount_total, margin_total in state["subjects"]:
        actor = SubjectActor(
            counts={_str(c): _int(q) for c, q in counts.items()},
            discount_total=_int(discount_total),
            margin_total=_int(margin_total),
        )
        soonest: int | None = None
        for wkey, seconds, buckets in windows:
            pairs = tuple((_int(t), _int(q)) for t, q in buckets)
            window = Window(_int(seconds), pairs if len(pairs) <= SMALL else SortedDict(pairs), sum(q for _, q in pairs))
            actor.windows[_str(wkey)] = window
            nxt = window.next_expiry()
            if nxt is not None and (soonest is None or nxt < soonest):
                soonest = nxt
        ledger.subjects[_str(key)] = actor
        if soonest is not None:
            ledger.schedule_sweep(key, soonest)
    for aid, held, spent in state["activities"]:
        ledger.activities[_str(aid)] = ActivityActor(_int(held), _int(spent))
    for sku, held, confirmed in state["skus"]:
        ledger.skus[_str(sku)] = SkuActor(_int(held), _int(confirmed))
    orders: dict[str, Order] = {}
    for rec in state["orders"]:
        order = Order.from_record(rec)
        orders[_str(order.order_id)] = order
        if order.state is OrderState.HELD and order.expires_at is not None:
            ledger.expiry.schedule(_int(order.expires_at), Due.HOLD, order.order_id)
    return config, ledger, orders, _int(state["now"])
