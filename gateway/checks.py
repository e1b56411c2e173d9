"""The checks of SPEC section 3, evaluated over the actors without changing them.

`evaluate` reads the ledger and the configuration and returns every failed check (it does not
stop at the first) together with the footprint the order would hold. It never awaits and never
writes, so the coordinator can evaluate, decide and apply in one uninterrupted step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from actors.ledger import Ledger
from actors.orders import Footprint
from actors.subject import SubjectActor
from gateway.config import Config, fold, fold_path, fold_phone
from gateway.schema import CheckRequest
from gateway.types import (
    LIMIT_SUBJECTS,
    REGION_DEPTH,
    Code,
    Notice,
    Reason,
    Subject,
    SubjectKey,
    WindowKey,
)

ALL_SKUS = ("", "")


@dataclass(slots=True)
class Subjects:
    """Who an order is for: each subject's actor key, and the address as its region prefixes."""

    keys: dict[Subject, SubjectKey]
    user_id: str
    device: str | None = None
    phone: str | None = None
    prefixes: tuple[str, ...] = ()  # folded region paths, shortest first


def order_subjects(req: CheckRequest) -> Subjects:
    keys: dict[Subject, SubjectKey] = {Subject.USER: ("user", req.user_id)}
    out = Subjects(keys, req.user_id, device=req.device_id)
    if req.device_id is not None:
        keys[Subject.DEVICE] = ("device", req.device_id)
    if req.ip is not None:
        keys[Subject.IP] = ("ip", req.ip)
    receiver = req.receiver
    if receiver is None:
        return out
    if receiver.name and (name := fold(receiver.name)):
        keys[Subject.RECEIVER_NAME] = ("receiver_name", name)
    if receiver.phone and (phone := fold_phone(receiver.phone)):
        keys[Subject.RECEIVER_PHONE] = ("receiver_phone", phone)
        out.phone = phone
    address = receiver.address
    if address is not None:
        parts: list[str] = []
        for part in (address.province, address.city, address.district, address.town):
            folded = fold_path(part) if part else ""
            if not folded:
                break
            parts.append(folded)
        out.prefixes = tuple("/".join(parts[:n]) for n in range(1, len(parts) + 1))
        for level, depth in REGION_DEPTH.items():
            if depth <= len(parts):
                keys[level] = (level.value, out.prefixes[depth - 1])
        detail = fold(address.detail or "")
        if parts or detail:
            keys[Subject.RECEIVER_ADDRESS] = ("receiver_address", "/".join(parts) + "|" + detail)
    return out


def blacklist_reasons(cfg: Config, ledger: Ledger, subj: Subjects) -> list[Reason]:
    """BLACKLISTED for the user (listed or auto), device, phone and address (SPEC section 3)."""
    black, white = cfg.blacklist, cfg.whitelist
    out: list[Reason] = []
    user = ledger.subjects.get(subj.keys[Subject.USER])
    if black.has("user", subj.user_id):
        out.append(Reason(code=Code.BLACKLISTED, subject="user", value=subj.user_id))
    elif user is not None and auto_blacklisted(cfg, user):
        out.append(Reason(code=Code.BLACKLISTED, subject="user", value=subj.user_id, auto=True))
    if subj.device is not None and black.has("device", subj.device) and not white.has("device", subj.device):
        out.append(Reason(code=Code.BLACKLISTED, subject="device", value=subj.device))
    if subj.phone is not None and black.has("phone", subj.phone) and not white.has("phone", subj.phone):
        out.append(Reason(code=Code.BLACKLISTED, subject="phone", value=subj.phone))
    if subj.prefixes:
        region = black.has_prefix("address", subj.prefixes)
        if region is not None and white.has_prefix("address", subj.prefixes) is None:
            out.append(Reason(code=Code.BLACKLISTED, subject="address", value=region))
    return out


def auto_blacklisted(cfg: Config, user: SubjectActor) -> bool:
    rule = cfg.auto_blacklist
    if rule.discount_cost is not None and user.discount_total >= rule.discount_cost:
        return True
    return rule.negative_margin and user.margin_total < 0


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


