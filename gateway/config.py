"""The configuration document (SPEC section 2): its schema, its validation and its live form.

The document is validated entry by entry, so that one run reports every bad entry with its
location (`skus[3] (sku_id=S9).limits.user: ...`), not just the first. Derived values that the hot
path needs (a fuse ratio as a fraction, a duration in seconds) are computed once per entry and
cached on it.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar, get_args

import msgspec

from gateway.lists import ListName, ListsDoc, ListSet
from gateway.types import LIMIT_SUBJECTS, CounterKey, Subject, counter_key, key
from gateway.values import (
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
    named,
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
    base: Literal["cost", "original"]
    ratio: Ratio

    def __post_init__(self) -> None:
        named("ratio", parse_ratio, self.ratio)


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
    def key(self) -> str:
        """'field SEP value' of the one field set, or ALL_SKUS for the empty scope."""
        for name in ("category", "brand", "spu_id", "sku_id"):
            v = getattr(self, name)
            if v is not None:
                return key(name, v)
        return ALL_SKUS


class Rule(Entry):
    rule_id: Id
    subject: Subject
    window: Duration
    max_quantity: Annotated[int, msgspec.Meta(ge=0, le=MAX_QUANTITY * 1000)]
    scope: Scope = msgspec.field(default_factory=Scope)
    mode: Literal["enforce", "shadow"] = "enforce"

    def __post_init__(self) -> None:
        named("window", parse_duration, self.window)
        if self.window_seconds > MAX_WINDOW:
            raise ValueError(f"window {self.window!r} is longer than 7d")

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

    hold_ttl: Duration = "15m"
    risk_multiplier: Ratio = "1.0"
    unknown: Literal["allow", "deny"] = "allow"
    release_on_cancel: bool = True
    locale: Literal["zh", "en"] = "zh"
    messages: Messages = msgspec.field(default_factory=Messages)
    admin_token: Annotated[str, msgspec.Meta(min_length=8, max_length=256)] | None = None

    def __post_init__(self) -> None:
        named("hold_ttl", parse_duration, self.hold_ttl)
        named("risk_multiplier", parse_ratio, self.risk_multiplier)

    @cached_property
    def hold_ttl_seconds(self) -> int:
        return parse_duration(self.hold_ttl)

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


E = TypeVar("E", bound=Entry)


class ConfigError(ValueError):
    """Every problem found in a document, each with its location."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _where(err: msgspec.ValidationError) -> tuple[str, str]:
    """Split msgspec's 'message - at `$.a.b`' into ('.a.b', 'message')."""
    text = str(err)
    msg, sep, at = text.rpartition(" - at `$")
    return (at.rstrip("`"), msg) if sep else ("", text)


def convert_entry(raw: Any, kind: type[E], where: str) -> E:
    """One entry, validated; raises ConfigError naming `where` and each bad field."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as e:
        path, msg = _where(e)
        raise ConfigError(_field_errors(raw, kind, where) or [f"{where}{path}: {msg}"]) from None


def _struct_in(annotation: Any) -> type[msgspec.Struct] | None:
    """The entry type a field holds (`PriceFuse | None` -> PriceFuse), if it holds one."""
    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, msgspec.Struct):
            return t
    return None


def _field_errors(raw: Any, kind: type[msgspec.Struct], where: str) -> list[str]:
    """Every bad field of an entry, each checked on its own (msgspec stops at an entry's first), so
    that one `check-config` run names them all. Checks across fields (`__post_init__`) run once
    the fields are valid; an entry that is not a table is left to the caller's error."""
    if not isinstance(raw, dict):
        return []
    fields = {f.encode_name: f for f in msgspec.structs.fields(kind)}
    errors = [f"{where}: Object missing required field `{n}`" for n, f in fields.items() if f.required and n not in raw]
    for name, value in raw.items():
        f = fields.get(name)
        if f is None:
            errors.append(f"{where}: Object contains unknown field `{name}`")
            continue
        inner = _struct_in(f.type)
        if inner is not None and (nested := _field_errors(value, inner, f"{where}.{name}")):
            errors.extend(nested)
            continue
        try:
            msgspec.convert(value, f.type)
        except msgspec.ValidationError as e:
            path, msg = _where(e)
            errors.append(f"{where}.{name}{path}: {msg}")
    return errors


def entry_label(section: str, index: int, raw: Any) -> str:
    id_field = SECTIONS[section][1]
    ident = raw.get(id_field) if isinstance(raw, dict) else None
    return f"{section}[{index}] ({id_field}={ident})" if isinstance(ident, str) else f"{section}[{index}]"


def build_config(raw: Any) -> Config:
    """A validated live Config from a parsed document, or ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(["the configuration must be a table/object at the top level"])
    errors: list[str] = []
    cfg = Config()
    for section in raw:
        if section not in SECTIONS and section not in SINGLES:
            errors.append(f"{section}: unknown section (expected one of {', '.join([*SINGLES, *SECTIONS])})")
    for name, kind in SINGLES.items():
        try:
            value = convert_entry(raw.get(name, {}), kind, name)
        except ConfigError as e:
            errors.extend(e.errors)
            continue
        if isinstance(value, ListsDoc):
            cfg.blacklist, cfg.whitelist = ListSet.from_doc(value.blacklist), ListSet.from_doc(value.whitelist)
        else:
            setattr(cfg, name, value)
    for name, (kind, id_field) in SECTIONS.items():
        entries = raw.get(name, [])
        if not isinstance(entries, list):
            errors.append(f"{name}: expected an array of tables/objects")
            continue
        target = cfg.section(name)
        for i, item in enumerate(entries):
            where = entry_label(name, i, item)
            try:
                entry = convert_entry(item, kind, where)
            except ConfigError as e:
                errors.extend(e.errors)
                continue
            ident = getattr(entry, id_field)
            if ident in target:
                errors.append(f"{where}: duplicate {id_field} {ident!r}")
            target[ident] = entry
    if errors:
        raise ConfigError(errors)
    cfg.changed()
    return cfg


def parse_document(text: str, suffix: str) -> Any:
    """TOML for `.toml` files, JSON otherwise; a syntax error becomes a ConfigError with its line."""
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        return json.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"TOML syntax: {e}"]) from None
    except json.JSONDecodeError as e:
        raise ConfigError([f"JSON syntax: {e}"]) from None


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{path}: {e.strerror}"]) from None
    return build_config(parse_document(text, path.suffix.lower()))


def demo_config() -> Config:
    """The embedded demo configuration that `flashguard serve` runs on when given no --config."""
    return load_config(Path(__file__).with_name("demo.toml"))
