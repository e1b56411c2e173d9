"""An order cut along the slots it touches, both ways.

`reads` names the actors a check must see (each present limit subject, each subject a risk rule
keys on, each activity of a discount) and the windows to total in each; `view` turns what Redis
answered into a `Ledger` of just those actors, which the shared rules (`decide`) read as if it
were the single node's. `partition` cuts the footprint that decision holds into one set of ops
per actor, each increment with the guard its check evaluated (`value + qty <= limit`): the Function
applies the slot's ops only if every guard still holds, so concurrent checks through any number of
gateways never together pass a limit, a window or a budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.activity import ActivityActor
from actors.ledger import Ledger
from actors.orders import Footprint
from actors.subject import SubjectActor
from actors.window import Window
from cluster.keys import activity_tag, sku_tag
from domain.config import Config
from domain.schema import CheckRequest
from rules.subjects import Subjects
from domain.types import LIMIT_SUBJECTS, SEP, Subject, SubjectKey

NO_GUARD = -1
DISCOUNT, MARGIN, PARDONS = "#discount", "#margin", "#pardons"  # a user's auto-blacklist fields


@dataclass(slots=True)
class Read:
    tag: str
    windows: tuple[tuple[str, int], ...] = ()  # (window key, seconds)


@dataclass(slots=True)
class SlotOps:
    """One actor's share of an order, in the form `fg_reserve` takes."""

    counters: list[tuple[str, int, int]] = field(default_factory=list)  # field, qty, limit
    windows: list[tuple[str, int, int, int, int]] = field(default_factory=list)  # key, t, seconds, qty, limit
    confirm: list[tuple[str, int]] = field(default_factory=list)  # added when the order is confirmed
    guards: list[tuple[str, int, str]] = field(default_factory=list)  # field, bound, 'floor' | 'ceiling'

    def wire(self) -> list[Any]:
        return [self.counters, self.windows, self.confirm, self.guards]


def reads(cfg: Config, subj: Subjects, activity_ids: Iterable[str]) -> list[Read]:
    by_tag: dict[str, list[tuple[str, int]]] = {subj.keys[s]: [] for s in LIMIT_SUBJECTS if s in subj.keys}
    for plan in cfg.rule_plan():
        skey = subj.keys.get(plan.subject)
        if skey is not None:
            by_tag.setdefault(skey, []).append((plan.window, plan.seconds))
    out = [Read(tag, tuple(windows)) for tag, windows in by_tag.items()]
    out.extend(Read(activity_tag(aid)) for aid in dict.fromkeys(activity_ids))
    return out


def order_activities(req: CheckRequest) -> list[str]:
    return list(dict.fromkeys(d.activity_id for item in req.items for d in item.discounts if d.activity_id is not None))


def fields(flat: Sequence[bytes]) -> dict[str, int]:
    return {flat[i].decode(): int(flat[i + 1]) for i in range(0, len(flat), 2)}


def subject_actor(counts: dict[str, int], windows: tuple[tuple[str, int], ...], totals: Sequence[int]) -> SubjectActor:
    """A subject as Redis held it. A window comes as its total (Redis pruned it at `now`), which is
    all a check reads of it."""
    actor = SubjectActor(
        discount_total=counts.pop(DISCOUNT, 0), margin_total=counts.pop(MARGIN, 0), pardons=counts.pop(PARDONS, 0)
    )
    actor.counts = counts
    for (wkey, seconds), total in zip(windows, totals):
        if total:
            actor.windows[wkey] = Window(seconds, (), int(total))
    return actor


def activity_actor(counts: dict[str, int]) -> ActivityActor:
    used, spent = counts.get("used", 0), counts.get("spent", 0)
    return ActivityActor(held=used - spent, spent=spent)


def view(wanted: list[Read], answers: Sequence[Any]) -> Ledger:
    """The actors of `wanted` as `fg_read` answered them, as a ledger the rules can read."""
    ledger = Ledger()
    for read, (flat, totals) in zip(wanted, answers):
        counts = fields(flat)
        kind, _, ident = read.tag.partition(SEP)
        if kind == "act":
            ledger.activities[ident] = activity_actor(counts)
        else:
            ledger.subjects[read.tag] = subject_actor(counts, read.windows, totals)
    return ledger


def partition(fp: Footprint, cfg: Config, now: int, guarded: bool) -> dict[str, SlotOps]:
    """The footprint as ops per actor tag. Unguarded (a whitelisted user): counted, never refused."""
    slots: dict[str, SlotOps] = {}

    def at(tag: str) -> SlotOps:
        ops = slots.get(tag)
        if ops is None:
            ops = slots[tag] = SlotOps()
        return ops

    def limit(value: int | None) -> int:
        return value if guarded and value is not None else NO_GUARD

    for skey in fp.subjects:
        subject = _subject(skey)
        ops = at(skey)
        for counter, qty in fp.shared:
            kind, _, ident = counter.partition(SEP)
            entry = cfg.skus.get(ident) if kind == "sku" else cfg.spus.get(ident)
            ops.counters.append((counter, qty, limit(getattr(entry.limits, subject.value) if entry is not None else None)))
    if fp.subjects:
        user = at(fp.subjects[0])
        for counter, qty in fp.user:
            kind, _, rest = counter.partition(SEP)
            aid, _, sku_id = rest.partition(SEP)
            activity = cfg.activities.get(aid)
            bound = None if activity is None else activity.user_limit if kind == "act" else activity.sku_limits.get(sku_id)
            user.counters.append((counter, qty, limit(bound)))
        user.confirm.extend(((DISCOUNT, fp.discount), (MARGIN, fp.margin)))
        if guarded:
            user.guards.extend(auto_guards(cfg))
    enforced = _enforced_limits(cfg)
    for skey, wkey, seconds, qty in fp.windows:
        at(skey).windows.append((wkey, now, seconds, qty, limit(enforced.get((_subject(skey), wkey)))))
    for aid, amount in fp.budget:
        activity = cfg.activities.get(aid)
        budget = activity.budget if activity is not None else None
        # A budget exactly used up is fused (SPEC section 3), so even an amount of 0 needs room left.
        bound = None if budget is None else budget if amount > 0 else budget - 1
        ops = at(activity_tag(aid))
        ops.counters.append(("used", amount, limit(bound)))
        ops.confirm.append(("spent", amount))
    for sku_id, qty in fp.units:
        ops = at(sku_tag(sku_id))
        ops.counters.append(("used", qty, NO_GUARD))
        ops.confirm.append(("confirmed", qty))
    return slots


def auto_guards(cfg: Config) -> list[tuple[str, int, str]]:
    """Not auto-blacklisted since the read: the user's totals as `auto_blacklisted` tests them."""
    rule = cfg.auto_blacklist
    guards: list[tuple[str, int, str]] = []
    if rule.discount_cost is not None:
        guards.append((DISCOUNT, rule.discount_cost - 1, "ceiling"))
    if rule.negative_margin:
        guards.append((MARGIN, 0, "floor"))
    return guards


def _subject(skey: SubjectKey) -> Subject:
    return Subject(skey.partition(SEP)[0])


def _enforced_limits(cfg: Config) -> dict[tuple[Subject, str], int]:
    """The lowest enforced limit of each window (shadow rules never refuse, so they guard nothing)."""
    out: dict[tuple[Subject, str], int] = {}
    for plan in cfg.rule_plan():
        enforced = [lim for lim, _, _, shadow in plan.rules if not shadow]
        if enforced:
            out[(plan.subject, plan.window)] = min(enforced)
    return out
