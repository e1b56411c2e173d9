"""The check coordinator: one order, several actors, one decision, applied as one.

Every public method runs to completion without awaiting: evaluate, decide, apply to the ledger,
append the journal record. Because the event loop runs one such method at a time, concurrent
checks can never together pass a limit or a budget, and no lock is needed. The HTTP layer awaits
the journal's commit only after the method returns, before it answers.

State transitions (`_hold`, `_confirm`, `_cancel`, `_expire`, `_claim`) take plain data so that the
journal's replay drives exactly the same code.

Retention (`settings.order_retention`): every call moves the order book's horizon to `now -
retention` first (`_now`), and a settled order last changed at or before it is retired: a check
reusing its id is a 409 `order_retired`, a confirm, cancel or read of it a 404 `order_retired`,
whether the sweeper has moved it out of memory yet or not (see `OrderBook`).
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
        self._replayed_to = 0  # the latest time among the journal records replayed (see `replay`)

    # -- checks ---------------------------------------------------------------------------

    def check(self, req: CheckRequest, digest: bytes) -> tuple[CheckResponse, bool]:
        """An order's answer, and whether it repeats the first one: the same body again is
        answered as the first time and counts once (SPEC section 3); another body is a 409."""
        now = self._now()
        existing = self.orders.get(req.order_id)
        if existing is not None:
            if self.orders.is_retired(existing):
                raise self._retired(req.order_id, Conflict)
            if existing.digest != digest:
                raise Conflict("order_id_reused", f"order {req.order_id!r} was already checked with a different body")
            return decode_response(existing.response), True
        if req.order_id in self.orders.retired:  # free while none is (RetiredIds answers from its count)
            raise self._retired(req.order_id, Conflict)
        self.expire_due(now)
        verdict = decide(req, order_subjects(req), self.config, self.ledger, now)
        response = verdict.response
        order = verdict.order(req, digest, now)
        self.journal.append(("check", order))  # before the state changes: if it raises, nothing did
        self._hold(order)
        return response, False

    def claim(self, req: ClaimRequest) -> CheckResponse:
        """Coupon claim pre-check (see `decide.decide_claim`); an allowed claim counts at once."""
        now = self._now()
        self.expire_due(now)
        response, _ = decide_claim(req, self.config, self.ledger)
        if response.decision is Decision.ALLOW:
            self.journal.append(("claim", req.user_id, req.coupon_id, now))
            self._claim(req.user_id, req.coupon_id)
        return response

    # -- after the check ------------------------------------------------------------------

    def order(self, order_id: str) -> Order:
        """The order, unless unknown (404 `unknown_order`) or retired (404 `order_retired`)."""
        self._now()
        order = self.orders.get(order_id)
        if order is None:
            if order_id in self.orders.retired:
                raise self._retired(order_id, NotFound)
            raise NotFound("unknown_order", f"no order {order_id!r}")
        if self.orders.is_retired(order):
            raise self._retired(order_id, NotFound)
        return order

    def _retired(self, order_id: str, error: type[Conflict] | type[NotFound]) -> Conflict | NotFound:
        retention = self.config.settings.order_retention
        return error(
            "order_retired",
            f"order {order_id!r} was settled more than {retention} ago and retired (settings.order_retention): "
            "its id cannot be checked again and its record is gone",
        )

    def _now(self) -> int:
        """The time, with the order book's retention horizon moved up to it."""
        now = self.clock.now()
        self.orders.advance(now - self.config.settings.order_retention_seconds)
        return now

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
        """End every hold due at `now` and sweep due risk windows; returns the holds expired. (A
        hold is never retired, so a heap entry never meets a retired order but as a stale one:
        the order settled and retired since, and `get` finds nothing.)"""
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
        """An admin change (see `changes`): applied, then journaled. The retention horizon moves
        to now under the retention in force before (a longer one never brings a retired order
        back); replay does the same at the change's place in the journal."""
        self._now()
        self.config = apply_change(self.config, self.ledger, record)
        self.journal.append(record)

    def retire_step(self, limit: int) -> tuple[int, int, bool]:
        """One synchronous step of retirement (the sweeper's): see `OrderBook.retire_step`."""
        self._now()
        return self.orders.retire_step(limit)

    def pack_step(self, limit: int) -> tuple[int, int, bool]:
        """One synchronous step of packing settled orders (the sweeper's): see `OrderBook.pack_step`."""
        return self.orders.pack_step(self.clock.now() - self.orders.PACK_AFTER, limit)

    def rest_step(self, limit: int) -> tuple[int, int, bool]:
        """One synchronous step of putting idle subjects to rest (the sweeper's): see `Ledger.rest_step`."""
        return self.ledger.rest_step(self.clock.now(), limit)

    def adopt(self, config: Config, ledger: Ledger, orders: OrderBook) -> None:
        """Take over restored state (a snapshot) as a whole."""
        self.config, self.ledger, self.orders = config, ledger, orders
        self.held = len(orders.held())

    def replay(self, record: list[Any]) -> int:
        """Apply one journal record exactly as the original call did; returns the record's time
        (0 for admin changes). Raises if the record does not fit the state (a corrupt journal).

        The retention horizon moves at each record to the record's time (an admin change, which
        has none, to the latest time replayed), under the retention in force there. So a replay
        never meets a retired order: the serving process moved its horizon at the same records,
        at the same or later times (it also moves it at reads and sweeps), under the same
        settings, so its horizon was at least the replay's at every record. An order retired in
        the replayed state (or in the snapshot it starts from, written the same way) was retired
        in the serving process by then, which from then on refused every call on it and
        journaled none: no later `confirm`, `cancel` or `expire` record names it, and no `check`
        record reuses its id (the serving process refuses a retired id before it journals; a
        `check` record is not tested against the retired fingerprints, whose one-in-2**64 false
        match must not stop a start). A
        hold never retires, so the `expire` of a hold is always replayed onto a live order. A
        record that does meet a retired order is a journal that does not fit the state, as any
        other mismatch."""
        kind = record[0]
        if kind == "check":
            order = msgspec.convert(record[1], Order)
            self._replayed(order.updated_at)
            self._hold(order)
            return order.updated_at
        if kind in ("confirm", "cancel", "expire"):
            t = self._replayed(record[2])
            found = self.orders.get(record[1])
            if found is None or self.orders.is_retired(found):
                raise ValueError(f"journal: {kind} of order {record[1]} that the state does not hold or retired")
            expected = OrderState.CONFIRMED if kind == "cancel" else OrderState.HELD
            if found.state is not expected and not (kind == "cancel" and found.state is OrderState.HELD):
                raise ValueError(f"journal: {kind} of order {found.order_id} in state {found.state.value}")
            {"confirm": self._confirm, "cancel": self._cancel, "expire": self._expire}[kind](found, t)
            return t
        if kind == "claim":
            t = self._replayed(record[3])
            self._claim(record[1], record[2])
            return t
        if kind == "clock":
            return self._replayed(record[1])
        self._replayed(self._replayed_to)
        self.config = apply_change(self.config, self.ledger, tuple(record))
        return 0

    def _replayed(self, t: Any) -> int:
        """A replayed record's time: the horizon moves to it, as it did when the record was made."""
        when = int(t)
        self._replayed_to = max(self._replayed_to, when)
        self.orders.advance(self._replayed_to - self.config.settings.order_retention_seconds)
        return when

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
        self.orders.settled_now(order.order_id)

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
        self.orders.settled_now(order.order_id)

    def _expire(self, order: Order, now: int) -> None:
        assert order.footprint is not None
        self.ledger.release(order.created_at, user_key(order.user_id), order.footprint, confirmed=None)
        order.footprint = None
        order.state = OrderState.EXPIRED
        self.held -= 1
        order.updated_at = now
        self.orders.settled_now(order.order_id)

    def _claim(self, user_id: str, coupon_id: str) -> None:
        self.ledger.claim(user_key(user_id), coupon_id)
