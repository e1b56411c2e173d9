"""The values of SPEC section 1: bounds, ids, money, durations, ratios and folding, and the base
of every configuration entry. Shared by the configuration, the wire schema and the lists.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Annotated, Any, ClassVar

import msgspec

# Bounds that keep every amount, and every sum of them the journal and snapshots store, inside
# msgpack's int64, while far above any real price (10^13 fen is 100 billion yuan) or order.
MAX_MONEY = 10**13
MAX_QUANTITY = 100_000
MAX_WINDOW = 7 * 86400
MAX_DURATION = 10 * 365 * 86400
MAX_RATIO = 10**6
MAX_RATIO_PLACES = 12


# Ids are printable: no control characters, which also keeps the joined actor keys unambiguous.
# (A lookahead, not `^[^...]+$`: Python's `$` also matches before a final newline.)
CONTROL = "[\\x00-\\x1f\\x7f]"
PRINTABLE = f"^(?![\\s\\S]*{CONTROL})"
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=PRINTABLE)]
# The same rule for the ids of a check, tested by `control_character` once per request: msgspec
# runs a pattern through Python's `re` for every field, two thirds of decoding a check body.
IdText = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
_CONTROL = re.compile(CONTROL)
PosInt = Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY * 1000)]
Money = Annotated[int, msgspec.Meta(ge=0, le=MAX_MONEY)]
MAX_BUCKETS = 64
Buckets = Annotated[int, msgspec.Meta(ge=1, le=MAX_BUCKETS)]
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
    # A short string such as '1e-10000000' is a fraction of ten million digits, which would stall
    # the event loop at every check that uses it: exact, but only to a sensible precision.
    _, digits, exponent = d.as_tuple()
    kept = len(bytes(digits).rstrip(b"\0"))  # trailing zeros are not decimal places
    if kept and isinstance(exponent, int) and exponent + len(digits) - kept < -MAX_RATIO_PLACES:
        raise ValueError(f"ratio {value!r} has more than {MAX_RATIO_PLACES} decimal places")
    return Fraction(d)


def control_character(ids: list[str]) -> str | None:
    """`Id`'s rule over a request's `IdText`s at once: the first id that breaks it, if any."""
    joined = "".join(ids)
    if (joined.isascii() and joined.isprintable()) or _CONTROL.search(joined) is None:
        return None
    return next(value for value in ids if _CONTROL.search(value))


def named(field_name: str, parse: Callable[[Any], object], value: object) -> None:
    """Run a field's parser so that its error names the field."""
    try:
        parse(value)
    except ValueError as e:
        raise ValueError(f"{field_name}: {e}") from None


def fold(text: str) -> str:
    """Compatibility forms, case and white space folded away, so that 'Zhang  San', 'zhang san',
    'ＺＨＡＮＧ ＳＡＮ' and 'zhangsan' are one receiver, as '张 三' and '张三' are."""
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return "".join(text.split()).casefold()


def fold_path(path: str) -> str:
    """A region path ('Zhejiang/Hangzhou/Xihu') folded part by part. A missing level stays as an
    empty part ('Guangdong/Dongguan//Humen': a town with no district); trailing ones are dropped."""
    if not path.isascii():
        path = unicodedata.normalize("NFKC", path)
    return "/".join(fold(x) for x in path.split("/")).rstrip("/")


# Phones written in international form with this country code are the national number: the
# home market of the gateway (SPEC's phones and default messages are Chinese).
HOME_COUNTRY_CODE = "86"


def fold_phone(phone: str) -> str:
    """The phone's digits, so that '139-0000 0000', '１３９００００００００', '+86 139 0000 0000',
    '0086 13900000000' and '8613900000000' are one phone. Other countries' numbers keep a leading '+' ('00' is read as
    the international prefix, as dialled from China)."""
    if phone.isdigit() and phone.isascii() and not phone.startswith(("00", HOME_COUNTRY_CODE)):
        return phone  # already folded, as checkout usually sends it
    text = unicodedata.normalize("NFKC", phone).strip()
    digits = "".join(str(int(c)) for c in text if c.isdecimal())
    if text.startswith("+"):
        international = digits
    elif digits.startswith("00"):
        international = digits[2:]
    elif len(digits) == 13 and digits.startswith(HOME_COUNTRY_CODE + "1"):
        return digits[len(HOME_COUNTRY_CODE) :]  # a mobile number (11 digits, 1...) after 86 without its +
    else:
        return digits
    if international.startswith(HOME_COUNTRY_CODE):
        return international[len(HOME_COUNTRY_CODE) :]
    return "+" + international if international else ""


class Entry(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, dict=True, kw_only=True):
    """A document entry; `dict=True` lets derived values be cached on it. `PARSED` names the fields
    whose text has a grammar beyond their type (durations, ratios) and the parser that checks it:
    run here, and field by field by `document` so that one run reports every bad one."""

    PARSED: ClassVar[Mapping[str, Callable[[Any], object]]] = {}

    def __post_init__(self) -> None:
        for name, parse in self.PARSED.items():
            named(name, parse, getattr(self, name))
