"""The check coordinator: one order, several actors, one decision, applied as one.

Every public method runs to completion without awaiting: evaluate, decide, apply to the ledger,
append the journal record. Because the event loop runs one such method at a time, concurrent
checks can never together pass a limit or a budget, and no lock is needed. The HTTP layer awaits
the journal's commit only after the method returns, before it answers.

State transitions (`_hold`, `_confirm`, `_cancel`, `_expire`, `_claim`) take plain data so that the
journal's replay drives exactly the same code.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec

from actors.expiry import Due
from actors.ledger import Ledger
from actors.orders import Order, OrderBook
from rules.changes import apply_change
from domain.clock import Clock
from domain.config import Config
from rules.decide import decide, decide_claim, decode_response, order_view
from domain.errors import Conflict, Gone, NotFound
from domain.schema import CheckRequest, CheckResponse, ClaimRequest, OrderView
from rules.subjects import order_subjects, user_key
from domain.types import Decision, OrderState, Record



class RecordSink(Protocol):
    """Where state changes go as records: the journal, or nowhere when durability is off.

    `append` is called inside the coordinator's synchronous step; `commit` is awaited by the HTTP
    layer before it answers, so nothing is acknowledged before it is durable.
    """

    def append(self, record: Record) -> None: ...

    async def commit(self) -> None: ...

    def writable(self) -> bool: ...

    async def retry(self) -> bool: ...


class NoJournal:
    def append(self, record: Record) -> None:
        pass

    async def commit(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    async def retry(self) -> bool:
        return True


class Coordinator:
    def __init__(self, config: Config, clock: Clock, journal: RecordSink | None = None) -> None:
        self.config = config
        self.clock = clock
        self.ledger = Ledger()
        self.orders = OrderBook()
        self.held = 0  # orders in state HELD, for /metrics (see `adopt`)
        self.journal: RecordSink = journal or NoJournal()

    # -- checks ---------------------------------------------------------------------------

    def check(self, req: CheckRequest, digest: bytes) -> tuple[CheckResponse, bool]:
        """An order's answer, and whether it repeats the first one: the same body again is
        answered as the first time and counts once (SPEC section 3); another body is a 409."""
        existing = self.orders.get(req.order_id)
        if existing is not None:
            if existing.digest != digest:
                raise Conflict("order_id_reused", f"order {req.order_id!r} was already checked with a different body")
            return decode_response(existing.response), True
        now = self.clock.now()
        self.expire_due(now)
        verdict = decide(req, order_subjects(req), self.config, self.ledger, now)
        response = verdict.response
        order = verdict.order(req, digest, now)
        self.journal.append(("check", order))  # before the state changes: if it raises, nothing did
        self._hold(order)
        return response, False

    def claim(self, req: ClaimRequest) -> CheckResponse:
        """Coupon claim pre-check (see `decide.decide_claim`); an allowed claim counts at once."""
        now = self.clock.now()
        self.expire_due(now)
        response, _ = decide_claim(req, self.config, self.ledger)
        if response.decision is Decision.ALLOW:
            self.journal.append(("claim", req.user_id, req.coupon_id, now))
            self._claim(req.user_id, req.coupon_id)
        return response

    # -- after the check ------------------------------------------------------------------

    def order(self, order_id: str) -> Order:
        order = self.orders.get(order_id)
        if order is None:
            raise NotFound("unknown_order", f"no order {order_id!r}")
        return order

    def confirm(self, order_id: str) -> OrderView:
        order = self.order(order_id)
        now = self.clock.now()
        self.expire_due(now)
        if order.state is OrderState.HELD:
            self._confirm(order, now)
            self.journal.append(("confirm", order_id, now))
        elif order.state is OrderState.EXPIRED:
            raise Gone("hold_expired", f"the hold of order {order_id!r} expired at {order.expires_at}")
        elif order.state is not OrderState.CONFIRMED:
            raise Conflict("order_not_held", f"order {order_id!r} is {order.state.value} and cannot be confirmed")
        return self.view(order)

    def cancel(self, order_id: str) -> OrderView:
        order = self.order(order_id)
        now = self.clock.now()
        self.expire_due(now)
        if order.state in (OrderState.HELD, OrderState.CONFIRMED):
            self._cancel(order, now)
            self.journal.append(("cancel", order_id, now))
        return self.view(order)

    def expire_due(self, now: int) -> int:
        """End every hold due at `now` and sweep due risk windows; returns the holds expired."""
        if not self.ledger.expiry.any_due(now):
            return 0
        expired = 0
        for when, kind, ident in self.ledger.expiry.pop_due(now):
            if kind == Due.WINDOWS:
                self.ledger.sweep_windows(ident, when, now)
                continue
            order = self.orders.get(ident)
            if order is not None and order.state is OrderState.HELD and order.expires_at == when:
                self._expire(order, now)
                self.journal.append(("expire", order.order_id, now))
                expired += 1
        return expired

    def view(self, order: Order) -> OrderView:
        return order_view(order, self.clock.now())

    def change(self, record: Record) -> None:
        """An admin change (see `changes`): applied, then journaled."""
        self.config = apply_change(self.config, self.ledger, record)
        self.journal.append(record)

    def adopt(self, config: Config, ledger: Ledger, orders: OrderBook) -> None:
        """Take over restored state (a snapshot) as a whole."""
        self.config, self.ledger, self.orders = config, ledger, orders
        self.held = len(orders.held())

    def replay(self, record: list[Any]) -> int:
        """Apply one journal record exactly as the original call did; returns the record's time
        (0 for admin changes). Raises if the record does not fit the state (a corrupt journal)."""
        kind = record[0]
        if kind == "check":
            order = msgspec.convert(record[1], Order)
            self._hold(order)
            return order.updated_at
        if kind in ("confirm", "cancel", "expire"):
            order, t = self.orders[record[1]], record[2]
            expected = OrderState.CONFIRMED if kind == "cancel" else OrderState.HELD
            if order.state is not expected and not (kind == "cancel" and order.state is OrderState.HELD):
                raise ValueError(f"journal: {kind} of order {order.order_id} in state {order.state.value}")
            {"confirm": self._confirm, "cancel": self._cancel, "expire": self._expire}[kind](order, t)
            return int(t)
        if kind == "claim":
            self._claim(record[1], record[2])
            return int(record[3])
        if kind == "clock":
            return int(record[1])
        self.config = apply_change(self.config, self.ledger, tuple(record))
        return 0

    # -- state transitions, shared with journal replay -------------------------------------

    def _hold(self, order: Order) -> None:
        self.orders[order.order_id] = order
        if order.state is OrderState.HELD and order.footprint is not None and order.expires_at is not None:
            self.held += 1
            self.ledger.hold(order.created_at, order.footprint)
            self.ledger.expiry.schedule(order.expires_at, Due.HOLD, order.order_id)

    def _confirm(self, order: Order, now: int) -> None:
        assert order.footprint is not None
        order.pardons = self.ledger.confirm(user_key(order.user_id), order.footprint)
        order.state = OrderState.CONFIRMED
        self.held -= 1
        order.updated_at = now

    def _cancel(self, order: Order, now: int) -> None:
        fp = order.footprint
        assert fp is not None
        user = user_key(order.user_id)
        if order.state is OrderState.HELD:
            self.held -= 1
            self.ledger.release(order.created_at, user, fp, confirmed=None)
            order.footprint = None
        elif self.config.settings.release_on_cancel:
            self.ledger.release(order.created_at, user, fp, confirmed=order.pardons)
            order.footprint = None
        else:
            self.ledger.unconfirm_totals(user, fp, order.pardons)  # quotas stay used; the order no longer counts as farmed
        order.state = OrderState.CANCELLED
        order.updated_at = now

    def _expire(self, order: Order, now: int) -> None:
        assert order.footprint is not None
        self.ledger.release(order.created_at, user_key(order.user_id), order.footprint, confirmed=None)
        order.footprint = None
        order.state = OrderState.EXPIRED
        self.held -= 1
        order.updated_at = now

    def _claim(self, user_id: str, coupon_id: str) -> None:
        self.ledger.claim(user_key(user_id), coupon_id)
