"""The wire: request and response bodies of SPEC sections 3-5, as msgspec types.

msgspec validates while it decodes: strict integers (no floats, no booleans for money or
quantities), bounded strings, unknown fields refused where they would hide a typo. The same types
decode JSON and MessagePack bodies, so both content types mean exactly the same thing.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from domain.values import MAX_MONEY, MAX_QUANTITY, Id, IdText, Money, control_character
from domain.types import Decision, Notice, OrderState, Reason

Text = Annotated[str, msgspec.Meta(max_length=256)]
MAX_ITEMS = 100
MAX_DISCOUNTS = 20


class Wire(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class Address(Wire):
    province: Text | None = None
    city: Text | None = None
    district: Text | None = None
    town: Text | None = None
    detail: Text | None = None


class Receiver(Wire):
    name: Text | None = None
    phone: Annotated[str, msgspec.Meta(max_length=32)] | None = None
    address: Address | None = None


class Discount(Wire):
    id: IdText
    amount: Money
    kind: IdText | None = None
    activity_id: IdText | None = None
    funded_by: Literal["platform", "partner"] = "platform"


class Item(Wire):
    sku_id: IdText
    quantity: Annotated[int, msgspec.Meta(ge=1, le=MAX_QUANTITY)]
    unit_price: Money
    discounts: Annotated[list[Discount], msgspec.Meta(max_length=MAX_DISCOUNTS)] = []


class CheckRequest(Wire):
    """Its ids are `IdText`s, checked together by `control_character` (the hot path's decoding)."""

    order_id: IdText
    user_id: IdText
    items: Annotated[list[Item], msgspec.Meta(min_length=1, max_length=MAX_ITEMS)]
    device_id: IdText | None = None
    ip: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    receiver: Receiver | None = None
    on_refusal: Literal["deny", "degrade"] = "deny"

    def __post_init__(self) -> None:
        ids = [self.order_id, self.user_id, self.device_id or ""]
        worth = 0
        for i, item in enumerate(self.items):
            price = item.unit_price * item.quantity
            worth += price
            total = 0
            ids.append(item.sku_id)
            for d in item.discounts:
                total += d.amount
                ids += (d.id, d.kind or "", d.activity_id or "")
            if total > price:
                raise ValueError(f"items[{i}]: discounts ({total}) exceed the item's price ({item.unit_price} x {item.quantity})")
        if worth > MAX_MONEY:
            raise ValueError(f"the order is worth more than {MAX_MONEY} (unit_price x quantity, all items)")
        bad = control_character(ids)
        if bad is not None:
            raise ValueError(f"{_path_of(msgspec.to_builtins(self), bad)} may not contain control characters ({bad!r})")


def _path_of(value: Any, target: str, at: str = "") -> str | None:
    """Where `target` sits in a decoded body ('items[0].sku_id'), for an error message."""
    if value == target:
        return at
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found = _path_of(child, target, f"{at}[{key}]" if isinstance(key, int) else f"{at}.{key}" if at else key)
        if found is not None:
            return found
    return None


class ClaimRequest(Wire):
    user_id: Id
    coupon_id: Id
    device_id: Id | None = None
    phone: Annotated[str, msgspec.Meta(max_length=32)] | None = None


class ClockRequest(Wire):
    advance: Annotated[int, msgspec.Meta(ge=0, le=10 * 365 * 86400)] | None = None
    set: Annotated[int, msgspec.Meta(ge=0, le=2**40)] | None = None

    def __post_init__(self) -> None:
        if (self.advance is None) == (self.set is None):
            raise ValueError("give exactly one of 'advance' or 'set'")


class Hold(msgspec.Struct):
    expires_at: int


class CheckResponse(msgspec.Struct, kw_only=True):
    """The answer to a check or a coupon claim (SPEC section 3)."""

    order_id: str | None
    decision: Decision
    reasons: list[Reason]
    shadow: list[Reason]
    warnings: list[Notice]
    message: str | None
    hold: Hold | None = None
    payable: int | None = None
    stripped: list[str] = []


class OrderView(msgspec.Struct, kw_only=True):
    """`GET /v1/orders/{id}` and the answer to confirm and cancel."""

    order_id: str
    state: OrderState
    decision: Decision
    user_id: str
    created_at: int
    updated_at: int
    expires_at: int | None
    payable: int | None
    stripped: list[str]
    reasons: list[Reason]

