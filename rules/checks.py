"""The checks of SPEC section 3, evaluated over the actors without changing them.

`evaluate` reads the ledger and the configuration and returns every failed check (it does not
stop at the first) together with the footprint the order would hold. It never awaits and changes
no count (it only thaws the order's cold subjects), so the coordinator can evaluate, decide and
apply in one uninterrupted step.

This is the hot path of every request: it is written as a few flat loops over plain dicts, with
keys precomputed on the configuration entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from actors.ledger import Ledger
from actors.orders import Footprint
from actors.subject import SubjectActor
from domain.config import Config, Sku, Spu, sku_scopes
from domain.schema import CheckRequest
from rules.subjects import Subjects, blacklist_reasons, whitelisted
from domain.types import (
    LIMIT_SUBJECTS,
    Code,
    CounterKey,
    Notice,
    Reason,
    Subject,
    SubjectKey,
    WindowKey,
    clamp,
    counter_key,
    reason,
)


@dataclass(slots=True)
class Evaluation:
    reasons: list[Reason] = field(default_factory=list)
    shadow: list[Reason] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    footprint: Footprint = field(default_factory=Footprint)
    payable: int = 0
    whitelisted: bool = False
    # (item index, discount index) of the discounts behind the degradable reasons.
    strip: set[tuple[int, int]] = field(default_factory=set)


@dataclass(slots=True)
class Tally:
    """The order's quantities and amounts, summed once over its items for every later check."""

    sku_qty: dict[str, int] = field(default_factory=dict)
    spu_qty: dict[str, int] = field(default_factory=dict)
    scope_qty: dict[str, int] = field(default_factory=dict)
    act_qty: dict[str, int] = field(default_factory=dict)
    act_sku_qty: dict[tuple[str, str], int] = field(default_factory=dict)
    act_amount: dict[str, int] = field(default_factory=dict)
    fused_items: set[int] = field(default_factory=set)
    discount: int = 0
    margin: int = 0


def unknown_entry(cfg: Config, reasons: list[Reason], notices: list[Notice], code: Code, **where: str) -> None:
    """A SKU, activity or coupon missing from config: skip its rules, and warn or refuse per settings."""
    if cfg.settings.unknown == "deny":
        reasons.append(reason(code, **where))
    else:
        what = next(iter(where.values()))
        notices.append(Notice(code=code.value, message=f"{what} is not configured; its rules were skipped", **where))


def _items(req: CheckRequest, cfg: Config, ev: Evaluation, stripped: set[tuple[int, int]]) -> Tally:
    """Per item: amounts, the price fuse, blacklisted discount ids, and the quantities."""
    t = Tally()
    white_discounts = cfg.whitelist.entries["discount"]
    black_discounts = cfg.blacklist.entries["discount"]
    sku_qty, spu_qty, scope_qty = t.sku_qty, t.spu_qty, t.scope_qty
    for i, item in enumerate(req.items):
        q = item.quantity
        sku_id = item.sku_id
        gross = item.unit_price * q
        on_item = counted = 0
        item_acts: list[str] = []
        for j, d in enumerate(item.discounts):
            if stripped and (i, j) in stripped:
                continue
            on_item += d.amount
            if d.funded_by == "platform" and d.id not in white_discounts:
                counted += d.amount
            if d.id in black_discounts:
                ev.reasons.append(reason(Code.BLACKLISTED, subject="discount", discount_id=d.id, sku_id=sku_id))
            aid = d.activity_id
            if aid is not None:
                t.act_amount[aid] = t.act_amount.get(aid, 0) + d.amount
                if aid not in item_acts:
                    item_acts.append(aid)
        ev.payable += gross - on_item
        paid = gross - counted
        t.discount += counted
        sku_qty[sku_id] = sku_qty.get(sku_id, 0) + q
        for aid in item_acts:
            t.act_qty[aid] = t.act_qty.get(aid, 0) + q
            t.act_sku_qty[(aid, sku_id)] = t.act_sku_qty.get((aid, sku_id), 0) + q
        sku = cfg.skus.get(sku_id)
        if sku is None:
            unknown_entry(cfg, ev.reasons, ev.notices, Code.UNKNOWN_SKU, sku_id=sku_id)
            scopes = sku_scopes(sku_id, None, None, None)
        else:
            scopes = sku.scopes
            if sku.spu_id is not None:
                spu_qty[sku.spu_id] = spu_qty.get(sku.spu_id, 0) + q
            if sku.cost_price is not None:
                t.margin += paid - sku.cost_price * q
            fuse = sku.fuse
            if fuse is not None and paid * fuse[1] < fuse[0] * q:
                ev.reasons.append(reason(Code.PRICE_FUSE, sku_id=sku_id))
                t.fused_items.add(i)
        for scope in scopes:
            scope_qty[scope] = scope_qty.get(scope, 0) + q
    return t


