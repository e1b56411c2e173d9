"""ACTIVITY_BUDGET_EXHAUSTED and ACTIVITY_NOT_ACTIVE (SPEC section 3).

An activity's budget is spent by every discount that carries its `activity_id`, whoever funds it;
held and confirmed amounts both count; a budget exactly used up is fused. An activity is active
while `starts_at <= now < ends_at`.
"""

from __future__ import annotations

import pytest

import asyncio
from typing import Any

from tests.conftest import T0, Gateway, MakeGateway, base_config, discount, item, order

pytestmark = pytest.mark.both_modes  # every test against the single node and cluster mode

VAGUE = "Too many orders right now, please try again later"
DEGRADE = "This promotion has ended. Continue without the discount?"
HOLD_TTL = 15 * 60


def budget_config(budget: int = 1000, **activity: Any) -> dict[str, Any]:
    """S1 and S2 (no price fuse, no limits), activity A1 with `budget`, and A2 with a large one."""
    return base_config(
        skus=[
            {"sku_id": "S1", "spu_id": "P1", "cost_price": 800, "original_price": 1000},
            {"sku_id": "S2", "spu_id": "P1", "cost_price": 800, "original_price": 1000},
        ],
        activities=[{"activity_id": "A1", "budget": budget, **activity}, {"activity_id": "A2", "budget": 1_000_000}],
    )


def spend(amount: int, *, user: str = "u1", activity: str = "A1", **kw: Any) -> dict[str, Any]:
    """One S1 at 5000 with one platform discount of `amount` from `activity`."""
    return order(item("S1", 1, 5000, discount(amount, activity)), user=user, **kw)


async def budget_of(gw: Gateway, activity_id: str = "A1") -> dict[str, Any]:
    act = await gw.activity(activity_id)
    return {k: act[k] for k in ("budget", "spent", "held", "remaining", "fused")}


def state(budget: int, spent: int, held: int) -> dict[str, Any]:
    remaining = max(budget - spent - held, 0)
    return {"budget": budget, "spent": spent, "held": held, "remaining": remaining, "fused": remaining == 0}


def budget_reason(res: dict[str, Any], activity_id: str = "A1") -> dict[str, Any]:
    found: list[dict[str, Any]] = [
        r for r in res["reasons"] if r["code"] == "ACTIVITY_BUDGET_EXHAUSTED" and r.get("activity_id") == activity_id
    ]
    assert len(found) == 1, res["reasons"]
    return found[0]


def located(reason: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: reason.get(k) for k in keys}


BUDGET_KEYS = ("code", "activity_id", "limit", "used", "requested", "degradable")


def budget_refusal(limit: int, used: int, requested: int, activity_id: str = "A1") -> dict[str, Any]:
    return {
        "code": "ACTIVITY_BUDGET_EXHAUSTED",
        "activity_id": activity_id,
        "limit": limit,
        "used": used,
        "requested": requested,
        "degradable": True,
    }


async def assert_denied_for_budget(gw: Gateway, body: dict[str, Any], limit: int, used: int, requested: int) -> None:
    res = await gw.check(body)
    assert res["decision"] == "deny", res
    assert [r["code"] for r in res["reasons"]] == ["ACTIVITY_BUDGET_EXHAUSTED"]
    assert located(budget_reason(res), *BUDGET_KEYS) == budget_refusal(limit, used, requested)
    assert res["hold"] is None and res["payable"] is None
    assert res["message"] == VAGUE
    assert (await gw.get(body["order_id"]))["state"] == "denied"


# -- the exact boundary ------------------------------------------------------------------


