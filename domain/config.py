"""The configuration (SPEC section 2): the schema of its entries and its live form.

Each entry type validates its own fields (`document` reads a whole document into them). Derived
values that the hot path needs (a fuse ratio as a fraction, a duration in seconds) are computed
once per entry and cached on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from typing import Annotated, Any, Literal, NamedTuple

import msgspec

from domain.lists import ListName, ListsDoc, ListSet
from domain.types import LIMIT_SUBJECTS, CounterKey, Subject, counter_key, key
from domain.values import (
    Buckets,
    MAX_MONEY,
    MAX_QUANTITY,
    MAX_WINDOW,
    Duration,
    Entry,
    Id,
    Money,
    PosInt,
    Ratio,
    Seconds,
    parse_duration,
    parse_ratio,
)


class Limits(Entry):
    user: PosInt | None = None
    device: PosInt | None = None
    receiver_name: PosInt | None = None
    receiver_phone: PosInt | None = None
    receiver_address: PosInt | None = None

    @cached_property
    def pairs(self) -> tuple[tuple[int, Subject, int], ...]:
        """The limits that are set, as (index in LIMIT_SUBJECTS, subject, limit)."""
        return tuple((i, s, v) for i, s in enumerate(LIMIT_SUBJECTS) if (v := getattr(self, s.value)) is not None)


class PriceFuse(Entry):
    PARSED = {"ratio": parse_ratio}

    base: Literal["cost", "original"]
    ratio: Ratio


class Sku(Entry):
    sku_id: Id
    spu_id: Id | None = None
    category: Id | None = None
    brand: Id | None = None
    cost_price: Money | None = None
    original_price: Money | None = None
    price_fuse: PriceFuse | None = None
    limits: Limits = msgspec.field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.price_fuse is not None and self.fuse_base is None:
            raise ValueError(f"price_fuse base '{self.price_fuse.base}' needs {self.price_fuse.base}_price")

    @property
    def fuse_base(self) -> int | None:
        if self.price_fuse is None:
            return None
        return self.cost_price if self.price_fuse.base == "cost" else self.original_price

    @cached_property
    def fuse(self) -> tuple[int, int] | None:
        """The fuse as integers (n, d): an item fails when paid * d < n * quantity, exactly."""
        if self.price_fuse is None or self.fuse_base is None:
            return None
        floor = self.fuse_base * parse_ratio(self.price_fuse.ratio)
        return floor.numerator, floor.denominator

    @cached_property
    def scopes(self) -> tuple[str, ...]:
        """Every risk-rule scope key this SKU falls in (see `Scope.key`)."""
        return sku_scopes(self.sku_id, self.category, self.brand, self.spu_id)

    @cached_property
    def counter(self) -> CounterKey:
        return counter_key("sku", self.sku_id)



ALL_SKUS = key("", "")


def sku_scopes(sku_id: str, category: str | None, brand: str | None, spu_id: str | None) -> tuple[str, ...]:
    """The scope keys of a SKU: every SKU, itself, and its category, brand and SPU when known."""
    out = [ALL_SKUS, key("sku_id", sku_id)]
    for name, value in (("category", category), ("brand", brand), ("spu_id", spu_id)):
        if value is not None:
            out.append(key(name, value))
    return tuple(out)


class Spu(Entry):
    spu_id: Id
    limits: Limits = msgspec.field(default_factory=Limits)

    @cached_property
    def counter(self) -> CounterKey:
        return counter_key("spu", self.spu_id)


class Activity(Entry):
    activity_id: Id
    budget: Money | None = None
    starts_at: Seconds | None = None
    ends_at: Seconds | None = None
    user_limit: PosInt | None = None
    sku_limits: dict[Id, PosInt] = msgspec.field(default_factory=dict)
    disclose_limits: bool = False
    buckets: Buckets = 1  # cluster mode: the budget split over this many slots that sum to it (a hot activity)

    def __post_init__(self) -> None:
        if self.starts_at is not None and self.ends_at is not None and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")

    def active(self, now: int) -> bool:
        return (self.starts_at is None or self.starts_at <= now) and (self.ends_at is None or now < self.ends_at)


class Coupon(Entry):
    coupon_id: Id
    activity_id: Id | None = None
    per_user_limit: PosInt | None = None


class Scope(Entry):
    category: Id | None = None
    brand: Id | None = None
    spu_id: Id | None = None
    sku_id: Id | None = None

    def __post_init__(self) -> None:
        if len([v for v in (self.category, self.brand, self.spu_id, self.sku_id) if v is not None]) > 1:
            raise ValueError("a scope names at most one of category, brand, spu_id, sku_id")

    @cached_property
    def named(self) -> tuple[str, str] | None:
        """(field, value) of the one field set, or None for the empty scope (every SKU)."""
        for name in ("category", "brand", "spu_id", "sku_id"):
            v = getattr(self, name)
            if v is not None:
                return name, v
        return None

    @cached_property
    def key(self) -> str:
        """'field SEP value' of the one field set, or ALL_SKUS for the empty scope."""
        return ALL_SKUS if self.named is None else key(*self.named)


def parse_window(value: Duration) -> int:
    seconds = parse_duration(value)
    if seconds > MAX_WINDOW:
        raise ValueError(f"{value!r} is longer than 7d")
    return seconds


class Rule(Entry):
    PARSED = {"window": parse_window}

    rule_id: Id
    subject: Subject
    window: Duration
    max_quantity: Annotated[int, msgspec.Meta(ge=0, le=MAX_QUANTITY * 1000)]
    scope: Scope = msgspec.field(default_factory=Scope)
    mode: Literal["enforce", "shadow"] = "enforce"

    @cached_property
    def window_seconds(self) -> int:
        return parse_duration(self.window)

    @cached_property
    def window_key(self) -> str:
        return key(self.scope.key, str(self.window_seconds))

    def limit(self, multiplier: Fraction) -> int:
        """floor(max_quantity * multiplier), cached per multiplier: Fraction arithmetic is slow."""
        cached: tuple[Fraction, int] | None = self.__dict__.get("_limit")
        if cached is None or cached[0] is not multiplier:
            cached = self.__dict__["_limit"] = (multiplier, int(self.max_quantity * multiplier))
        return cached[1]


class Messages(Entry):
    busy: str | None = None
    limit: str | None = None
    degrade: str | None = None


class Settings(Entry, omit_defaults=False):
    """Shown whole by `GET /v1/admin/config`, defaults included: operators look for them there."""

    PARSED = {"hold_ttl": parse_duration, "risk_multiplier": parse_ratio, "order_retention": parse_duration}

    hold_ttl: Duration = "15m"
    risk_multiplier: Ratio = "1.0"
    unknown: Literal["allow", "deny"] = "allow"
    release_on_cancel: bool = True
    locale: Literal["zh", "en"] = "zh"
    messages: Messages = msgspec.field(default_factory=Messages)
    admin_token: Annotated[str, msgspec.Meta(min_length=8, max_length=256)] | None = None
    # A settled order (confirmed, cancelled, expired, denied) whose last change is older than this
    # leaves memory and the snapshots; its id stays known, so a re-check of it is refused
    # (`order_retired`). Single node only: cluster mode keeps its order records in Redis.
    order_retention: Duration = "7d"

    @cached_property
    def hold_ttl_seconds(self) -> int:
        return parse_duration(self.hold_ttl)

    @cached_property
    def order_retention_seconds(self) -> int:
        return parse_duration(self.order_retention)

    @cached_property
    def multiplier(self) -> Fraction:
        return parse_ratio(self.risk_multiplier)


class AutoBlacklist(Entry):
    discount_cost: Annotated[int, msgspec.Meta(ge=1, le=MAX_MONEY)] | None = None
    negative_margin: bool = False


SECTIONS: dict[str, tuple[type[Entry], str]] = {
    "skus": (Sku, "sku_id"),
    "spus": (Spu, "spu_id"),
    "activities": (Activity, "activity_id"),
    "coupons": (Coupon, "coupon_id"),
    "rules": (Rule, "rule_id"),
}
SINGLES: dict[str, type[Entry]] = {"settings": Settings, "lists": ListsDoc, "auto_blacklist": AutoBlacklist}


class WindowPlan(NamedTuple):
    subject: Subject
    scope: str
    window: str
    seconds: int
    lowest: int  # the lowest limit of `rules`: a window under it passes them all at once
    rules: tuple[tuple[int, str, str, bool], ...]  # (limit, rule_id, subject, shadow)


@dataclass(slots=True)
class Config:
    """The live configuration: entries by id, lists as sets. Replaced entry by entry by the admin API."""

    settings: Settings = field(default_factory=Settings)
    skus: dict[str, Sku] = field(default_factory=dict)
    spus: dict[str, Spu] = field(default_factory=dict)
    activities: dict[str, Activity] = field(default_factory=dict)
    coupons: dict[str, Coupon] = field(default_factory=dict)
    rules: dict[str, Rule] = field(default_factory=dict)
    blacklist: ListSet = field(default_factory=ListSet)
    whitelist: ListSet = field(default_factory=ListSet)
    auto_blacklist: AutoBlacklist = field(default_factory=AutoBlacklist)
    _plan: tuple[WindowPlan, ...] | None = field(default=None, init=False, repr=False)
    version: str = field(default="", init=False)  # a digest of the document, logged with every decision

    def changed(self) -> None:
        """Call after any change: the version is recomputed (here, on the admin call, not on a
        check), and derived views (the rule plan) are rebuilt on next use."""
        self._plan = None
        self.version = hashlib.blake2b(msgspec.msgpack.encode(self.to_doc()), digest_size=6).hexdigest()

    def rule_plan(self) -> tuple[WindowPlan, ...]:
        """The risk rules grouped by the window they read (subject x scope x length), with limits
        already multiplied: what every check walks, computed once per configuration change."""
        if self._plan is None:
            groups: dict[tuple[Subject, str], list[Rule]] = {}
            for rule in self.rules.values():
                groups.setdefault((rule.subject, rule.window_key), []).append(rule)
            m = self.settings.multiplier
            self._plan = tuple(
                WindowPlan(
                    subject,
                    rules[0].scope.key,
                    wkey,
                    rules[0].window_seconds,
                    min(r.limit(m) for r in rules),
                    tuple((r.limit(m), r.rule_id, subject.value, r.mode == "shadow") for r in rules),
                )
                for (subject, wkey), rules in groups.items()
            )
        return self._plan

    def section(self, name: str) -> dict[str, Any]:
        section: dict[str, Any] = getattr(self, name)
        return section

    def list_set(self, name: ListName) -> ListSet:
        return self.blacklist if name == "blacklist" else self.whitelist

    def to_doc(self, secrets: bool = False) -> dict[str, Any]:
        """The whole document: as `GET /v1/admin/config` shows it (the admin token left out), or with
        `secrets` for snapshots and the journal."""
        settings = self.settings if secrets else msgspec.structs.replace(self.settings, admin_token=None)
        doc: dict[str, Any] = {"settings": msgspec.to_builtins(settings)}
        for name in SECTIONS:
            doc[name] = [msgspec.to_builtins(e) for e in self.section(name).values()]
        doc["lists"] = msgspec.to_builtins(ListsDoc(blacklist=self.blacklist.to_doc(), whitelist=self.whitelist.to_doc()))
        doc["auto_blacklist"] = msgspec.to_builtins(self.auto_blacklist)
        return doc
