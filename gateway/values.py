"""The values of SPEC section 1: bounds, ids, money, durations, ratios and folding, and the base
of every configuration entry. Shared by the configuration, the wire schema and the lists.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Annotated, Any

import msgspec

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
    if phone.isdigit():
        return phone  # already folded, as checkout usually sends it
    digits = "".join(c for c in phone if c.isdigit())
    return "+" + digits if phone.strip().startswith("+") else digits


class Entry(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, dict=True, kw_only=True):
    """A document entry; `dict=True` lets derived values be cached on it."""
