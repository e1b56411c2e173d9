"""on_refusal = "degrade" (SPEC section 3).

When every reason of a refusal is degradable (ACTIVITY_NOT_ACTIVE, ACTIVITY_BUDGET_EXHAUSTED,
PRICE_FUSE, ACTIVITY_SKU_LIMIT, ACTIVITY_USER_LIMIT) and the order asks for it, the discounts that
caused them are stripped (every discount of a failing activity, across all items; for a price fuse
every counted discount of the fused item, partner-funded and whitelisted ones kept), the stripped
order is checked again and, if it passes, held as it would be paid. Any non-degradable reason, the
default `on_refusal = "deny"`, or a recheck that still fails gives `deny`.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import T0, Gateway, MakeGateway, base_config, discount, item, order

pytestmark = pytest.mark.both_modes  # every test against the single node and cluster mode

VAGUE = "Too many orders right now, please try again later"
DEGRADE = "This promotion has ended. Continue without the discount?"
DEGRADE_ZH = "当前活动已结束，是否去除优惠继续下单"
VAGUE_ZH = "当前下单人数太多，请稍后再试"
HOLD_TTL = 15 * 60

KEYS = ("code", "activity_id", "sku_id", "spu_id", "rule_id", "subject", "limit", "used", "requested", "degradable")
DEGRADABLE = {"ACTIVITY_NOT_ACTIVE", "ACTIVITY_BUDGET_EXHAUSTED", "PRICE_FUSE", "ACTIVITY_SKU_LIMIT", "ACTIVITY_USER_LIMIT"}


def why(code: str, **fields: Any) -> dict[str, Any]:
    """A reason as the SPEC locates it; `degradable` follows from the SPEC's table."""
    out: dict[str, Any] = {k: None for k in KEYS}
    out.update(fields, code=code, degradable=code in DEGRADABLE)
    return out


