"""ACTIVITY_USER_LIMIT and ACTIVITY_SKU_LIMIT (SPEC section 3).

An item is under an activity when one of its discounts carries that `activity_id`; the user's
quantity under the activity (all SKUs together for `user_limit`, per SKU for `sku_limits`),
held plus confirmed, may not pass the limit.
"""

from __future__ import annotations

import pytest

from typing import Any

from tests.conftest import Gateway, MakeGateway, base_config, discount, item, order

pytestmark = pytest.mark.both_modes  # every test against the single node and cluster mode

VAGUE = "Too many orders right now, please try again later"
DEGRADE = "This promotion has ended. Continue without the discount?"
HOLD_TTL = 15 * 60
KEYS = ("code", "activity_id", "sku_id", "subject", "limit", "used", "requested", "degradable")


def limits_config(
    user_limit: int | None = None, sku_limits: dict[str, int] | None = None, disclose: bool = False
) -> dict[str, Any]:
    """S1, S2 (SPU P1) and S3 (SPU P2) without product limits; A1 with the given limits; A2 without."""
    a1: dict[str, Any] = {"activity_id": "A1", "budget": 1_000_000, "disclose_limits": disclose}
    if user_limit is not None:
        a1["user_limit"] = user_limit
    if sku_limits is not None:
        a1["sku_limits"] = sku_limits
    return base_config(
        skus=[
            {"sku_id": "S1", "spu_id": "P1", "cost_price": 800, "original_price": 1000},
            {"sku_id": "S2", "spu_id": "P1", "cost_price": 800, "original_price": 1000},
            {"sku_id": "S3", "spu_id": "P2", "cost_price": 800, "original_price": 1000},
        ],
        activities=[a1, {"activity_id": "A2", "budget": 1_000_000}],
    )


def under(sku: str, quantity: int, activity: str = "A1", amount: int = 10) -> dict[str, Any]:
    """An item under `activity`: one discount carrying its id."""
    return item(sku, quantity, 1000, discount(amount, activity))


def plain(sku: str, quantity: int) -> dict[str, Any]:
    return item(sku, quantity, 1000)


def user_limit_reason(limit: int, used: int, requested: int, activity_id: str = "A1") -> dict[str, Any]:
    return {
        "code": "ACTIVITY_USER_LIMIT",
        "activity_id": activity_id,
        "sku_id": None,
        "subject": "user",
        "limit": limit,
        "used": used,
        "requested": requested,
        "degradable": True,
    }


def sku_limit_reason(sku_id: str, limit: int, used: int, requested: int, activity_id: str = "A1") -> dict[str, Any]:
    return {
        "code": "ACTIVITY_SKU_LIMIT",
        "activity_id": activity_id,
        "sku_id": sku_id,
        "subject": "user",
        "limit": limit,
        "used": used,
        "requested": requested,
        "degradable": True,
    }


def located(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in KEYS} for r in res["reasons"]]


async def allowed(gw: Gateway, body: dict[str, Any]) -> None:
    res = await gw.check(body)
    assert res["decision"] == "allow", res
    assert res["reasons"] == []
    assert res["hold"] is not None


async def denied(gw: Gateway, body: dict[str, Any], *reasons: dict[str, Any]) -> dict[str, Any]:
    res = await gw.check(body)
    assert res["decision"] == "deny", res
    assert located(res) == list(reasons)
    assert res["hold"] is None
    assert (await gw.get(body["order_id"]))["state"] == "denied"
    out: dict[str, Any] = res
    return out


async def counters(gw: Gateway, user: str = "u1") -> tuple[dict[str, int], dict[str, int]]:
    """The user's (activity, activity_sku) counters."""
    c = (await gw.user(user))["counters"]
    return c["activity"], c["activity_sku"]


# -- ACTIVITY_USER_LIMIT ----------------------------------------------------------------------


async def test_user_limit_counts_all_skus_of_the_activity(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=3))
    await allowed(gw, order(under("S1", 2)))
    await allowed(gw, order(under("S3", 1)))  # another SKU, another SPU: same activity
    assert (await counters(gw))[0] == {"A1": 3}
    res = await denied(gw, order(under("S2", 1)), user_limit_reason(limit=3, used=3, requested=1))
    assert res["message"] == VAGUE
    assert (await counters(gw))[0] == {"A1": 3}


