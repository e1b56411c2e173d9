"""Property-based test of the coordinator: random checks, confirms, cancels, expiries and clock moves.

A hypothesis state machine drives `node.coordinator.Coordinator` directly, on a manual clock,
over a small configuration with tight limits (SKU limits per user and device, an SPU limit,
activity user and SKU limits, small budgets, an activity window, a price fuse, risk rules with
short windows, an auto-blacklist). Alongside it runs an independent model of SPEC section 3: the
orders as held, from which every decision, reason (with its numbers), shadow hit, strip and
payable is predicted.

After every step:

- every order's state matches the model;
- no limit or budget is passed: for every subject and counter, held + confirmed quantity is within
  its limit; every enforced risk window is within its limit; every activity's spent + held is
  within its budget;
- every counter of the ledger equals a recount from the live orders (those whose footprint is not
  None): subject counters, risk windows, activity budgets, SKU units, auto-blacklist totals;
- the subject counters also equal a recount from the model's orders.

Whitelisted users and configuration changes are out of scope here: limits are only guaranteed
for orders allowed under the limit in force.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from domain.clock import ManualClock
from gateway.codec import digest
from domain.config import Config
from node.coordinator import Coordinator
from domain.document import build_config
from domain.errors import ApiError, Conflict, Gone
from domain.schema import CheckRequest, CheckResponse
from domain.types import OrderState, key

T0 = 1_800_000_000
HOLD_TTL = 30
COST = 800
USERS = ("u1", "u2", "u3")
DEVICES = ("d1", "d2", None)
AUTO_DISCOUNT_COST = 700

SKUS: dict[str, dict[str, Any]] = {
    "S1": {"spu_id": "P1", "category": "phone", "limits": {"user": 3, "device": 4}},
    "S2": {"spu_id": "P1", "category": "phone", "limits": {"user": 2}},
    "S3": {"spu_id": "P2", "category": "case", "limits": {}, "price_fuse": {"base": "cost", "ratio": "1.0"}},
}
SPUS: dict[str, dict[str, int]] = {"P1": {"user": 4, "device": 5}}
ACTIVITIES: dict[str, dict[str, Any]] = {
    "A1": {"budget": 600, "user_limit": 3, "sku_limits": {"S1": 2}},
    "A2": {"budget": 400, "user_limit": 4},
    "A3": {"starts_at": T0 + 10, "ends_at": T0 + 150},
}
# (rule_id, subject, scope field, scope value, window seconds, max_quantity, mode)
RULES = (
    ("R1", "user", "category", "phone", 20, 3, "enforce"),
    ("R2", "device", None, None, 45, 5, "enforce"),
    ("R3", "user", "sku_id", "S3", 10, 1, "shadow"),
)
DEGRADABLE = {"ACTIVITY_NOT_ACTIVE", "ACTIVITY_BUDGET_EXHAUSTED", "PRICE_FUSE", "ACTIVITY_SKU_LIMIT", "ACTIVITY_USER_LIMIT"}


def config_doc(release_on_cancel: bool) -> dict[str, Any]:
    skus = []
    for sku_id, s in SKUS.items():
        entry: dict[str, Any] = {
            "sku_id": sku_id,
            "spu_id": s["spu_id"],
            "category": s["category"],
            "cost_price": COST,
            "original_price": 1000,
            "limits": s["limits"],
        }
        if "price_fuse" in s:
            entry["price_fuse"] = s["price_fuse"]
        skus.append(entry)
    rules = []
    for rule_id, subject, field_, value, window, max_q, mode in RULES:
        rules.append(
            {
                "rule_id": rule_id,
                "subject": subject,
                "scope": {field_: value} if field_ else {},
                "window": window,
                "max_quantity": max_q,
                "mode": mode,
            }
        )
    return {
        "settings": {"hold_ttl": HOLD_TTL, "locale": "en", "release_on_cancel": release_on_cancel},
        "skus": skus,
        "spus": [{"spu_id": p, "limits": limits} for p, limits in SPUS.items()],
        "activities": [{"activity_id": a, **spec} for a, spec in ACTIVITIES.items()],
        "rules": rules,
        "auto_blacklist": {"discount_cost": AUTO_DISCOUNT_COST},
    }


# -- the model ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Disc:
    id: str
    amount: int
    activity: str | None
    partner: bool

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "amount": self.amount}
        if self.activity is not None:
            out["activity_id"] = self.activity
        if self.partner:
            out["funded_by"] = "partner"
        return out


@dataclass(frozen=True)
class Line:
    sku: str
    qty: int
    unit_price: int
    discounts: tuple[Disc, ...]

    @property
    def gross(self) -> int:
        return self.qty * self.unit_price

    @property
    def counted(self) -> int:
        return sum(d.amount for d in self.discounts if not d.partner)

    @property
    def activities(self) -> list[str]:
        out: list[str] = []
        for d in self.discounts:
            if d.activity is not None and d.activity not in out:
                out.append(d.activity)
        return out

    def matches(self, field_: str | None, value: str | None) -> bool:
        if field_ is None:
            return True
        if field_ == "sku_id":
            return self.sku == value
        return bool(SKUS[self.sku].get(field_) == value)


@dataclass
class ModelOrder:
    order_id: str
    user: str
    device: str | None
    created_at: int
    expires_at: int | None
    state: str
    lines: tuple[Line, ...]  # as held: without stripped discounts
    body: dict[str, Any]
    response: dict[str, Any]
    kept: bool = False  # a confirmed order cancelled without release_on_cancel still counts

    @property
    def live(self) -> bool:
        return self.state in ("held", "confirmed") or self.kept

    def subject(self, name: str) -> str | None:
        return self.user if name == "user" else self.device


def why(code: str, **fields: Any) -> dict[str, Any]:
    """A reason as the wire shows it: fields that are None are left out; degradable always there."""
    out: dict[str, Any] = {"code": code, "degradable": code in DEGRADABLE}
    out.update({k: v for k, v in fields.items() if v is not None})
    return out


def canon(reasons: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in reasons)


@dataclass
class Evaluation:
    reasons: list[dict[str, Any]] = field(default_factory=list)
    shadow: list[dict[str, Any]] = field(default_factory=list)
    strip: set[tuple[int, int]] = field(default_factory=set)


class Model:
    def __init__(self, release_on_cancel: bool) -> None:
        self.release_on_cancel = release_on_cancel
        self.orders: dict[str, ModelOrder] = {}

    def live(self) -> list[ModelOrder]:
        return [o for o in self.orders.values() if o.live]

    def expire(self, now: int) -> int:
        n = 0
        for o in self.orders.values():
            if o.state == "held" and o.expires_at is not None and o.expires_at <= now:
                o.state = "expired"
                n += 1
        return n

    def auto_blacklisted(self, user: str) -> bool:
        confirmed = [o for o in self.orders.values() if o.user == user and o.state == "confirmed"]
        return sum(line.counted for o in confirmed for line in o.lines) >= AUTO_DISCOUNT_COST

    def evaluate(self, user: str, device: str | None, lines: tuple[Line, ...], now: int) -> Evaluation:
        ev = Evaluation()
        live = self.live()
        fused: set[int] = set()
        act_amount: dict[str, int] = {}
        act_qty: Counter[str] = Counter()
        act_sku_qty: Counter[tuple[str, str]] = Counter()
        sku_qty: Counter[str] = Counter()
        spu_qty: Counter[str] = Counter()
        for i, line in enumerate(lines):
            if "price_fuse" in SKUS[line.sku] and line.gross - line.counted < COST * line.qty:
                ev.reasons.append(why("PRICE_FUSE", sku_id=line.sku))
                fused.add(i)
            for d in line.discounts:
                if d.activity is not None:
                    act_amount[d.activity] = act_amount.get(d.activity, 0) + d.amount
            for a in line.activities:
                act_qty[a] += line.qty
                act_sku_qty[(a, line.sku)] += line.qty
            sku_qty[line.sku] += line.qty
            spu_qty[SKUS[line.sku]["spu_id"]] += line.qty
        if self.auto_blacklisted(user):
            ev.reasons.append(why("BLACKLISTED", subject="user", value=user, auto=True))

        failed: set[str] = set()
        for aid, amount in act_amount.items():
            spec = ACTIVITIES[aid]
            before = len(ev.reasons)
            starts, ends = spec.get("starts_at"), spec.get("ends_at")
            if (starts is not None and now < starts) or (ends is not None and now >= ends):
                ev.reasons.append(why("ACTIVITY_NOT_ACTIVE", activity_id=aid))
            budget = spec.get("budget")
            if budget is not None:
                used = sum(d.amount for o in live for ln in o.lines for d in ln.discounts if d.activity == aid)
                if used >= budget or used + amount > budget:
                    ev.reasons.append(
                        why("ACTIVITY_BUDGET_EXHAUSTED", activity_id=aid, limit=budget, used=used, requested=amount)
                    )
            mine = [o for o in live if o.user == user]
            user_limit = spec.get("user_limit")
            if user_limit is not None:
                used = sum(ln.qty for o in mine for ln in o.lines if aid in ln.activities)
                if used + act_qty[aid] > user_limit:
                    ev.reasons.append(
                        why(
                            "ACTIVITY_USER_LIMIT",
                            activity_id=aid,
                            subject="user",
                            limit=user_limit,
                            used=used,
                            requested=act_qty[aid],
                        )
                    )
            for (a, sku), q in act_sku_qty.items():
                limit = spec.get("sku_limits", {}).get(sku) if a == aid else None
                if limit is None:
                    continue
                used = sum(ln.qty for o in mine for ln in o.lines if ln.sku == sku and aid in ln.activities)
                if used + q > limit:
                    ev.reasons.append(
                        why(
                            "ACTIVITY_SKU_LIMIT",
                            activity_id=aid,
                            sku_id=sku,
                            subject="user",
                            limit=limit,
                            used=used,
                            requested=q,
                        )
                    )
            if len(ev.reasons) > before:
                failed.add(aid)

        subjects = {"user": user, "device": device}
        for sku, q in sku_qty.items():
            for subject, limit in SKUS[sku]["limits"].items():
                who = subjects[subject]
                if who is None:
                    continue
                used = sum(ln.qty for o in live if o.subject(subject) == who for ln in o.lines if ln.sku == sku)
                if used + q > limit:
                    ev.reasons.append(why("SKU_LIMIT", sku_id=sku, subject=subject, limit=limit, used=used, requested=q))
        for spu, q in spu_qty.items():
            for subject, limit in SPUS.get(spu, {}).items():
                who = subjects[subject]
                if who is None:
                    continue
                used = sum(
                    ln.qty
                    for o in live
                    if o.subject(subject) == who
                    for ln in o.lines
                    if SKUS[ln.sku]["spu_id"] == spu
                )
                if used + q > limit:
                    ev.reasons.append(why("SPU_LIMIT", spu_id=spu, subject=subject, limit=limit, used=used, requested=q))

        for rule_id, subject, field_, value, window, max_q, mode in RULES:
            who = subjects[subject]
            if who is None:
                continue
            q = sum(ln.qty for ln in lines if ln.matches(field_, value))
            if not q:
                continue
            used = sum(
                ln.qty
                for o in live
                if o.subject(subject) == who and o.created_at > now - window
                for ln in o.lines
                if ln.matches(field_, value)
            )
            if used + q > max_q:
                hit = why("RISK_RULE", rule_id=rule_id, subject=subject, limit=max_q, used=used, requested=q)
                (ev.shadow if mode == "shadow" else ev.reasons).append(hit)

        if ev.reasons:
            for i, line in enumerate(lines):
                for j, d in enumerate(line.discounts):
                    if d.activity in failed or (i in fused and not d.partner):
                        ev.strip.add((i, j))
        return ev


def strip(lines: tuple[Line, ...], which: set[tuple[int, int]]) -> tuple[Line, ...]:
    return tuple(
        Line(ln.sku, ln.qty, ln.unit_price, tuple(d for j, d in enumerate(ln.discounts) if (i, j) not in which))
        for i, ln in enumerate(lines)
    )


# -- strategies --------------------------------------------------------------------------------------

DISCOUNT_CHOICES: tuple[tuple[str, str | None, bool, tuple[int, ...]], ...] = (
    # (id prefix, activity, partner-funded, amounts)
    ("A1", "A1", False, (0, 100, 250)),
    ("A2", "A2", False, (50, 150)),
    ("A2P", "A2", True, (60,)),
    ("A3", "A3", False, (100,)),
    ("SHOP", None, False, (100, 300)),
    ("BEANS", None, True, (100,)),
)


@st.composite
def lines_strategy(draw: st.DrawFn) -> tuple[Line, ...]:
    n = draw(st.integers(1, 2))
    out: list[Line] = []
    for i in range(n):
        sku = draw(st.sampled_from(sorted(SKUS)))
        qty = draw(st.integers(1, 3))
        unit_price = draw(st.sampled_from((1000, 1000, 1200, 700)))
        discounts: list[Disc] = []
        total = 0
        for prefix, activity, partner, amounts in DISCOUNT_CHOICES:
            if not draw(st.booleans()):
                continue
            amount = draw(st.sampled_from(amounts))
            if total + amount > qty * unit_price:
                continue
            total += amount
            discounts.append(Disc(f"{prefix}-{i}", amount, activity, partner))
        out.append(Line(sku, qty, unit_price, tuple(discounts)))
    return tuple(out)


def body_of(order_id: str, user: str, device: str | None, lines: tuple[Line, ...], degrade: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "order_id": order_id,
        "user_id": user,
        "items": [
            {
                "sku_id": ln.sku,
                "quantity": ln.qty,
                "unit_price": ln.unit_price,
                "discounts": [d.body() for d in ln.discounts],
            }
            for ln in lines
        ],
        "on_refusal": "degrade" if degrade else "deny",
    }
    if device is not None:
        body["device_id"] = device
    return body


def as_request(body: dict[str, Any]) -> tuple[CheckRequest, bytes]:
    req = msgspec.convert(body, CheckRequest)
    return req, digest(req)


def wire(response: CheckResponse) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(response)
    return out


# -- the machine -------------------------------------------------------------------------------------


class GatewayMachine(RuleBasedStateMachine):
    release_on_cancel = True

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(T0)
        self.config: Config = build_config(config_doc(self.release_on_cancel))
        self.coordinator = Coordinator(self.config, self.clock)
        self.model = Model(self.release_on_cancel)
        self.serial = 0

    @property
    def now(self) -> int:
        return self.clock.now()

    # -- operations --

    @rule(
        user=st.sampled_from(USERS),
        device=st.sampled_from(DEVICES),
        lines=lines_strategy(),
        degrade=st.booleans(),
    )
    def check(self, user: str, device: str | None, lines: tuple[Line, ...], degrade: bool) -> None:
        self.serial += 1
        order_id = f"o{self.serial}"
        body = body_of(order_id, user, device, lines, degrade)
        req, dig = as_request(body)
        res = wire(self.coordinator.check(req, dig)[0])

        now = self.now
        self.model.expire(now)
        first = self.model.evaluate(user, device, lines, now)
        held: tuple[Line, ...] | None = None
        stripped: list[str] = []
        reasons, shadow = first.reasons, first.shadow
        if not first.reasons:
            decision, held = "allow", lines
        elif degrade and all(r["code"] in DEGRADABLE for r in first.reasons):
            again_lines = strip(lines, first.strip)
            again = self.model.evaluate(user, device, again_lines, now)
            if not again.reasons:
                decision, held, shadow = "degrade", again_lines, again.shadow
                stripped = [lines[i].discounts[j].id for i, j in sorted(first.strip)]
            else:
                decision = "deny"
                reasons = first.reasons + [r for r in again.reasons if r not in first.reasons]
        else:
            decision = "deny"

        assert res["order_id"] == order_id
        assert res["decision"] == decision, (res, reasons)
        assert canon(res["reasons"]) == canon(reasons), res
        assert canon(res["shadow"]) == canon(shadow), res
        assert res["warnings"] == []
        if held is None:
            assert res["hold"] is None and res["payable"] is None and res["stripped"] == []
            assert res["message"] is not None
        else:
            assert res["hold"] == {"expires_at": now + HOLD_TTL}
            assert res["payable"] == sum(ln.gross - sum(d.amount for d in ln.discounts) for ln in held)
            assert res["stripped"] == stripped
            assert (res["message"] is None) is (decision == "allow")
        self.model.orders[order_id] = ModelOrder(
            order_id=order_id,
            user=user,
            device=device,
            created_at=now,
            expires_at=None if held is None else now + HOLD_TTL,
            state="denied" if held is None else "held",
            lines=held if held is not None else lines,
            body=body,
            response=res,
        )

    @precondition(lambda self: bool(self.model.orders))
    @rule(data=st.data())
    def repeat_check(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.model.orders)))
        mo = self.model.orders[order_id]
        req, dig = as_request(mo.body)
        assert wire(self.coordinator.check(req, dig)[0]) == mo.response
        changed = copy.deepcopy(mo.body)
        changed["items"][0]["quantity"] += 1
        with pytest.raises(Conflict):
            self.coordinator.check(*as_request(changed))

    @precondition(lambda self: bool(self.model.orders))
    @rule(data=st.data())
    def confirm(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.model.orders)))
        mo = self.model.orders[order_id]
        self.model.expire(self.now)
        if mo.state in ("held", "confirmed"):
            view = self.coordinator.confirm(order_id)
            mo.state = "confirmed"
            assert view.state is OrderState.CONFIRMED
        else:
            expected: type[ApiError] = Gone if mo.state == "expired" else Conflict
            with pytest.raises(expected):
                self.coordinator.confirm(order_id)

    @precondition(lambda self: bool(self.model.orders))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        order_id = data.draw(st.sampled_from(sorted(self.model.orders)))
        mo = self.model.orders[order_id]
        self.model.expire(self.now)
        view = self.coordinator.cancel(order_id)
        if mo.state == "confirmed":
            mo.kept = not self.model.release_on_cancel
            mo.state = "cancelled"
        elif mo.state == "held":
            mo.state = "cancelled"
        assert view.state.value == mo.state

    @rule()
    def expire(self) -> None:
        assert self.coordinator.expire_due(self.now) == self.model.expire(self.now)

    @rule(seconds=st.sampled_from((0, 1, 5, 9, 10, 19, 20, 29, 30, 31, 45)))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    # -- invariants --

    @invariant()
    def states_match_the_model(self) -> None:
        assert set(self.coordinator.orders) == set(self.model.orders)
        for order_id, mo in self.model.orders.items():
            order = self.coordinator.orders[order_id]
            assert order.state.value == mo.state, order_id
            assert (order.footprint is not None) is mo.live, order_id

    @invariant()
    def no_limit_or_budget_is_passed(self) -> None:
        cfg = self.config
        ledger = self.coordinator.ledger
        for skey, actor in ledger.subjects.items():
            kind, _, _ = skey.partition("\x1f")
            for counter, qty in actor.counts.items():
                assert qty > 0, (skey, counter, qty)
                parts = counter.split("\x1f")
                limit: int | None = None
                if parts[0] == "sku" and parts[1] in cfg.skus:
                    limit = getattr(cfg.skus[parts[1]].limits, kind, None)
                elif parts[0] == "spu" and parts[1] in cfg.spus:
                    limit = getattr(cfg.spus[parts[1]].limits, kind, None)
                elif parts[0] == "act":
                    assert kind == "user"
                    limit = cfg.activities[parts[1]].user_limit
                elif parts[0] == "actsku":
                    assert kind == "user"
                    limit = cfg.activities[parts[1]].sku_limits.get(parts[2])
                if limit is not None:
                    assert qty <= limit, (skey, counter, qty, limit)
            for rule_ in cfg.rules.values():
                if rule_.mode != "enforce" or rule_.subject.value != kind:
                    continue
                window = actor.windows.get(rule_.window_key)
                if window is not None:
                    count = copy.deepcopy(window).count(self.now)
                    assert count <= rule_.limit(cfg.settings.multiplier), (skey, rule_.rule_id, count)
        for aid, activity in cfg.activities.items():
            actor_ = ledger.activities.get(aid)
            held, spent = (actor_.held, actor_.spent) if actor_ is not None else (0, 0)
            assert held >= 0 and spent >= 0
            if activity.budget is not None:
                assert held + spent <= activity.budget, (aid, held, spent)

    @invariant()
    def counters_equal_a_recount_of_live_footprints(self) -> None:
        ledger = self.coordinator.ledger
        now = self.now
        counts: Counter[tuple[str, str]] = Counter()
        windows: Counter[tuple[str, str]] = Counter()
        held: Counter[str] = Counter()
        spent: Counter[str] = Counter()
        units_held: Counter[str] = Counter()
        units_confirmed: Counter[str] = Counter()
        discount_total: Counter[str] = Counter()
        margin_total: Counter[str] = Counter()
        for order in self.coordinator.orders.values():
            fp = order.footprint
            if fp is None:
                continue
            for skey, counter, qty in fp.increments():
                counts[(skey, counter)] += qty
            for skey, wkey, seconds, qty in fp.windows:
                if order.created_at > now - seconds:
                    windows[(skey, wkey)] += qty
            budget, units = (held, units_held) if order.state is OrderState.HELD else (spent, units_confirmed)
            for aid, amount in fp.budget:
                budget[aid] += amount
            for sku_id, qty in fp.units:
                units[sku_id] += qty
            if order.state is OrderState.CONFIRMED:
                discount_total[key("user", order.user_id)] += fp.discount
                margin_total[key("user", order.user_id)] += fp.margin

        def nonzero(c: Counter[Any] | dict[Any, int]) -> dict[Any, int]:
            return {k: v for k, v in c.items() if v}

        ledger_counts = {(s, c): q for s, a in ledger.subjects.items() for c, q in a.counts.items()}
        assert nonzero(ledger_counts) == nonzero(counts)
        ledger_windows = {
            (s, w): copy.deepcopy(win).count(now) for s, a in ledger.subjects.items() for w, win in a.windows.items()
        }
        assert nonzero(ledger_windows) == nonzero(windows)
        assert nonzero({a: x.held for a, x in ledger.activities.items()}) == nonzero(held)
        assert nonzero({a: x.spent for a, x in ledger.activities.items()}) == nonzero(spent)
        assert nonzero({s: x.held for s, x in ledger.skus.items()}) == nonzero(units_held)
        assert nonzero({s: x.confirmed for s, x in ledger.skus.items()}) == nonzero(units_confirmed)
        assert nonzero({s: a.discount_total for s, a in ledger.subjects.items()}) == nonzero(discount_total)
        assert nonzero({s: a.margin_total for s, a in ledger.subjects.items()}) == nonzero(margin_total)

    @invariant()
    def counters_equal_a_recount_of_the_model(self) -> None:
        expected: Counter[tuple[str, str]] = Counter()
        for o in self.model.live():
            subjects = [key("user", o.user)] + ([key("device", o.device)] if o.device is not None else [])
            for ln in o.lines:
                for s in subjects:
                    expected[(s, key("sku", ln.sku))] += ln.qty
                    expected[(s, key("spu", SKUS[ln.sku]["spu_id"]))] += ln.qty
                for a in ln.activities:
                    expected[(key("user", o.user), key("act", a))] += ln.qty
                    expected[(key("user", o.user), key("actsku", a, ln.sku))] += ln.qty
        ledger = self.coordinator.ledger
        actual = {(s, c): q for s, a in ledger.subjects.items() for c, q in a.counts.items() if q}
        assert actual == dict(expected)


class KeepOnCancelMachine(GatewayMachine):
    release_on_cancel = False


PROPERTY_SETTINGS = settings(
    max_examples=80,
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

GatewayMachine.TestCase.settings = PROPERTY_SETTINGS
KeepOnCancelMachine.TestCase.settings = PROPERTY_SETTINGS

TestReleaseOnCancel = GatewayMachine.TestCase
TestKeepOnCancel = KeepOnCancelMachine.TestCase
