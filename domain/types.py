"""The shared vocabulary: decisions, reason codes, order states, subjects and the keys actors use.

Everything here is plain data, shared by the HTTP layer, the coordinator, the actors and the
journal, so that none of them needs to import another just to name a thing.
"""

from __future__ import annotations

from enum import StrEnum
from sys import intern
from typing import Any

import msgspec


class Decision(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    DEGRADE = "degrade"


class OrderState(StrEnum):
    HELD = "held"
    CONFIRMED = "confirmed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    DENIED = "denied"


class Code(StrEnum):
    BLACKLISTED = "BLACKLISTED"
    ACTIVITY_NOT_ACTIVE = "ACTIVITY_NOT_ACTIVE"
    ACTIVITY_BUDGET_EXHAUSTED = "ACTIVITY_BUDGET_EXHAUSTED"
    PRICE_FUSE = "PRICE_FUSE"
    ACTIVITY_SKU_LIMIT = "ACTIVITY_SKU_LIMIT"
    ACTIVITY_USER_LIMIT = "ACTIVITY_USER_LIMIT"
    SKU_LIMIT = "SKU_LIMIT"
    SPU_LIMIT = "SPU_LIMIT"
    RISK_RULE = "RISK_RULE"
    WHITELISTED = "WHITELISTED"
    UNKNOWN_SKU = "UNKNOWN_SKU"
    UNKNOWN_ACTIVITY = "UNKNOWN_ACTIVITY"
    UNKNOWN_COUPON = "UNKNOWN_COUPON"
    COUPON_CLAIM_LIMIT = "COUPON_CLAIM_LIMIT"


# Reasons that stripping the discounts behind them can cure (SPEC section 3, "degradable").
DEGRADABLE = frozenset(
    {
        Code.ACTIVITY_NOT_ACTIVE,
        Code.ACTIVITY_BUDGET_EXHAUSTED,
        Code.PRICE_FUSE,
        Code.ACTIVITY_SKU_LIMIT,
        Code.ACTIVITY_USER_LIMIT,
        Code.UNKNOWN_ACTIVITY,
    }
)


class Subject(StrEnum):
    """Whom a limit or a risk rule counts for. Region levels key on a prefix of the address path."""

    USER = "user"
    DEVICE = "device"
    IP = "ip"
    RECEIVER_NAME = "receiver_name"
    RECEIVER_PHONE = "receiver_phone"
    RECEIVER_ADDRESS = "receiver_address"
    PROVINCE = "address:province"
    CITY = "address:city"
    DISTRICT = "address:district"
    TOWN = "address:town"


# How many address path parts each region level keys on.
REGION_DEPTH = {Subject.PROVINCE: 1, Subject.CITY: 2, Subject.DISTRICT: 3, Subject.TOWN: 4}

# The subjects a SKU or SPU `limits` table may name.
LIMIT_SUBJECTS = (
    Subject.USER,
    Subject.DEVICE,
    Subject.RECEIVER_NAME,
    Subject.RECEIVER_PHONE,
    Subject.RECEIVER_ADDRESS,
)

# Keys are strings joined by SEP (ids may not contain control characters, so a key splits back
# uniquely). Strings cache their hash, and dicts of strings and ints are not tracked by the garbage
# collector: with millions of counters, both matter more than anything else on the hot path.
SEP = "\x1f"
# An actor's identity: "kind SEP folded value", e.g. "user\x1fu1", "address:town\x1fzhejiang/...".
SubjectKey = str
# A counter inside a subject actor: "sku SEP id", "spu SEP id", "act SEP id",
# "actsku SEP act SEP sku", "coupon SEP id".
CounterKey = str
# A risk-rule window inside a subject actor: "scope field SEP scope value SEP seconds"; an empty
# scope field means every SKU.
WindowKey = str


def key(*parts: str) -> str:
    return SEP.join(parts)


def counter_key(*parts: str) -> CounterKey:
    """A counter's key, interned: one string however many actors count it."""
    return intern(SEP.join(parts))


MAX_TOTAL = 2**62  # auto-blacklist totals saturate here


def clamp(value: int) -> int:
    """Saturate a running total: a cost far above the paid price, summed over many orders, could
    otherwise pass what msgpack (int64) can store in the journal and snapshots."""
    return max(-MAX_TOTAL, min(MAX_TOTAL, value))
# A state change as the journal stores it: ("check", ...), ("confirm", id, t), ("put", ...), ...
Record = tuple[Any, ...]


class Reason(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One failed check, with the fields that locate it (SPEC section 3). Build it with `reason`."""

    code: Code
    degradable: bool  # no default, so it is always on the wire, as the SPEC's example shows
    activity_id: str | None = None
    sku_id: str | None = None
    spu_id: str | None = None
    rule_id: str | None = None
    coupon_id: str | None = None
    discount_id: str | None = None
    subject: str | None = None
    value: str | None = None
    limit: int | None = None
    used: int | None = None
    requested: int | None = None
    auto: bool | None = None


def reason(code: Code, **where: Any) -> Reason:
    """A Reason whose `degradable` follows from its code, so no call site can get it wrong."""
    return Reason(code=code, degradable=code in DEGRADABLE, **where)


class Notice(msgspec.Struct, omit_defaults=True, kw_only=True):
    """Something the operator should know that did not refuse the order."""

    code: str
    message: str
    sku_id: str | None = None
    activity_id: str | None = None
    coupon_id: str | None = None
