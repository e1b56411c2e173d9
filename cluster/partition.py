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

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.activity import ActivityActor
from actors.ledger import Ledger
from actors.orders import Footprint
from actors.subject import SubjectActor
from actors.window import Window
from cluster.keys import BUCKET_SEP, activity_tag, home_bucket
from domain.config import Activity, Config
from domain.schema import CheckResponse, CheckRequest
from domain.types import LIMIT_SUBJECTS, SEP, Code, Subject, SubjectKey
from rules.subjects import Subjects

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


def reads(cfg: Config, subj: Subjects, activity_ids: Iterable[str], order_id: str, scan: Iterable[str] = ()) -> list[Read]:
    """What a check of `order_id` reads: a bucketed activity's home bucket only, or with the
    activity in `scan` every bucket (its home first)."""
    by_tag: dict[str, list[tuple[str, int]]] = {subj.keys[s]: [] for s in LIMIT_SUBJECTS if s in subj.keys}
    for plan in cfg.rule_plan():
        skey = subj.keys.get(plan.subject)
        if skey is not None:
            by_tag.setdefault(skey, []).append((plan.window, plan.seconds))
    out = [Read(tag, tuple(windows)) for tag, windows in by_tag.items()]
    for aid in dict.fromkeys(activity_ids):
        n = buckets(cfg.activities.get(aid))
        home = home_bucket(order_id, n)
        out.extend(Read(activity_tag(aid, (home + i) % n)) for i in range(n if aid in scan else 1))
    return out


def buckets(activity: Activity | None) -> int:
    """The slots an activity's budget is split over: more than one only for a budget to split."""
    return activity.buckets if activity is not None and activity.budget is not None else 1


def share(budget: int, n: int, bucket: int) -> int:
    """Bucket `bucket`'s part of `budget`: the n parts differ by at most 1 and sum to it."""
    return budget // n + (1 if bucket < budget % n else 0)


def short_budgets(response: CheckResponse, cfg: Config, wanted: list[Read]) -> set[str]:
    """The bucketed activities refused for budget on a read of only some of their buckets: read
    them all (the last units of a budget may sit in any bucket) before the refusal stands."""
    read = Counter(_bucket_of(r.tag)[0] for r in wanted if r.tag.startswith("act" + SEP))
    return {
        r.activity_id
        for r in response.reasons
        if r.code is Code.ACTIVITY_BUDGET_EXHAUSTED and r.activity_id is not None
        and read[r.activity_id] < buckets(cfg.activities.get(r.activity_id))
    }  # fmt: skip


def _bucket_of(tag: str) -> tuple[str, int]:
    """The activity id and bucket of an activity tag."""
    aid, _, bucket = tag.partition(SEP)[2].partition(BUCKET_SEP)
    return aid, int(bucket or 0)


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


def view(wanted: list[Read], answers: Sequence[Any], cfg: Config) -> Ledger:
    """The actors of `wanted` as `fg_read` answered them, as a ledger the rules can read. A
    bucketed activity read in part shows the buckets not read as used up: the rules then decide
    on the room of the buckets read, which is all the order can take from."""
    ledger = Ledger()
    for read, (flat, totals) in zip(wanted, answers):
        if not read.tag.startswith("act" + SEP):
            ledger.subjects[read.tag] = subject_actor(fields(flat), read.windows, totals)
    for aid, got in _activity_buckets(wanted, answers).items():
        activity = cfg.activities.get(aid)
        n = buckets(activity)
        unread = sum(share(activity.budget, n, b) for b in range(n) if b not in got) if activity and activity.budget else 0
        ledger.activities[aid] = ActivityActor(held=sum(a.held for a in got.values()), spent=sum(a.spent for a in got.values()) + unread)
    return ledger


def budget_rooms(wanted: list[Read], answers: Sequence[Any], cfg: Config) -> dict[str, list[tuple[int, int]]]:
    """For each bucketed activity read: (bucket, room left) of the buckets read, in reading order
    (the order's home bucket first)."""
    rooms: dict[str, list[tuple[int, int]]] = {}
    for aid, got in _activity_buckets(wanted, answers).items():
        activity = cfg.activities.get(aid)
        n = buckets(activity)
        if activity is not None and activity.budget is not None and n > 1:
            rooms[aid] = [(b, share(activity.budget, n, b) - a.held - a.spent) for b, a in got.items()]
    return rooms


def _activity_buckets(wanted: list[Read], answers: Sequence[Any]) -> dict[str, dict[int, ActivityActor]]:
    """Each activity read, by bucket, in reading order."""
    parts: dict[str, dict[int, ActivityActor]] = {}
    for read, (flat, _) in zip(wanted, answers):
        if read.tag.startswith("act" + SEP):
            aid, bucket = _bucket_of(read.tag)
            parts.setdefault(aid, {})[bucket] = activity_actor(fields(flat))
    return parts


def partition(
    fp: Footprint, cfg: Config, now: int, guarded: bool, order_id: str, rooms: dict[str, list[tuple[int, int]]]
) -> dict[str, SlotOps]:
    """The footprint as ops per actor tag. Unguarded (a whitelisted user): counted, never refused.
    A bucketed budget is taken from the buckets in `rooms` (see `budget_rooms`), home first."""
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
        n = buckets(activity)
        if budget is None or n == 1:
            # A budget exactly used up is fused (SPEC section 3), so even an amount of 0 needs room left.
            takes = [(0, amount, None if budget is None else budget if amount > 0 else budget - 1)]
        else:
            takes = _take(amount, rooms.get(aid, []), budget, n, home_bucket(order_id, n))
        for bucket, part, bound in takes:
            ops = at(activity_tag(aid, bucket))
            ops.counters.append(("used", part, limit(bound)))
            ops.confirm.append(("spent", part))
    # fp.units (a SKU's units held and confirmed) are not kept in cluster mode: nothing reads them
    # (the single node keeps them for its snapshots), and a hot SKU's slot would cost 2 calls an order.
    return slots


def _take(amount: int, rooms: list[tuple[int, int]], budget: int, n: int, home: int) -> list[tuple[int, int, int | None]]:
    """(bucket, part, bound) taking `amount` from the buckets with room, in order. The decision
    allowed it, so together they have the room (and some room, for an amount of 0: a bucket exactly
    used up is fused like a budget). A whitelisted order, allowed without room, is counted in its
    home bucket unbounded."""
    takes: list[tuple[int, int, int | None]] = []
    left = amount
    for bucket, room in rooms:
        if room <= 0:
            continue
        part = min(room, left)
        takes.append((bucket, part, share(budget, n, bucket) - (0 if part else 1)))
        left -= part
        if left == 0:
            break
    if left or not takes:
        takes.append((home, left, None))
    return takes


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