async def test_user_limit_in_one_order(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=3))
    await denied(gw, order(under("S1", 4)), user_limit_reason(limit=3, used=0, requested=4))
    await denied(gw, order(under("S1", 2), under("S2", 2)), user_limit_reason(limit=3, used=0, requested=4))
    assert (await counters(gw))[0] == {}
    await allowed(gw, order(under("S1", 2), under("S2", 1)))
    assert (await counters(gw))[0] == {"A1": 3}


async def test_user_limit_is_per_user(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=2))
    await allowed(gw, order(under("S1", 2), user="u1"))
    await allowed(gw, order(under("S1", 2), user="u2"))
    await denied(gw, order(under("S1", 1), user="u1"), user_limit_reason(limit=2, used=2, requested=1))
    assert (await counters(gw, "u2"))[0] == {"A1": 2}


async def test_user_limit_counts_confirmed_orders(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=3))
    first = order(under("S1", 2))
    await allowed(gw, first)
    await gw.confirm(first["order_id"])
    await gw.advance(HOLD_TTL * 2)  # a confirmed order does not expire
    await allowed(gw, order(under("S2", 1)))  # held
    await denied(gw, order(under("S1", 1)), user_limit_reason(limit=3, used=3, requested=1))
    assert (await counters(gw))[0] == {"A1": 3}


async def test_cancel_gives_the_quantity_back(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=3))
    held, confirmed = order(under("S1", 1)), order(under("S2", 2))
    await allowed(gw, held)
    await allowed(gw, confirmed)
    await gw.confirm(confirmed["order_id"])
    await denied(gw, order(under("S1", 1)), user_limit_reason(limit=3, used=3, requested=1))
    await gw.cancel(held["order_id"])
    assert (await counters(gw))[0] == {"A1": 2}
    await gw.cancel(confirmed["order_id"])
    await gw.cancel(confirmed["order_id"])  # a repeat gives nothing more back
    assert (await counters(gw))[0] == {}
    await allowed(gw, order(under("S1", 3)))
    assert (await counters(gw))[0] == {"A1": 3}


async def test_hold_expiry_gives_the_quantity_back(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=3))
    await allowed(gw, order(under("S1", 3)))
    await gw.advance(HOLD_TTL - 1)
    await denied(gw, order(under("S1", 1)), user_limit_reason(limit=3, used=3, requested=1))
    await gw.advance(1)
    assert (await counters(gw))[0] == {}
    await allowed(gw, order(under("S1", 3)))


async def test_items_without_the_activity_discount_do_not_count(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=2))
    await allowed(gw, order(plain("S1", 5)))
    await allowed(gw, order(item("S1", 5, 1000, discount(10, None, ident="SHOP"))))
    await allowed(gw, order(under("S1", 5, activity="A2")))
    assert (await counters(gw))[0] == {"A2": 5}
    # In one order: only the item carrying A1's discount is under A1.
    await allowed(gw, order(under("S1", 2), plain("S1", 4), under("S2", 3, activity="A2")))
    assert (await counters(gw))[0] == {"A1": 2, "A2": 8}
    await denied(gw, order(plain("S2", 1), under("S2", 1)), user_limit_reason(limit=2, used=2, requested=1))


async def test_two_discounts_of_the_activity_on_one_item_count_the_quantity_once(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=3, sku_limits={"S1": 3}))
    body = order(item("S1", 3, 1000, discount(100, "A1", ident="A1"), discount(50, "A1", ident="C1")))
    await allowed(gw, body)
    assert await counters(gw) == ({"A1": 3}, {"A1/S1": 3})
    assert (await gw.activity("A1"))["held"] == 150  # the budget takes both amounts
    res = await gw.check(order(item("S1", 1, 1000, discount(1, "A1", ident="A1"), discount(1, "A1", ident="C1"))))
    assert res["decision"] == "deny"
    assert sorted(located(res), key=lambda r: r["code"]) == [
        sku_limit_reason("S1", limit=3, used=3, requested=1),
        user_limit_reason(limit=3, used=3, requested=1),
    ]