def _activities(
    cfg: Config, ledger: Ledger, user: SubjectActor | None, t: Tally, ev: Evaluation, now: int
) -> tuple[set[str], list[tuple[CounterKey, int]]]:
    """Window, budget fuse and per-user limits of each activity; returns the activities that failed
    and the user's activity counters the order adds to (each key built once, for both)."""
    failed: set[str] = set()
    increments: list[tuple[CounterKey, int]] = []
    reasons = ev.reasons
    counts = user.counts if user is not None else {}
    for aid, amount in t.act_amount.items():
        q = t.act_qty[aid]
        counter = counter_key("act", aid)
        increments.append((counter, q))
        activity = cfg.activities.get(aid)
        if activity is None:
            unknown_entry(cfg, ev.reasons, ev.notices, Code.UNKNOWN_ACTIVITY, activity_id=aid)
            failed.add(aid)  # a degradable reason in deny mode; unused otherwise
            continue
        before = len(reasons)
        if not activity.active(now):
            reasons.append(reason(Code.ACTIVITY_NOT_ACTIVE, activity_id=aid))
        budget = activity.budget
        if budget is not None:
            spender = ledger.activities.get(aid)
            used = spender.used if spender is not None else 0
            if used >= budget or used + amount > budget:  # exactly used up is fused: it has ended
                reasons.append(
                    reason(Code.ACTIVITY_BUDGET_EXHAUSTED, activity_id=aid, limit=budget, used=used, requested=amount)
                )
        limit = activity.user_limit
        if limit is not None:
            used = counts.get(counter, 0)
            if used + q > limit:
                reasons.append(
                    reason(Code.ACTIVITY_USER_LIMIT, activity_id=aid, subject="user", limit=limit, used=used, requested=q)
                )
        if len(reasons) > before:
            failed.add(aid)
    for (aid, sku_id), q in t.act_sku_qty.items():
        counter = counter_key("actsku", aid, sku_id)
        increments.append((counter, q))
        activity = cfg.activities.get(aid)
        sku_limit = activity.sku_limits.get(sku_id) if activity is not None else None
        if sku_limit is None:
            continue
        used = counts.get(counter, 0)
        if used + q > sku_limit:
            reasons.append(
                reason(
                    Code.ACTIVITY_SKU_LIMIT,
                    activity_id=aid,
                    sku_id=sku_id,
                    subject="user",
                    limit=sku_limit,
                    used=used,
                    requested=q,
                )
            )
            failed.add(aid)
    return failed, increments


def _product_limits(
    counts_of: list[dict[CounterKey, int] | None],
    quantities: dict[str, int],
    entries: Mapping[str, Sku | Spu],
    kind: str,
    reasons: list[Reason],
    shared: list[tuple[CounterKey, int]],
) -> None:
    """SKU_LIMIT / SPU_LIMIT per subject (`counts_of`: each limit subject's counters, None when the
    order names no such subject). Every present subject counts the order either way, so a limit
    added mid-sale already knows what each buyer has bought."""
    is_sku = kind == "sku"
    for ident, q in quantities.items():
        entry = entries.get(ident)
        if entry is None:
            shared.append((counter_key(kind, ident), q))
            continue
        counter = entry.counter
        for index, subject, limit in entry.limits.pairs:
            counts = counts_of[index]
            if counts is None:
                continue
            used = counts.get(counter, 0)
            if used + q > limit:
                where = {"sku_id": ident} if is_sku else {"spu_id": ident}
                code = Code.SKU_LIMIT if is_sku else Code.SPU_LIMIT
                reasons.append(reason(code, subject=subject.value, limit=limit, used=used, requested=q, **where))
        shared.append((counter, q))