async def test_order_using_the_budget_exactly_is_allowed_and_fuses_the_activity(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    res = await gw.check(spend(1000))
    assert res["decision"] == "allow", res
    assert res["reasons"] == []
    assert res["hold"] == {"expires_at": gw.clock.now() + HOLD_TTL}
    assert res["payable"] == 4000
    assert await budget_of(gw) == state(1000, 0, 1000)
    assert (await budget_of(gw))["fused"] is True


async def test_one_minor_unit_over_the_budget_is_refused(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    await assert_denied_for_budget(gw, spend(1001), limit=1000, used=0, requested=1001)
    assert await budget_of(gw) == state(1000, 0, 0)
    # The refusal held nothing: the exact amount still fits.
    assert (await gw.check(spend(1000)))["decision"] == "allow"


async def test_held_budget_of_earlier_orders_counts_to_the_unit(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    assert (await gw.check(spend(600, user="u1")))["decision"] == "allow"
    await assert_denied_for_budget(gw, spend(401, user="u2"), limit=1000, used=600, requested=401)
    assert await budget_of(gw) == state(1000, 0, 600)
    assert (await gw.check(spend(400, user="u2")))["decision"] == "allow"
    assert await budget_of(gw) == state(1000, 0, 1000)


async def test_fused_activity_refuses_even_a_zero_amount_discount(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    assert (await gw.check(spend(1000)))["decision"] == "allow"
    act = await gw.activity("A1")
    assert act["fused"] is True and act["remaining"] == 0
    await assert_denied_for_budget(gw, spend(0, user="u2"), limit=1000, used=1000, requested=0)
    assert await budget_of(gw) == state(1000, 0, 1000)


async def test_fused_activity_does_not_refuse_orders_without_its_discounts(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    assert (await gw.check(spend(1000)))["decision"] == "allow"
    plain = await gw.check(order(item("S1", 1, 5000), user="u2"))
    assert plain["decision"] == "allow" and plain["reasons"] == []
    other = await gw.check(spend(500, user="u2", activity="A2"))
    assert other["decision"] == "allow" and other["reasons"] == []
    assert await budget_of(gw) == state(1000, 0, 1000)
    assert await budget_of(gw, "A2") == state(1_000_000, 0, 500)


async def test_spent_plus_held_equal_to_budget_fuses(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    first = spend(600)
    assert (await gw.check(first))["decision"] == "allow"
    await gw.confirm(first["order_id"])
    assert await budget_of(gw) == state(1000, 600, 0)
    assert (await gw.check(spend(400, user="u2")))["decision"] == "allow"
    assert await budget_of(gw) == state(1000, 600, 400)
    assert (await gw.activity("A1"))["fused"] is True
    await assert_denied_for_budget(gw, spend(0, user="u3"), limit=1000, used=1000, requested=0)


async def test_spent_budget_alone_fuses(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    first = spend(1000)
    assert (await gw.check(first))["decision"] == "allow"
    await gw.confirm(first["order_id"])
    assert await budget_of(gw) == state(1000, 1000, 0)
    await assert_denied_for_budget(gw, spend(1, user="u2"), limit=1000, used=1000, requested=1)


# -- held budget is freed; confirm makes it spent --------------------------------------------


async def test_cancel_frees_held_budget_for_a_later_order(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    first = spend(1000)
    assert (await gw.check(first))["decision"] == "allow"
    await assert_denied_for_budget(gw, spend(1, user="u2"), limit=1000, used=1000, requested=1)
    view = await gw.cancel(first["order_id"])
    assert view["state"] == "cancelled"
    assert await budget_of(gw) == state(1000, 0, 0)
    assert (await gw.activity("A1"))["fused"] is False
    assert (await gw.check(spend(1000, user="u2")))["decision"] == "allow"
    assert await budget_of(gw) == state(1000, 0, 1000)


async def test_repeated_cancel_frees_the_budget_once(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    first, second = spend(600), spend(400, user="u2")
    assert (await gw.check(first))["decision"] == "allow"
    assert (await gw.check(second))["decision"] == "allow"
    await gw.cancel(first["order_id"])
    await gw.cancel(first["order_id"])
    assert await budget_of(gw) == state(1000, 0, 400)


async def test_hold_expiry_frees_held_budget(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    first = spend(1000)
    res = await gw.check(first)
    assert res["hold"] == {"expires_at": gw.clock.now() + HOLD_TTL}
    await gw.advance(HOLD_TTL - 1)
    # One second before expires_at the hold still counts.
    assert (await gw.get(first["order_id"]))["state"] == "held"
    await assert_denied_for_budget(gw, spend(1, user="u2"), limit=1000, used=1000, requested=1)
    assert await budget_of(gw) == state(1000, 0, 1000)
    moved = await gw.advance(1)
    assert moved["expired"] == 1
    assert (await gw.get(first["order_id"]))["state"] == "expired"
    assert await budget_of(gw) == state(1000, 0, 0)
    assert (await gw.check(spend(1000, user="u2")))["decision"] == "allow"
    assert await budget_of(gw) == state(1000, 0, 1000)


async def test_expired_hold_cannot_be_confirmed_and_spends_nothing(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    first = spend(700)
    assert (await gw.check(first))["decision"] == "allow"
    await gw.advance(HOLD_TTL)
    await gw.confirm(first["order_id"], status=410)
    assert await budget_of(gw) == state(1000, 0, 0)


async def test_confirm_moves_held_to_spent(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    first = spend(300)
    assert (await gw.check(first))["decision"] == "allow"
    assert await budget_of(gw) == state(1000, 0, 300)
    assert (await gw.confirm(first["order_id"]))["state"] == "confirmed"
    assert await budget_of(gw) == state(1000, 300, 0)
    # A repeated confirm changes nothing; the hold TTL no longer applies.
    assert (await gw.confirm(first["order_id"]))["state"] == "confirmed"
    await gw.advance(HOLD_TTL * 2)
    assert await budget_of(gw) == state(1000, 300, 0)
    await assert_denied_for_budget(gw, spend(701, user="u2"), limit=1000, used=300, requested=701)
    assert (await gw.check(spend(700, user="u2")))["decision"] == "allow"
    assert await budget_of(gw) == state(1000, 300, 700)


async def test_cancelling_a_confirmed_order_gives_budget_back(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    first = spend(1000)
    assert (await gw.check(first))["decision"] == "allow"
    await gw.confirm(first["order_id"])
    assert await budget_of(gw) == state(1000, 1000, 0)
    await gw.cancel(first["order_id"])
    assert await budget_of(gw) == state(1000, 0, 0)
    assert (await gw.check(spend(1000, user="u2")))["decision"] == "allow"


async def test_cancelling_a_confirmed_order_keeps_budget_spent_without_release_on_cancel(
    gw_factory: MakeGateway,
) -> None:
    cfg = budget_config(1000)
    cfg["settings"]["release_on_cancel"] = False
    gw = await gw_factory(cfg)
    first = spend(1000)
    assert (await gw.check(first))["decision"] == "allow"
    await gw.confirm(first["order_id"])
    assert (await gw.cancel(first["order_id"]))["state"] == "cancelled"
    assert await budget_of(gw) == state(1000, 1000, 0)
    await assert_denied_for_budget(gw, spend(0, user="u2"), limit=1000, used=1000, requested=0)


# -- what spends the budget -------------------------------------------------------------------


async def test_partner_funded_discount_with_activity_spends_the_budget(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    body = order(item("S1", 1, 5000, discount(400, "A1", funded_by="partner")))
    res = await gw.check(body)
    assert res["decision"] == "allow", res
    assert res["payable"] == 4600
    assert await budget_of(gw) == state(1000, 0, 400)
    over = order(item("S1", 1, 5000, discount(601, "A1", funded_by="partner")), user="u2")
    await assert_denied_for_budget(gw, over, limit=1000, used=400, requested=601)
    await gw.confirm(body["order_id"])
    assert await budget_of(gw) == state(1000, 400, 0)


async def test_discount_without_activity_spends_no_budget(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    res = await gw.check(order(item("S1", 1, 5000, discount(3000, None, ident="SHOP"))))
    assert res["decision"] == "allow" and res["payable"] == 2000
    assert await budget_of(gw) == state(1000, 0, 0)


async def test_several_discounts_of_one_activity_across_items_sum(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    body = order(
        item("S1", 1, 5000, discount(300, "A1", ident="A1"), discount(200, "A1", ident="C1")),
        item("S2", 2, 5000, discount(500, "A1", ident="A1")),
    )
    res = await gw.check(body)
    assert res["decision"] == "allow", res
    assert res["payable"] == 15000 - 1000
    assert await budget_of(gw) == state(1000, 0, 1000)


async def test_several_discounts_of_one_activity_one_unit_over_are_refused_once(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    body = order(
        item("S1", 1, 5000, discount(300, "A1", ident="A1"), discount(200, "A1", ident="C1", funded_by="partner")),
        item("S2", 2, 5000, discount(501, "A1", ident="A1")),
    )
    await assert_denied_for_budget(gw, body, limit=1000, used=0, requested=1001)
    assert await budget_of(gw) == state(1000, 0, 0)


async def test_each_activity_has_its_own_budget_and_reason(gw_factory: MakeGateway) -> None:
    cfg = budget_config(1000)
    cfg["activities"][1]["budget"] = 500
    gw = await gw_factory(cfg)
    both = order(item("S1", 1, 5000, discount(1001, "A1", ident="A1"), discount(501, "A2", ident="A2")))
    res = await gw.check(both)
    assert res["decision"] == "deny"
    assert sorted(r["activity_id"] for r in res["reasons"]) == ["A1", "A2"]
    assert located(budget_reason(res, "A1"), *BUDGET_KEYS) == budget_refusal(1000, 0, 1001, "A1")
    assert located(budget_reason(res, "A2"), *BUDGET_KEYS) == budget_refusal(500, 0, 501, "A2")
    one = order(item("S1", 1, 5000, discount(1000, "A1", ident="A1"), discount(501, "A2", ident="A2")))
    res = await gw.check(one)
    assert res["decision"] == "deny"
    assert [located(r, *BUDGET_KEYS) for r in res["reasons"]] == [budget_refusal(500, 0, 501, "A2")]
    assert await budget_of(gw, "A1") == state(1000, 0, 0)
    assert await budget_of(gw, "A2") == state(500, 0, 0)


async def test_budget_refusal_degrades_by_stripping_the_activity_discounts(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    assert (await gw.check(spend(1000)))["decision"] == "allow"
    body = order(
        item("S1", 1, 5000, discount(100, "A1", ident="A1"), discount(50, None, ident="SHOP")),
        user="u2",
        on_refusal="degrade",
    )
    res = await gw.check(body)
    assert res["decision"] == "degrade", res
    assert [located(r, *BUDGET_KEYS) for r in res["reasons"]] == [budget_refusal(1000, 1000, 100)]
    assert res["stripped"] == ["A1"]
    assert res["payable"] == 4950
    assert res["message"] == DEGRADE
    assert res["hold"] == {"expires_at": gw.clock.now() + HOLD_TTL}
    assert await budget_of(gw) == state(1000, 0, 1000)
    await gw.confirm(body["order_id"])
    assert await budget_of(gw) == state(1000, 0, 1000)


# -- ACTIVITY_NOT_ACTIVE ------------------------------------------------------------------------


def at(seconds: int) -> int:
    """A time relative to the gateway's start (the harness starts every clock at T0)."""
    return T0 + seconds


def not_active(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [located(r, "code", "activity_id", "degradable") for r in res["reasons"]]


NOT_ACTIVE_A1 = [{"code": "ACTIVITY_NOT_ACTIVE", "activity_id": "A1", "degradable": True}]


async def test_activity_is_active_from_starts_at(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(10_000, starts_at=at(100)))
    await gw.advance(99)
    early = await gw.check(spend(100))
    assert early["decision"] == "deny"
    assert not_active(early) == NOT_ACTIVE_A1
    assert early["hold"] is None and early["message"] == VAGUE
    assert await budget_of(gw) == state(10_000, 0, 0)
    await gw.advance(1)
    on_time = await gw.check(spend(100))
    assert on_time["decision"] == "allow", on_time
    assert on_time["reasons"] == []
    assert await budget_of(gw) == state(10_000, 0, 100)


async def test_activity_is_not_active_at_ends_at(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(10_000, ends_at=at(100)))
    await gw.advance(99)
    last = await gw.check(spend(100))
    assert last["decision"] == "allow", last
    assert await budget_of(gw) == state(10_000, 0, 100)
    await gw.advance(1)
    late = await gw.check(spend(100, user="u2"))
    assert late["decision"] == "deny"
    assert not_active(late) == NOT_ACTIVE_A1
    assert await budget_of(gw) == state(10_000, 0, 100)


async def test_activity_with_both_bounds(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(10_000, starts_at=at(10), ends_at=at(20)))
    decisions: list[str] = []
    for step in (9, 1, 9, 1):  # now = +9, +10, +19, +20
        await gw.advance(step)
        decisions.append((await gw.check(spend(1)))["decision"])
    assert decisions == ["deny", "allow", "allow", "deny"]
    assert await budget_of(gw) == state(10_000, 0, 2)


async def test_inactive_activity_does_not_refuse_orders_without_its_discounts(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(10_000, starts_at=at(100)))
    res = await gw.check(order(item("S1", 1, 5000, discount(100, "A2"))))
    assert res["decision"] == "allow" and res["reasons"] == []


async def test_inactive_activity_degrades_to_full_price(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(10_000, ends_at=at(100)))
    await gw.advance(100)
    res = await gw.check(spend(100, on_refusal="degrade"))
    assert res["decision"] == "degrade", res
    assert not_active(res) == NOT_ACTIVE_A1
    assert res["stripped"] == ["A1"] and res["payable"] == 5000
    assert res["message"] == DEGRADE
    assert await budget_of(gw) == state(10_000, 0, 0)


async def test_inactive_and_exhausted_are_both_reported(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000, starts_at=at(100)))
    res = await gw.check(spend(1001))
    assert res["decision"] == "deny"
    assert sorted(r["code"] for r in res["reasons"]) == ["ACTIVITY_BUDGET_EXHAUSTED", "ACTIVITY_NOT_ACTIVE"]
    assert located(budget_reason(res), *BUDGET_KEYS) == budget_refusal(1000, 0, 1001)


# -- run-time changes, repeats and concurrent checks ------------------------------------------


async def test_lowering_the_budget_at_run_time_fuses_from_the_next_check(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    assert (await gw.check(spend(600)))["decision"] == "allow"
    await gw.admin("PUT", "activities/A1", {"budget": 500})
    assert await budget_of(gw) == {"budget": 500, "spent": 0, "held": 600, "remaining": 0, "fused": True}
    await assert_denied_for_budget(gw, spend(0, user="u2"), limit=500, used=600, requested=0)
    await gw.admin("PUT", "activities/A1", {"budget": 700})
    await assert_denied_for_budget(gw, spend(101, user="u2"), limit=700, used=600, requested=101)
    assert (await gw.check(spend(100, user="u2")))["decision"] == "allow"
    assert await budget_of(gw) == state(700, 0, 700)


async def test_repeated_check_spends_the_budget_once(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    body = spend(600)
    first = await gw.check(body)
    again = await gw.check(body)
    assert first == again and first["decision"] == "allow"
    assert await budget_of(gw) == state(1000, 0, 600)


async def test_concurrent_checks_never_pass_the_budget_together(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(budget_config(1000))
    bodies = [spend(300, user=f"u{i}") for i in range(10)]
    results = await asyncio.gather(*(gw.check(b) for b in bodies))
    decisions = [r["decision"] for r in results]
    assert decisions.count("allow") == 3 and decisions.count("deny") == 7
    assert all(r["reasons"][0]["code"] == "ACTIVITY_BUDGET_EXHAUSTED" for r in results if r["decision"] == "deny")
    assert await budget_of(gw) == state(1000, 0, 900)