async def test_two_discounts_of_the_activity_at_the_limit_in_one_order(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=2))
    body = order(item("S1", 2, 1000, discount(100, "A1", ident="A1"), discount(50, "A1", ident="C1", funded_by="partner")))
    await allowed(gw, body)
    assert (await counters(gw))[0] == {"A1": 2}


# -- ACTIVITY_SKU_LIMIT -------------------------------------------------------------------------


async def test_sku_limit_at_the_limit_allowed_one_past_refused(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(sku_limits={"S1": 2}))
    await allowed(gw, order(under("S1", 1)))
    await allowed(gw, order(under("S1", 1)))
    assert (await counters(gw))[1] == {"A1/S1": 2}
    res = await denied(gw, order(under("S1", 1)), sku_limit_reason("S1", limit=2, used=2, requested=1))
    assert res["message"] == VAGUE
    # S2 has no SKU limit under A1.
    await allowed(gw, order(under("S2", 5)))
    assert (await counters(gw))[1] == {"A1/S1": 2, "A1/S2": 5}


async def test_sku_limit_in_one_order_sums_items_of_the_sku(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(sku_limits={"S1": 2}))
    await denied(gw, order(under("S1", 1), under("S1", 2)), sku_limit_reason("S1", limit=2, used=0, requested=3))
    await denied(gw, order(under("S1", 3)), sku_limit_reason("S1", limit=2, used=0, requested=3))
    await allowed(gw, order(under("S1", 1), under("S1", 1), plain("S1", 7)))
    assert (await counters(gw))[1] == {"A1/S1": 2}


async def test_sku_limit_ignores_the_sku_bought_outside_the_activity(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(sku_limits={"S1": 2}))
    await allowed(gw, order(plain("S1", 5)))
    await allowed(gw, order(under("S1", 5, activity="A2")))
    assert (await counters(gw))[1] == {"A2/S1": 5}
    await allowed(gw, order(under("S1", 2)))
    await denied(gw, order(under("S1", 1)), sku_limit_reason("S1", limit=2, used=2, requested=1))


async def test_sku_limit_counts_confirmed_and_cancel_gives_back(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(sku_limits={"S1": 2}))
    first = order(under("S1", 2))
    await allowed(gw, first)
    await gw.confirm(first["order_id"])
    await gw.advance(HOLD_TTL)
    await denied(gw, order(under("S1", 1)), sku_limit_reason("S1", limit=2, used=2, requested=1))
    await gw.cancel(first["order_id"])
    assert await counters(gw) == ({}, {})
    await allowed(gw, order(under("S1", 2)))


async def test_sku_limit_hold_expiry_gives_back(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(sku_limits={"S1": 2}))
    await allowed(gw, order(under("S1", 2)))
    await gw.advance(HOLD_TTL)
    assert await counters(gw) == ({}, {})
    await allowed(gw, order(under("S1", 2)))


async def test_user_and_sku_limits_are_reported_together(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=3, sku_limits={"S1": 1}))
    await allowed(gw, order(under("S1", 1), under("S2", 1)))
    res = await gw.check(order(under("S1", 1), under("S2", 1)))
    assert res["decision"] == "deny"
    assert sorted(located(res), key=lambda r: r["code"]) == [
        sku_limit_reason("S1", limit=1, used=1, requested=1),
        user_limit_reason(limit=3, used=2, requested=2),
    ]
    assert await counters(gw) == ({"A1": 2}, {"A1/S1": 1, "A1/S2": 1})


async def test_denied_order_counts_nothing(gw_factory: MakeGateway) -> None:
    cfg = limits_config(user_limit=5)
    cfg["skus"][0]["limits"] = {"user": 1}
    gw = await gw_factory(cfg)
    res = await gw.check(order(under("S1", 2)))
    assert res["decision"] == "deny"
    assert [r["code"] for r in res["reasons"]] == ["SKU_LIMIT"]
    assert await counters(gw) == ({}, {})
    assert (await gw.activity("A1"))["held"] == 0


# -- what the buyer is told, and degrade --------------------------------------------------------


