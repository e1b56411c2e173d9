"""The ledger: every actor, keyed by id, and the operations that change them.

`hold`, `confirm`, `release` and `claim` are the only ways state changes; each takes plain data (a
footprint, ids) so that replaying the journal calls exactly the same code as serving a request.
None of them awaits: an order's several actors change together, between two awaits of the loop.

Subjects live in three tiers, and a key is in exactly one of them. `subjects` holds the ones in
use, decoded. `cold` holds encoded ones (see `ColdSubject`): those a snapshot restored, and those
the sweeper put to rest. `idle` holds the ones in use a period ago, decoded, that nothing has
touched since. `find`, `subject` and `thaw` move a subject from `idle` or `cold` back to
`subjects` when they meet it; a check thaws its order's subjects first, so that its many reads are
plain dict lookups.

Resting (`rest_step`, the sweeper's): every `REST_AFTER` seconds the subjects still idle go cold,
and the ones in use become the idle ones. A sale's buyers mostly order once or twice within
minutes: each leaves five subjects (user, device, receiver name, phone and address) that keep
their lifetime counters for the whole sale, about 0.9-1.4 KB each decoded and a fifth of that
encoded. A subject goes cold after 10 to 20 minutes untouched, and decoding it again when its
buyer comes back costs a few microseconds.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain

from actors.activity import ActivityActor
from actors.expiry import Due, Expiry
from actors.orders import Footprint
from actors.sku import SkuActor
from actors.subject import ColdSubject, SubjectActor
from domain.types import SubjectKey, clamp, counter_key

REST_AFTER = 600  # seconds a period lasts: a subject untouched for one to two periods goes cold


class Ledger:
    __slots__ = ("subjects", "idle", "cold", "activities", "skus", "expiry", "_rest_at")

    def __init__(self) -> None:
        self.subjects: dict[SubjectKey, SubjectActor] = {}
        self.idle: dict[SubjectKey, SubjectActor] = {}
        self.cold: dict[SubjectKey, ColdSubject] = {}
        self.activities: dict[str, ActivityActor] = {}
        self.skus: dict[str, SkuActor] = {}
        self.expiry = Expiry()
        self._rest_at = 0  # when the idle subjects go cold next (see `rest_step`)

    def find(self, key: SubjectKey) -> SubjectActor | None:
        """The subject's actor if it has one (back in use if it was idle or cold). Reads go through here."""
        actor = self.subjects.get(key)
        if actor is None:
            actor = self.idle.pop(key, None)
            if actor is None and self.cold:
                cold = self.cold.pop(key, None)
                actor = cold.thaw() if cold is not None else None
            if actor is not None:
                self.subjects[key] = actor
        return actor

    def subject(self, key: SubjectKey) -> SubjectActor:
        """The subject's actor, created if it has none: changes go through here."""
        actor = self.find(key)
        if actor is None:
            actor = self.subjects[key] = SubjectActor()
        return actor

    def thaw(self, keys: Iterable[SubjectKey]) -> None:
        """Make sure these subjects are in use, none idle or cold (a no-op while nothing is)."""
        if self.idle or self.cold:
            subjects = self.subjects
            for k in keys:
                if k not in subjects:
                    self.find(k)

    def all_subjects(self) -> dict[SubjectKey, SubjectActor]:
        """Every subject's actor, all of them back in use (audits and tests, not the request path)."""
        for key in [*self.idle, *self.cold]:
            self.find(key)
        return self.subjects

    def frozen_subjects(self) -> dict[SubjectKey, ColdSubject]:
        """Every subject in its stored form, for a snapshot (cold ones as they were read)."""
        return {**self.cold, **{k: ColdSubject.freeze(a) for k, a in chain(self.idle.items(), self.subjects.items())}}

    def rest_step(self, now: int, limit: int) -> tuple[int, int, bool]:
        """One synchronous step of resting (the sweeper's): once `REST_AFTER` has passed since the
        last period began, encode up to `limit` idle subjects into `cold`; when none is left idle,
        the subjects in use become the idle ones and a new period begins. Returns (looked at,
        put to rest, more to do now), as the order book's steps do."""
        if now < self._rest_at:
            return 0, 0, False
        idle, cold = self.idle, self.cold
        done = 0
        while idle and done < limit:
            key, actor = idle.popitem()
            cold[key] = ColdSubject.freeze(actor)
            done += 1
        if idle:
            return done, done, True
        self.idle, self.subjects = self.subjects, {}
        self._rest_at = now + REST_AFTER
        return done, done, False

    def activity(self, activity_id: str) -> ActivityActor:
        actor = self.activities.get(activity_id)
        if actor is None:
            actor = self.activities[activity_id] = ActivityActor()
        return actor

    def sku(self, sku_id: str) -> SkuActor:
        actor = self.skus.get(sku_id)
        if actor is None:
            actor = self.skus[sku_id] = SkuActor()
        return actor

    def hold(self, t: int, fp: Footprint) -> None:
        subjects = self.subjects
        for skey in fp.subjects:
            (subjects.get(skey) or self.subject(skey)).add_all(fp.shared)
        if fp.user:
            self.subject(fp.subjects[0]).add_all(fp.user)
        for skey, wkey, seconds, qty in fp.windows:
            actor = subjects.get(skey) or self.subject(skey)
            if actor.window_add(wkey, seconds, t, qty):
                self.schedule_sweep(skey, actor, t + seconds)  # an older window's expiry is scheduled already
        for activity_id, amount in fp.budget:
            self.activity(activity_id).held += amount
        for sku_id, qty in fp.units:
            self.sku(sku_id).held += qty

    def confirm(self, user_key: SubjectKey, fp: Footprint) -> int:
        """Move budget and units from held to spent and add to the user's totals; returns the
        user's pardon count, which the order keeps (see `unconfirm_totals`)."""
        for activity_id, amount in fp.budget:
            actor = self.activity(activity_id)
            actor.held -= amount
            actor.spent += amount
        for sku_id, qty in fp.units:
            actor_ = self.sku(sku_id)
            actor_.held -= qty
            actor_.confirmed += qty
        user = self.subject(user_key)
        user.discount_total = clamp(user.discount_total + fp.discount)
        user.margin_total = clamp(user.margin_total + fp.margin)
        return user.pardons

    def release(self, t: int, user_key: SubjectKey, fp: Footprint, confirmed: int | None) -> None:
        """Give an order's quotas back: a hold that ended (`confirmed` None), or a confirmed order
        cancelled (`confirmed` is its pardon count). Subjects left with nothing are dropped."""
        for skey, counter, qty in fp.increments():
            self.subject(skey).add(counter, -qty)
        for skey, wkey, _, qty in fp.windows:
            self.subject(skey).window_remove(wkey, t, qty)
        for activity_id, amount in fp.budget:
            actor = self.activity(activity_id)
            if confirmed is not None:
                actor.spent -= amount
            else:
                actor.held -= amount
        for sku_id, qty in fp.units:
            actor_ = self.sku(sku_id)
            if confirmed is not None:
                actor_.confirmed -= qty
            else:
                actor_.held -= qty
        if confirmed is not None:
            self.unconfirm_totals(user_key, fp, confirmed)
        for skey in {*fp.subjects, *(w[0] for w in fp.windows)}:
            subject = self.subjects.get(skey)  # all of them were just touched: none is idle or cold
            if subject is not None and subject.is_empty():
                del self.subjects[skey]

    def unconfirm_totals(self, user_key: SubjectKey, fp: Footprint, pardons: int) -> None:
        """Take a cancelled confirmed order's amounts out of its user's auto-blacklist totals,
        unless the user was pardoned since it was confirmed (the pardon already zeroed them)."""
        user = self.subject(user_key)
        if user.pardons == pardons:
            user.discount_total = clamp(user.discount_total - fp.discount)
            user.margin_total = clamp(user.margin_total - fp.margin)

    def pardon(self, user_key: SubjectKey) -> None:
        """Zero a user's auto-blacklist totals: an operator took them off the blacklist."""
        user = self.find(user_key)
        if user is not None:
            user.discount_total = user.margin_total = 0
            user.pardons += 1

    def claim(self, user_key: SubjectKey, coupon_id: str) -> None:
        self.subject(user_key).add(counter_key("coupon", coupon_id), 1)

    def schedule_sweep(self, key: SubjectKey, actor: SubjectActor, when: int) -> None:
        if not actor.sweep_at or when < actor.sweep_at:
            actor.sweep_at = when
            self.expiry.schedule(when, Due.WINDOWS, key)

    def sweep_windows(self, key: SubjectKey, when: int, now: int) -> None:
        """Drop a subject's stale window events (a heap entry scheduled for `when` fired)."""
        actor = self.find(key)
        if actor is None or actor.sweep_at != when:
            return  # stale entry: the actor is gone, or a sooner sweep was scheduled since
        actor.sweep_at = 0
        soonest = actor.prune_windows(now)
        if soonest is not None:
            self.schedule_sweep(key, actor, soonest)
        elif actor.is_empty():
            del self.subjects[key]