def located(res: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(({k: r.get(k) for k in KEYS} for r in res["reasons"]), key=repr)


def expect(*reasons: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(reasons, key=repr)


def degrade_config(**sections: Any) -> dict[str, Any]:
    """S1 (price fuse at cost 800, ratio 1.0) and S2 (no fuse), both of SPU P1, category phone;
    A1 with a budget of 1000, A2 with a large budget; the discount id 618-SUPER is whitelisted."""
    doc = base_config(
        skus=[
            {
                "sku_id": "S1",
                "spu_id": "P1",
                "category": "phone",
                "cost_price": 800,
                "original_price": 1000,
                "price_fuse": {"base": "cost", "ratio": "1.0"},
            },
            {"sku_id": "S2", "spu_id": "P1", "category": "phone", "cost_price": 800, "original_price": 1000},
        ],
        activities=[{"activity_id": "A1", "budget": 1000}, {"activity_id": "A2", "budget": 1_000_000}],
        lists={"whitelist": {"discount": ["618-SUPER"]}},
    )
    doc.update(sections)
    return doc


async def budget(gw: Gateway, activity_id: str) -> tuple[int, int]:
    """(held, spent) of an activity."""
    act = await gw.activity(activity_id)
    return act["held"], act["spent"]


async def counters(gw: Gateway, user: str = "u1") -> dict[str, dict[str, int]]:
    c: dict[str, dict[str, int]] = (await gw.user(user))["counters"]
    return {k: c[k] for k in ("sku", "spu", "activity", "activity_sku")}


def nothing_counted() -> dict[str, dict[str, int]]:
    return {"sku": {}, "spu": {}, "activity": {}, "activity_sku": {}}


async def assert_degraded(gw: Gateway, body: dict[str, Any], stripped: list[str], payable: int) -> dict[str, Any]:
    res = await gw.check(body)
    assert res["decision"] == "degrade", res
    assert res["reasons"] and all(r["degradable"] is True for r in res["reasons"])
    assert res["stripped"] == stripped
    assert res["payable"] == payable
    assert res["hold"] == {"expires_at": gw.clock.now() + HOLD_TTL}
    assert res["message"] == DEGRADE
    view = await gw.get(body["order_id"])
    assert view["state"] == "held"
    assert view["payable"] == payable and view["stripped"] == stripped
    out: dict[str, Any] = res
    return out


async def assert_denied(gw: Gateway, body: dict[str, Any], message: str = VAGUE) -> dict[str, Any]:
    res = await gw.check(body)
    assert res["decision"] == "deny", res
    assert res["hold"] is None and res["payable"] is None and res["stripped"] == []
    assert res["message"] == message
    assert (await gw.get(body["order_id"]))["state"] == "denied"
    out: dict[str, Any] = res
    return out


async def exhaust_a1(gw: Gateway) -> None:
    """u0 holds all of A1's budget of 1000."""
    res = await gw.check(order(item("S2", 1, 5000, discount(1000, "A1")), user="u0"))
    assert res["decision"] == "allow", res
    assert await budget(gw, "A1") == (1000, 0)


# -- each degradable reason, and what is stripped ------------------------------------------------


async def test_budget_exhausted_strips_every_discount_of_the_activity_across_items(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(degrade_config())
    await exhaust_a1(gw)
    body = order(
        item("S1", 1, 1000, discount(100, "A1", ident="A1"), discount(50, None, ident="SHOP")),
        item("S2", 2, 5000, discount(200, "A1", ident="C1"), discount(300, "A2", ident="A2")),
        on_refusal="degrade",
    )
    res = await assert_degraded(gw, body, stripped=["A1", "C1"], payable=1000 + 10000 - 50 - 300)
    assert located(res) == [why("ACTIVITY_BUDGET_EXHAUSTED", activity_id="A1", limit=1000, used=1000, requested=300)]
    # A1's budget holds only u0's order; A2 holds the discount that was kept.
    assert await budget(gw, "A1") == (1000, 0)
    assert await budget(gw, "A2") == (300, 0)
    assert await counters(gw) == {
        "sku": {"S1": 1, "S2": 2},
        "spu": {"P1": 3},
        "activity": {"A2": 2},
        "activity_sku": {"A2/S2": 2},
    }
    # Confirming spends only what the degraded order holds.
    assert (await gw.confirm(body["order_id"]))["state"] == "confirmed"
    assert await budget(gw, "A1") == (1000, 0)
    assert await budget(gw, "A2") == (0, 300)
    assert (await gw.user("u1"))["auto_blacklist"]["discount_total"] == 350


async def test_not_active_strips_the_activity_discounts_whoever_funds_them(gw_factory: MakeGateway) -> None:
    cfg = degrade_config()
    cfg["activities"][0]["ends_at"] = T0 + 100
    gw = await gw_factory(cfg)
    await gw.advance(100)
    body = order(
        item("S1", 1, 1000, discount(150, "A1", ident="A1")),
        item("S2", 1, 5000, discount(400, "A1", ident="A1P", funded_by="partner"), discount(100, None, ident="SHOP")),
        on_refusal="degrade",
    )
    res = await assert_degraded(gw, body, stripped=["A1", "A1P"], payable=1000 + 5000 - 100)
    assert located(res) == [why("ACTIVITY_NOT_ACTIVE", activity_id="A1")]
    assert await budget(gw, "A1") == (0, 0)
    assert await counters(gw) == {"sku": {"S1": 1, "S2": 1}, "spu": {"P1": 2}, "activity": {}, "activity_sku": {}}


async def test_price_fuse_strips_every_counted_discount_of_the_item_only(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(degrade_config())
    body = order(
        item(
            "S1",
            2,
            1000,
            discount(300, "A2", ident="A2"),  # counted: stripped
            discount(200, None, ident="SHOP"),  # counted: stripped
            discount(100, None, ident="BEANS", funded_by="partner"),  # not counted: kept
            discount(50, "A2", ident="A2P", funded_by="partner"),  # not counted: kept, still spends A2
            discount(100, None, ident="618-SUPER"),  # whitelisted: kept
        ),
        item("S2", 1, 5000, discount(400, "A2", ident="A2b")),  # another item: untouched
        on_refusal="degrade",
    )
    # counted on S1: 500; paid 1500 < 800 * 2.
    res = await assert_degraded(gw, body, stripped=["A2", "SHOP"], payable=2000 + 5000 - (100 + 50 + 100) - 400)
    assert located(res) == [why("PRICE_FUSE", sku_id="S1")]
    assert await budget(gw, "A2") == (50 + 400, 0)
    # S1 is still under A2 through its partner-funded A2 discount.
    assert await counters(gw) == {
        "sku": {"S1": 2, "S2": 1},
        "spu": {"P1": 3},
        "activity": {"A2": 3},
        "activity_sku": {"A2/S1": 2, "A2/S2": 1},
    }
    assert (await gw.confirm(body["order_id"]))["state"] == "confirmed"
    # Only the kept, counted discount of S2 reaches the auto-blacklist totals.
    assert (await gw.user("u1"))["auto_blacklist"]["discount_total"] == 400


async def test_price_fuse_strip_takes_the_item_out_of_the_activity(gw_factory: MakeGateway) -> None:
    cfg = degrade_config()
    cfg["activities"][1]["user_limit"] = 5
    gw = await gw_factory(cfg)
    body = order(
        item("S1", 1, 1000, discount(300, "A2", ident="A2")),
        item("S2", 1, 1000, discount(300, "A2", ident="A2b")),
        on_refusal="degrade",
    )
    res = await assert_degraded(gw, body, stripped=["A2"], payable=2000 - 300)
    assert located(res) == [why("PRICE_FUSE", sku_id="S1")]
    assert await budget(gw, "A2") == (300, 0)
    assert await counters(gw) == {
        "sku": {"S1": 1, "S2": 1},
        "spu": {"P1": 2},
        "activity": {"A2": 1},
        "activity_sku": {"A2/S2": 1},
    }


async def test_activity_sku_limit_strips_the_activity_on_every_item(gw_factory: MakeGateway) -> None:
    cfg = degrade_config()
    cfg["activities"][0].update(budget=1_000_000, sku_limits={"S1": 1})
    gw = await gw_factory(cfg)
    body = order(
        item("S1", 2, 1000, discount(100, "A1", ident="A1a")),
        item("S2", 1, 5000, discount(100, "A1", ident="A1b"), discount(50, "A2", ident="A2")),
        on_refusal="degrade",
    )
    res = await assert_degraded(gw, body, stripped=["A1a", "A1b"], payable=2000 + 5000 - 50)
    assert located(res) == [
        why("ACTIVITY_SKU_LIMIT", activity_id="A1", sku_id="S1", subject="user", limit=1, used=0, requested=2)
    ]
    assert await budget(gw, "A1") == (0, 0)
    assert await budget(gw, "A2") == (50, 0)
    # S2 is no longer under A1 either: nothing counts for A1.
    assert await counters(gw) == {
        "sku": {"S1": 2, "S2": 1},
        "spu": {"P1": 3},
        "activity": {"A2": 1},
        "activity_sku": {"A2/S2": 1},
    }


async def test_activity_user_limit_strips_only_the_failing_activity(gw_factory: MakeGateway) -> None:
    cfg = degrade_config()
    cfg["activities"][0].update(budget=1_000_000, user_limit=2)
    gw = await gw_factory(cfg)
    first = await gw.check(order(item("S2", 2, 1000, discount(30, "A1"))))
    assert first["decision"] == "allow", first
    body = order(
        item("S2", 1, 1000, discount(100, "A1", ident="A1"), discount(100, "A2", ident="A2")),
        on_refusal="degrade",
    )
    res = await assert_degraded(gw, body, stripped=["A1"], payable=900)
    assert located(res) == [why("ACTIVITY_USER_LIMIT", activity_id="A1", subject="user", limit=2, used=2, requested=1)]
    assert await budget(gw, "A1") == (30, 0)
    assert await budget(gw, "A2") == (100, 0)
    assert await counters(gw) == {
        "sku": {"S2": 3},
        "spu": {"P1": 3},
        "activity": {"A1": 2, "A2": 1},
        "activity_sku": {"A1/S2": 2, "A2/S2": 1},
    }


async def test_a_fused_items_coupon_is_stripped_from_every_item_that_carries_it(gw_factory: MakeGateway) -> None:
    # `stripped` names ids, so checkout removes a stripped coupon from the whole order: the degrade
    # strips it from the item that did not fuse too, and `payable` and the budget agree with that.
    gw = await gw_factory(degrade_config())
    body = order(
        item("S1", 1, 1000, discount(300, "A2", ident="C1")),  # paid 700 < 800: fused
        item("S2", 1, 5000, discount(200, "A2", ident="C1"), discount(100, "A2", ident="A2")),
        on_refusal="degrade",
    )
    res = await assert_degraded(gw, body, stripped=["C1"], payable=1000 + 5000 - 100)
    assert located(res) == [why("PRICE_FUSE", sku_id="S1")]
    assert await budget(gw, "A2") == (100, 0)
    assert await counters(gw) == {
        "sku": {"S1": 1, "S2": 1},
        "spu": {"P1": 2},
        "activity": {"A2": 1},
        "activity_sku": {"A2/S2": 1},
    }


async def test_an_apportioned_coupon_is_listed_once_in_stripped(gw_factory: MakeGateway) -> None:
    # SPEC is silent on repeated ids: checkout apportions an order-level coupon over its items, so
    # one coupon id appears on several items. `stripped` lists the ids of the discounts removed;
    # an operator (and checkout) expects each id once, in order of first appearance.
    gw = await gw_factory(degrade_config())
    await exhaust_a1(gw)
    body = order(
        item("S2", 1, 1000, discount(60, "A1", ident="C1"), discount(10, "A2", ident="A2")),
        item("S2", 1, 1000, discount(40, "A1", ident="C1"), discount(10, "A2", ident="A2")),
        on_refusal="degrade",
    )
    res = await assert_degraded(gw, body, stripped=["C1"], payable=2000 - 20)
    assert located(res) == [why("ACTIVITY_BUDGET_EXHAUSTED", activity_id="A1", limit=1000, used=1000, requested=100)]
    assert await budget(gw, "A1") == (1000, 0)
    assert await budget(gw, "A2") == (20, 0)


async def test_several_degradable_reasons_are_all_stripped_in_one_degrade(gw_factory: MakeGateway) -> None:
    cfg = degrade_config()
    cfg["activities"][1]["user_limit"] = 1
    cfg["activities"].append({"activity_id": "A3", "starts_at": T0 + 3600})
    gw = await gw_factory(cfg)
    await exhaust_a1(gw)
    assert (await gw.check(order(item("S2", 1, 1000, discount(10, "A2")))))["decision"] == "allow"
    body = order(
        item("S1", 1, 1000, discount(300, None, ident="SHOP")),  # fused
        item("S2", 1, 1000, discount(100, "A1", ident="A1"), discount(20, "A3", ident="A3")),
        item("S2", 1, 1000, discount(50, "A2", ident="A2"), discount(40, None, ident="BEANS", funded_by="partner")),
        on_refusal="degrade",
    )
    res = await assert_degraded(gw, body, stripped=["SHOP", "A1", "A3", "A2"], payable=3000 - 40)
    assert located(res) == expect(
        why("PRICE_FUSE", sku_id="S1"),
        why("ACTIVITY_BUDGET_EXHAUSTED", activity_id="A1", limit=1000, used=1000, requested=100),
        why("ACTIVITY_NOT_ACTIVE", activity_id="A3"),
        why("ACTIVITY_USER_LIMIT", activity_id="A2", subject="user", limit=1, used=1, requested=1),
    )
    assert await budget(gw, "A1") == (1000, 0)
    assert await budget(gw, "A2") == (10, 0)
    assert await budget(gw, "A3") == (0, 0)
    assert await counters(gw) == {
        "sku": {"S1": 1, "S2": 3},
        "spu": {"P1": 4},
        "activity": {"A2": 1},
        "activity_sku": {"A2/S2": 1},
    }


async def test_degrade_with_a_shadow_hit_still_degrades(gw_factory: MakeGateway) -> None:
    rule = {"rule_id": "R1", "subject": "user", "scope": {}, "window": "1h", "max_quantity": 0, "mode": "shadow"}
    gw = await gw_factory(degrade_config(rules=[rule]))
    await exhaust_a1(gw)
    body = order(item("S2", 1, 1000, discount(100, "A1")), on_refusal="degrade")
    res = await assert_degraded(gw, body, stripped=["A1"], payable=1000)
    assert located(res) == [why("ACTIVITY_BUDGET_EXHAUSTED", activity_id="A1", limit=1000, used=1000, requested=100)]
    assert [(r["code"], r["rule_id"], r["limit"], r["used"], r["requested"]) for r in res["shadow"]] == [
        ("RISK_RULE", "R1", 0, 0, 1)
    ]
    assert (await gw.user("u1"))["windows"] == [{"scope": {}, "window": 3600, "quantity": 1}]


# -- the degraded hold behaves as any hold -------------------------------------------------------


async def test_degraded_hold_is_counted_once_and_released_on_expiry(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(degrade_config())
    await exhaust_a1(gw)
    body = order(item("S2", 1, 1000, discount(100, "A1"), discount(60, "A2", ident="A2")), on_refusal="degrade")
    first = await assert_degraded(gw, body, stripped=["A1"], payable=940)
    again = await gw.check(body)
    assert again == first
    assert await budget(gw, "A2") == (60, 0)
    assert (await counters(gw))["sku"] == {"S2": 1}
    moved = await gw.advance(HOLD_TTL)
    assert moved["expired"] == 2
    assert (await gw.get(body["order_id"]))["state"] == "expired"
    assert await budget(gw, "A2") == (0, 0)
    assert await budget(gw, "A1") == (0, 0)
    assert await counters(gw) == nothing_counted()


async def test_degraded_order_can_be_cancelled_and_gives_everything_back(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(degrade_config())
    body = order(item("S1", 1, 1000, discount(500, "A2", ident="A2")), on_refusal="degrade")
    await assert_degraded(gw, body, stripped=["A2"], payable=1000)
    await gw.confirm(body["order_id"])
    assert (await counters(gw))["sku"] == {"S1": 1}
    assert (await gw.cancel(body["order_id"]))["state"] == "cancelled"
    assert await counters(gw) == nothing_counted()
    assert await budget(gw, "A2") == (0, 0)


# -- what never degrades -----------------------------------------------------------------------------


async def test_sku_limit_with_a_degradable_reason_is_denied(gw_factory: MakeGateway) -> None:
    cfg = degrade_config()
    cfg["skus"][1]["limits"] = {"user": 1}
    gw = await gw_factory(cfg)
    await exhaust_a1(gw)
    res = await assert_denied(gw, order(item("S2", 2, 1000, discount(100, "A1")), on_refusal="degrade"))
    assert located(res) == expect(
        why("ACTIVITY_BUDGET_EXHAUSTED", activity_id="A1", limit=1000, used=1000, requested=100),
        why("SKU_LIMIT", sku_id="S2", subject="user", limit=1, used=0, requested=2),
    )
    assert await budget(gw, "A1") == (1000, 0)
    assert await counters(gw) == nothing_counted()


async def test_blacklisted_user_with_a_price_fuse_is_denied(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(degrade_config(lists={"blacklist": {"user": ["u1"]}}))
    res = await assert_denied(gw, order(item("S1", 1, 1000, discount(300, "A2")), on_refusal="degrade"))
    assert located(res) == expect(why("PRICE_FUSE", sku_id="S1"), why("BLACKLISTED", subject="user"))
    assert await budget(gw, "A2") == (0, 0)
    assert await counters(gw) == nothing_counted()


async def test_risk_rule_with_an_inactive_activity_is_denied(gw_factory: MakeGateway) -> None:
    rule = {"rule_id": "R1", "subject": "user", "scope": {"category": "phone"}, "window": "1h", "max_quantity": 1}
    cfg = degrade_config(rules=[rule])
    cfg["activities"][0]["starts_at"] = T0 + 60
    gw = await gw_factory(cfg)
    res = await assert_denied(gw, order(item("S2", 2, 1000, discount(100, "A1")), on_refusal="degrade"))
    assert located(res) == expect(
        why("ACTIVITY_NOT_ACTIVE", activity_id="A1"),
        why("RISK_RULE", rule_id="R1", subject="user", limit=1, used=0, requested=2),
    )
    assert await counters(gw) == nothing_counted()
    assert (await gw.user("u1"))["windows"] == []


@pytest.mark.parametrize("on_refusal", [None, "deny"], ids=["default", "deny"])
async def test_without_degrade_a_degradable_refusal_is_denied(gw_factory: MakeGateway, on_refusal: str | None) -> None:
    gw = await gw_factory(degrade_config())
    await exhaust_a1(gw)
    body = order(item("S2", 1, 1000, discount(100, "A1")), on_refusal=on_refusal)
    assert ("on_refusal" in body) is (on_refusal is not None)
    res = await assert_denied(gw, body)
    assert located(res) == [why("ACTIVITY_BUDGET_EXHAUSTED", activity_id="A1", limit=1000, used=1000, requested=100)]
    assert await budget(gw, "A1") == (1000, 0)
    assert await counters(gw) == nothing_counted()


async def test_price_below_the_fuse_without_any_discount_is_denied(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(degrade_config())
    body = order(item("S1", 1, 700, discount(100, "A2", ident="A2")), on_refusal="degrade")
    res = await assert_denied(gw, body)
    assert located(res) == [why("PRICE_FUSE", sku_id="S1")]
    assert await budget(gw, "A2") == (0, 0)
    assert await counters(gw) == nothing_counted()


async def test_recheck_failing_after_stripping_several_reasons_is_denied(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(degrade_config())
    await exhaust_a1(gw)
    body = order(
        item("S1", 1, 790, discount(50, "A1", ident="A1")),
        item("S2", 1, 1000, discount(70, "A2", ident="A2")),
        on_refusal="degrade",
    )
    res = await assert_denied(gw, body)
    assert located(res) == expect(
        why("PRICE_FUSE", sku_id="S1"),
        why("ACTIVITY_BUDGET_EXHAUSTED", activity_id="A1", limit=1000, used=1000, requested=50),
    )
    assert await budget(gw, "A1") == (1000, 0)
    assert await budget(gw, "A2") == (0, 0)
    assert await counters(gw) == nothing_counted()


# -- the buyer's message ---------------------------------------------------------------------------


async def test_degrade_message_in_chinese(gw_factory: MakeGateway) -> None:
    cfg = degrade_config()
    cfg["settings"]["locale"] = "zh"
    gw = await gw_factory(cfg)
    await exhaust_a1(gw)
    res = await gw.check(order(item("S2", 1, 1000, discount(100, "A1")), on_refusal="degrade"))
    assert res["decision"] == "degrade"
    assert res["message"] == DEGRADE_ZH
    denied = await gw.check(order(item("S2", 1, 1000, discount(100, "A1")), user="u2"))
    assert denied["decision"] == "deny"
    assert denied["message"] == VAGUE_ZH


async def test_degrade_of_a_disclosed_activity_limit_gets_the_degrade_message(gw_factory: MakeGateway) -> None:
    cfg = degrade_config()
    cfg["activities"][1].update(user_limit=1, disclose_limits=True)
    gw = await gw_factory(cfg)
    body = order(item("S2", 2, 1000, discount(100, "A2")), on_refusal="degrade")
    res = await assert_degraded(gw, body, stripped=["A2"], payable=2000)
    assert located(res) == [why("ACTIVITY_USER_LIMIT", activity_id="A2", subject="user", limit=1, used=0, requested=2)]
    plain = await gw.check(order(item("S2", 2, 1000, discount(100, "A2")), user="u2"))
    assert plain["decision"] == "deny"
    assert plain["message"] == "This item is limited to 1 per customer"