def _unknown(cfg: Config, ev: Evaluation, code: Code, degradable: bool, **where: str) -> None:
    """A SKU or activity missing from config: skip its rules, and warn or refuse per settings."""
    if cfg.settings.unknown == "deny":
        ev.reasons.append(Reason(code=code, degradable=degradable, **where))  # type: ignore[arg-type]
    else:
        what = next(iter(where.values()))
        ev.notices.append(Notice(code=code.value, message=f"{what} is not configured; its rules were skipped", **where))


def evaluate(
    req: CheckRequest, subj: Subjects, cfg: Config, ledger: Ledger, now: int, stripped: set[tuple[int, int]]
) -> Evaluation:
    ev = Evaluation()
    reasons = ev.reasons
    fp = ev.footprint
    subjects = ledger.subjects
    black_discounts = cfg.blacklist.entries["discount"]
    white_discounts = cfg.whitelist.entries["discount"]
    user_key = subj.keys[Subject.USER]
    user = subjects.get(user_key)

    sku_qty: dict[str, int] = {}
    spu_qty: dict[str, int] = {}
    scope_qty: dict[tuple[str, str], int] = {}
    act_qty: dict[str, int] = {}
    act_sku_qty: dict[tuple[str, str], int] = {}
    act_amount: dict[str, int] = {}
    fused_items: set[int] = set()

    # Per item: amounts, the price fuse, and the quantities every later check counts.
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
                reasons.append(Reason(code=Code.BLACKLISTED, subject="discount", discount_id=d.id, sku_id=sku_id))
            aid = d.activity_id
            if aid is not None:
                act_amount[aid] = act_amount.get(aid, 0) + d.amount
                if aid not in item_acts:
                    item_acts.append(aid)
        ev.payable += gross - on_item
        paid = gross - counted
        fp.discount += counted
        sku_qty[sku_id] = sku_qty.get(sku_id, 0) + q
        for aid in item_acts:
            act_qty[aid] = act_qty.get(aid, 0) + q
            act_sku_qty[(aid, sku_id)] = act_sku_qty.get((aid, sku_id), 0) + q
        sku = cfg.skus.get(sku_id)
        if sku is None:
            _unknown(cfg, ev, Code.UNKNOWN_SKU, False, sku_id=sku_id)
            scopes: tuple[tuple[str, str], ...] = (ALL_SKUS, ("sku_id", sku_id))
        else:
            scopes = sku.scopes
            if sku.spu_id is not None:
                spu_qty[sku.spu_id] = spu_qty.get(sku.spu_id, 0) + q
            if sku.cost_price is not None:
                fp.margin += paid - sku.cost_price * q
            fuse = sku.fuse
            if fuse is not None and paid * fuse[1] < fuse[0] * q:
                reasons.append(Reason(code=Code.PRICE_FUSE, degradable=True, sku_id=sku_id))
                fused_items.add(i)
        for scope in scopes:
            scope_qty[scope] = scope_qty.get(scope, 0) + q

    reasons.extend(blacklist_reasons(cfg, ledger, subj))

    # Activities: window, budget fuse, per-user limits.
    bad_activities: set[str] = set()
    for aid, amount in act_amount.items():
        activity = cfg.activities.get(aid)
        fp.budget.append((aid, amount))
        if activity is None:
            _unknown(cfg, ev, Code.UNKNOWN_ACTIVITY, True, activity_id=aid)
            bad_activities.add(aid)  # in deny mode this is a degradable reason; harmless otherwise
            continue
        before = len(reasons)
        if not activity.active(now):
            reasons.append(Reason(code=Code.ACTIVITY_NOT_ACTIVE, degradable=True, activity_id=aid))
        budget = activity.budget
        if budget is not None:
            spender = ledger.activities.get(aid)
            used = spender.used if spender is not None else 0
            if used >= budget or used + amount > budget:
                reasons.append(
                    Reason(
                        code=Code.ACTIVITY_BUDGET_EXHAUSTED,
                        degradable=True,
                        activity_id=aid,
                        limit=budget,
                        used=used,
                        requested=amount,
                    )
                )
        q = act_qty[aid]
        if activity.user_limit is not None:
            used = user.counts.get(("act", aid), 0) if user is not None else 0
            if used + q > activity.user_limit:
                reasons.append(
                    Reason(
                        code=Code.ACTIVITY_USER_LIMIT,
                        degradable=True,
                        activity_id=aid,
                        subject="user",
                        limit=activity.user_limit,
                        used=used,
                        requested=q,
                    )
                )
        if activity.sku_limits:
            for (act_id, sku_id), q in act_sku_qty.items():
                limit = activity.sku_limits.get(sku_id) if act_id == aid else None
                if limit is None:
                    continue
                used = user.counts.get(("actsku", aid, sku_id), 0) if user is not None else 0
                if used + q > limit:
                    reasons.append(
                        Reason(
                            code=Code.ACTIVITY_SKU_LIMIT,
                            degradable=True,
                            activity_id=aid,
                            sku_id=sku_id,
                            subject="user",
                            limit=limit,
                            used=used,
                            requested=q,
                        )
                    )
        if len(reasons) > before:
            bad_activities.add(aid)

    # Product limits per subject, and the lifetime counters every order adds to.
    present = [(s, subj.keys[s]) for s in LIMIT_SUBJECTS if s in subj.keys]
    for counter_kind, quantities, entries in (("sku", sku_qty, cfg.skus), ("spu", spu_qty, cfg.spus)):
        code = Code.SKU_LIMIT if counter_kind == "sku" else Code.SPU_LIMIT
        for ident, q in quantities.items():
            counter = (counter_kind, ident)
            entry = entries.get(ident)
            if entry is not None:
                for subject, limit in entry.limits.pairs:
                    key = subj.keys.get(subject)
                    if key is None:
                        continue
                    actor = subjects.get(key)
                    used = actor.counts.get(counter, 0) if actor is not None else 0
                    if used + q > limit:
                        reasons.append(
                            Reason(
                                code=code,
                                subject=subject.value,
                                limit=limit,
                                used=used,
                                requested=q,
                                **{f"{counter_kind}_id": ident},  # type: ignore[arg-type]
                            )
                        )
            for _, key in present:
                fp.counts.append((key, counter, q))
    for aid, q in act_qty.items():
        fp.counts.append((user_key, ("act", aid), q))
    for (aid, sku_id), q in act_sku_qty.items():
        fp.counts.append((user_key, ("actsku", aid, sku_id), q))
    fp.units.extend(sku_qty.items())

    # Risk rules over sliding windows.
    if cfg.rules:
        multiplier = cfg.settings.multiplier
        seen: set[tuple[SubjectKey, WindowKey]] = set()
        for rule in cfg.rules.values():
            key = subj.keys.get(rule.subject)
            if key is None:
                continue
            q = scope_qty.get(rule.scope.key, 0)
            if not q:
                continue
            wkey = rule.window_key
            actor = subjects.get(key)
            used = actor.window_count(wkey, now) if actor is not None else 0
            limit = rule.limit(multiplier)
            if used + q > limit:
                reason = Reason(
                    code=Code.RISK_RULE, rule_id=rule.rule_id, subject=rule.subject.value, limit=limit, used=used, requested=q
                )
                (ev.shadow if rule.mode == "shadow" else reasons).append(reason)
            if (key, wkey) not in seen:
                seen.add((key, wkey))
                fp.windows.append((key, wkey, q))

    if cfg.whitelist.has("user", subj.user_id):
        ev.whitelisted = True
        for r in reasons:
            ev.notices.append(Notice(code=r.code.value, message="not applied: the user is whitelisted"))
        reasons[:] = [Reason(code=Code.WHITELISTED, subject="user", value=subj.user_id)]
    elif reasons:
        for i, item in enumerate(req.items):
            for j, d in enumerate(item.discounts):
                counted = d.funded_by == "platform" and d.id not in white_discounts
                if d.activity_id in bad_activities or (i in fused_items and counted):
                    ev.strip.add((i, j))
    return ev