async def test_limit_is_stated_only_with_disclose_limits(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=2, disclose=True))
    await allowed(gw, order(under("S1", 2)))
    res = await denied(gw, order(under("S1", 1)), user_limit_reason(limit=2, used=2, requested=1))
    assert res["message"] == "This item is limited to 2 per customer"
    gw2 = await gw_factory(limits_config(sku_limits={"S1": 1}, disclose=True))
    res = await denied(gw2, order(under("S1", 2), user="u2"), sku_limit_reason("S1", limit=1, used=0, requested=2))
    assert res["message"] == "This item is limited to 1 per customer"


async def test_activity_limit_refusal_degrades_without_counting_the_activity(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=1))
    await allowed(gw, order(under("S1", 1)))
    body = order(under("S1", 2, amount=300), plain("S2", 1), on_refusal="degrade")
    res = await gw.check(body)
    assert res["decision"] == "degrade", res
    assert located(res) == [user_limit_reason(limit=1, used=1, requested=2)]
    assert res["stripped"] == ["A1"]
    assert res["payable"] == 3000
    assert res["message"] == DEGRADE
    assert (await counters(gw))[0] == {"A1": 1}
    assert (await gw.user("u1"))["counters"]["sku"] == {"S1": 3, "S2": 1}
    assert (await gw.activity("A1"))["held"] == 10


# -- what puts an item under an activity ----------------------------------------------------------


async def test_partner_funded_or_zero_discount_puts_the_item_under_the_activity(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=3))
    await allowed(gw, order(item("S1", 2, 1000, discount(0, "A1"))))
    await allowed(gw, order(item("S2", 1, 1000, discount(50, "A1", funded_by="partner"))))
    assert (await counters(gw))[0] == {"A1": 3}
    await denied(gw, order(item("S1", 1, 1000, discount(0, "A1"))), user_limit_reason(limit=3, used=3, requested=1))


async def test_item_under_two_activities_counts_for_each(gw_factory: MakeGateway) -> None:
    cfg = limits_config(user_limit=2)
    cfg["activities"][1]["user_limit"] = 3
    gw = await gw_factory(cfg)
    await allowed(gw, order(item("S1", 2, 1000, discount(10, "A1"), discount(10, "A2"))))
    assert (await counters(gw))[0] == {"A1": 2, "A2": 2}
    await allowed(gw, order(under("S1", 1, activity="A2")))
    res = await gw.check(order(item("S1", 1, 1000, discount(10, "A1"), discount(10, "A2"))))
    assert res["decision"] == "deny"
    assert sorted(located(res), key=lambda r: r["activity_id"]) == [
        user_limit_reason(limit=2, used=2, requested=1, activity_id="A1"),
        user_limit_reason(limit=3, used=3, requested=1, activity_id="A2"),
    ]


async def test_limit_changed_at_run_time_applies_to_the_next_check(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limits_config(user_limit=5))
    await allowed(gw, order(under("S1", 3)))
    await gw.admin("PUT", "activities/A1", {"budget": 1_000_000, "user_limit": 3, "sku_limits": {"S2": 1}})
    await denied(gw, order(under("S1", 1)), user_limit_reason(limit=3, used=3, requested=1))
    await allowed(gw, order(under("S1", 1), user="u2"))
    await denied(gw, order(under("S2", 2), user="u2"), sku_limit_reason("S2", limit=1, used=0, requested=2))


async def test_cancelled_confirmed_order_keeps_its_quantity_without_release_on_cancel(gw_factory: MakeGateway) -> None:
    cfg = limits_config(user_limit=2)
    cfg["settings"]["release_on_cancel"] = False
    gw = await gw_factory(cfg)
    held, confirmed = order(under("S1", 1)), order(under("S1", 1))
    await allowed(gw, held)
    await allowed(gw, confirmed)
    await gw.confirm(confirmed["order_id"])
    await gw.cancel(confirmed["order_id"])
    await gw.cancel(held["order_id"])  # a hold is always released
    assert (await counters(gw))[0] == {"A1": 1}
    await denied(gw, order(under("S1", 2)), user_limit_reason(limit=2, used=1, requested=2))
    await allowed(gw, order(under("S1", 1)))