def _risk_rules(
    cfg: Config, subj: Subjects, subjects: dict[SubjectKey, SubjectActor], t: Tally, ev: Evaluation, now: int
) -> list[tuple[SubjectKey, WindowKey, int, int]]:
    """RISK_RULE (or a shadow hit) per rule; returns the window events the order adds (once per
    window, however many rules read it)."""
    windows: list[tuple[SubjectKey, WindowKey, int, int]] = []
    keys, scope_qty = subj.keys, t.scope_qty
    for subject, scope, wkey, seconds, lowest, rules in cfg.rule_plan():
        skey = keys.get(subject)
        if skey is None:
            continue
        q = scope_qty.get(scope, 0)
        if not q:
            continue
        actor = subjects.get(skey)
        used = actor.window_count(wkey, now) if actor is not None else 0
        if used + q > lowest:
            for limit, rule_id, subject_name, shadow in rules:
                if used + q > limit:
                    hit = reason(Code.RISK_RULE, rule_id=rule_id, subject=subject_name, limit=limit, used=used, requested=q)
                    (ev.shadow if shadow else ev.reasons).append(hit)
        windows.append((skey, wkey, seconds, q))
    return windows


def evaluate(
    req: CheckRequest, subj: Subjects, cfg: Config, ledger: Ledger, now: int, stripped: set[tuple[int, int]]
) -> Evaluation:
    ev = Evaluation()
    ledger.thaw(subj.keys.values())  # from here on, the order's subjects are all in `subjects`
    subjects = ledger.subjects
    user = subjects.get(subj.keys[Subject.USER])

    t = _items(req, cfg, ev, stripped)
    ev.reasons.extend(blacklist_reasons(cfg, ledger, subj))
    failed_activities, user_counts = _activities(cfg, ledger, user, t, ev, now)

    shared: list[tuple[CounterKey, int]] = []
    present = [subj.keys.get(s) for s in LIMIT_SUBJECTS]
    counts_of: list[dict[CounterKey, int] | None] = []
    for skey in present:
        actor = subjects.get(skey) if skey is not None else None
        counts_of.append(None if skey is None else actor.counts if actor is not None else {})
    _product_limits(counts_of, t.sku_qty, cfg.skus, "sku", ev.reasons, shared)
    _product_limits(counts_of, t.spu_qty, cfg.spus, "spu", ev.reasons, shared)
    windows = _risk_rules(cfg, subj, subjects, t, ev, now) if cfg.rules else []
    # Tuples, not lists: a stored footprint of atomic tuples is invisible to the garbage collector.
    ev.footprint = Footprint(
        tuple(k for k in present if k is not None),  # the user first
        tuple(shared),
        tuple(user_counts),
        tuple(windows),
        tuple(t.act_amount.items()),
        tuple(t.sku_qty.items()),
        clamp(t.discount),
        clamp(t.margin),
    )

    override = whitelisted(cfg, subj.user_id, ev.reasons)
    if override is not None:
        ev.whitelisted = True
        ev.reasons, notices = override
        ev.notices.extend(notices)
    elif ev.reasons:
        ev.strip = _to_strip(req, cfg, failed_activities, t.fused_items)
    return ev


def _to_strip(req: CheckRequest, cfg: Config, failed_activities: set[str], fused_items: set[int]) -> set[tuple[int, int]]:
    """The discounts behind degradable reasons: those of a failed activity, and the counted ones of
    a fused item. `stripped` answers with ids, so a stripped id goes from every item that carries
    it (an apportioned coupon is removed from the whole order, and `payable` says what that costs)."""
    white_discounts = cfg.whitelist.entries["discount"]
    ids = {
        d.id
        for i, item in enumerate(req.items)
        for d in item.discounts
        if d.activity_id in failed_activities
        or (i in fused_items and d.funded_by == "platform" and d.id not in white_discounts)
    }
    return {(i, j) for i, item in enumerate(req.items) for j, d in enumerate(item.discounts) if d.id in ids}
