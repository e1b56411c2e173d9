"""The configuration document (SPEC section 2): its schema, its validation and its live form.

The document is validated entry by entry, so that one run reports every bad entry with its
location (`skus[3] (sku_id=S9).limits.user: ...`), not just the first. Derived values that the hot
path needs (a fuse ratio as a fraction, a duration in seconds) are computed once per entry and
cached on it.
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar

import msgspec

from gateway.types import LIMIT_SUBJECTS, Subject, key

# Bounds that keep every amount, and every sum of them the journal and snapshots store, inside
# msgpack's int64, while far above any real price (10^13 fen is 100 billion yuan) or order.
MAX_MONEY = 10**13
MAX_QUANTITY = 100_000
MAX_WINDOW = 7 * 86400
MAX_DURATION = 10 * 365 * 86400
MAX_RATIO = 10**6


# Ids are printable: no control characters, which also keeps the joined actor keys unambiguous.
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern="^[^\\x00-\\x1f\\x7f]+$")]
PosInt = Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY * 1000)]
Money = Annotated[int, msgspec.Meta(ge=0, le=MAX_MONEY)]
Seconds = Annotated[int, msgspec.Meta(ge=0, le=2**40)]
Duration = int | str
Ratio = str | int | float

_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Duration) -> int:
    """`30s`, `15m`, `1h`, `24h`, `7d` or whole seconds, as seconds (at least one)."""
    if isinstance(value, bool):
        raise ValueError("a duration is whole seconds or a string like '15m'")
    if isinstance(value, int):
        seconds = value
    else:
        m = _DURATION.match(value)
        if not m:
            raise ValueError(f"bad duration {value!r}: use whole seconds or '30s', '15m', '1h', '7d'")
        seconds = int(m.group(1)) * _UNIT[m.group(2)]
    if not 1 <= seconds <= MAX_DURATION:
        raise ValueError(f"duration {value!r} must be between one second and ten years")
    return seconds


def parse_ratio(value: Ratio) -> Fraction:
    """A decimal ratio, exactly: '0.95' and 0.95 both give 19/20 (a float is read by its repr)."""
    if isinstance(value, bool):
        raise ValueError("a ratio is a decimal number or a string")
    try:
        d = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
    except InvalidOperation:
        raise ValueError(f"bad ratio {value!r}: use a decimal such as '0.95'") from None
    if not d.is_finite() or not 0 <= d <= MAX_RATIO:
        raise ValueError(f"ratio {value!r} must be a number from 0 to {MAX_RATIO}")
    return Fraction(d)


def named(field_name: str, parse: Callable[[Any], object], value: object) -> None:
    """Run a field's parser so that its error names the field."""
    try:
        parse(value)
    except ValueError as e:
        raise ValueError(f"{field_name}: {e}") from None


def fold(text: str) -> str:
    """Case and white space folded, so that 'Zhang  San' and 'zhang san' are one receiver."""
    return " ".join(text.split()).casefold()


def fold_path(path: str) -> str:
    """A region path ('Zhejiang/Hangzhou/Xihu') folded part by part. A missing level stays as an
    empty part ('Guangdong/Dongguan//Humen': a town with no district); trailing ones are dropped."""
    return "/".join(fold(x) for x in path.split("/")).rstrip("/")


def fold_phone(phone: str) -> str:
    """Digits only (a leading '+' kept): '139-0000 0000' and '13900000000' are one phone."""
    digits = "".join(c for c in phone if c.isdigit())
    return "+" + digits if phone.strip().startswith("+") else digits


class Entry(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, dict=True, kw_only=True):
    """A document entry; `dict=True` lets derived values be cached on it."""


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


ListKind = Literal["user", "device", "phone", "address", "discount"]
LIST_KINDS: tuple[ListKind, ...] = ("user", "device", "phone", "address", "discount")
ListName = Literal["blacklist", "whitelist"]


AddressPath = Annotated[str, msgspec.Meta(min_length=1, max_length=512, pattern="^[^\\x00-\\x1f\\x7f]+$")]


class ListEntries(Entry):
    user: list[Id] = msgspec.field(default_factory=list)
    device: list[Id] = msgspec.field(default_factory=list)
    phone: list[Id] = msgspec.field(default_factory=list)
    address: list[AddressPath] = msgspec.field(default_factory=list)
    discount: list[Id] = msgspec.field(default_factory=list)


LIST_VALUE: dict[str, Any] = {"user": Id, "device": Id, "phone": Id, "address": AddressPath, "discount": Id}


class ListsDoc(Entry):
    blacklist: ListEntries = msgspec.field(default_factory=ListEntries)
    whitelist: ListEntries = msgspec.field(default_factory=ListEntries)


class AutoBlacklist(Entry):
    discount_cost: Annotated[int, msgspec.Meta(ge=1, le=MAX_MONEY)] | None = None
    negative_margin: bool = False


def normalize_list_value(kind: ListKind, value: str) -> str:
    """The form a list entry is matched in: phones by digits, addresses by folded path."""
    if kind == "phone":
        return fold_phone(value)
    if kind == "address":
        return fold_path(value)
    return value


@dataclass(slots=True)
class ListSet:
    """One list (black or white): per kind, normalized value -> the value as the operator wrote it."""

    entries: dict[str, dict[str, str]] = field(default_factory=lambda: {k: {} for k in LIST_KINDS})

    def add(self, kind: ListKind, value: str) -> None:
        self.entries[kind][normalize_list_value(kind, value)] = value

    def remove(self, kind: ListKind, value: str) -> bool:
        return self.entries[kind].pop(normalize_list_value(kind, value), None) is not None

    def has(self, kind: str, normalized: str) -> bool:
        return normalized in self.entries[kind]

    def has_prefix(self, kind: str, prefixes: tuple[str, ...]) -> str | None:
        """The first listed region path that is a prefix of the address (given as its prefixes)."""
        listed = self.entries[kind]
        for p in prefixes:
            if p in listed:
                return listed[p]
        return None

    def to_doc(self) -> ListEntries:
        return ListEntries(**{k: sorted(v.values()) for k, v in self.entries.items()})

    @classmethod
    def from_doc(cls, doc: ListEntries) -> ListSet:
        out = cls()
        for kind in LIST_KINDS:
            for value in getattr(doc, kind):
                out.add(kind, value)
        return out


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
    """One entry, validated; raises ConfigError naming `where` and the field."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as e:
        path, msg = _where(e)
        raise ConfigError([f"{where}{path}: {msg}"]) from None


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
    for key in raw:
        if key not in SECTIONS and key not in SINGLES:
            errors.append(f"{key}: unknown section (expected one of {', '.join([*SINGLES, *SECTIONS])})")
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
