"""PRICE_FUSE (SPEC section 3): an item fails when

    unit_price*quantity - counted discounts < base_price * ratio * quantity

exactly (no float), where counted discounts are the platform-funded ones whose id is not on the
discount whitelist.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Gateway, MakeGateway, base_config, discount, item, order

pytestmark = pytest.mark.both_modes  # every test against the single node and cluster mode

VAGUE = "Too many orders right now, please try again later"
DEGRADE = "This promotion has ended. Continue without the discount?"


def fuse_config(
    base: str = "cost", ratio: Any = "1.0", cost: int = 800, original: int = 1000, **sections: Any
) -> dict[str, Any]:
    """S1 with the given price fuse; S2 (same prices) without one."""
    return base_config(
        skus=[
            {
                "sku_id": "S1",
                "spu_id": "P1",
                "cost_price": cost,
                "original_price": original,
                "price_fuse": {"base": base, "ratio": ratio},
            },
            {"sku_id": "S2", "spu_id": "P1", "cost_price": cost, "original_price": original},
        ],
        **sections,
    )


def paying(paid: int, *, quantity: int = 1, unit_price: int = 1000, sku: str = "S1", **kw: Any) -> dict[str, Any]:
    """An order whose one item pays `paid` after a single counted (platform, non-activity) discount."""
    gross = unit_price * quantity
    assert 0 <= paid <= gross
    return order(item(sku, quantity, unit_price, discount(gross - paid, None, ident="SHOP")), **kw)


def fuse_reasons(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in ("code", "sku_id", "degradable")} for r in res["reasons"]]


def fused(*skus: str) -> list[dict[str, Any]]:
    return [{"code": "PRICE_FUSE", "sku_id": s, "degradable": True} for s in skus]


async def assert_allowed(gw: Gateway, body: dict[str, Any], payable: int) -> None:
    res = await gw.check(body)
    assert res["decision"] == "allow", res
    assert res["reasons"] == [] and res["message"] is None
    assert res["payable"] == payable
    assert res["hold"] is not None
    assert (await gw.get(body["order_id"]))["state"] == "held"


async def assert_fused(gw: Gateway, body: dict[str, Any], *skus: str) -> dict[str, Any]:
    res = await gw.check(body)
    assert res["decision"] == "deny", res
    assert fuse_reasons(res) == fused(*skus)
    assert res["hold"] is None and res["payable"] is None
    assert res["message"] == VAGUE
    assert (await gw.get(body["order_id"]))["state"] == "denied"
    result: dict[str, Any] = res
    return result


# -- the boundary, exactly ------------------------------------------------------------------


@pytest.mark.parametrize("ratio", ["0.55", 0.55], ids=["string", "number"])
async def test_cost_base_boundary_is_exact(gw_factory: MakeGateway, ratio: Any) -> None:
    # 800 * 0.55 = 440 exactly; in floats 800 * 0.55 = 440.00000000000006, which would refuse 440.
    gw = await gw_factory(fuse_config("cost", ratio))
    await assert_allowed(gw, paying(440), payable=440)
    await assert_fused(gw, paying(439), "S1")


@pytest.mark.parametrize("ratio", ["0.95", 0.95], ids=["string", "number"])
async def test_ratio_095_boundary(gw_factory: MakeGateway, ratio: Any) -> None:
    gw = await gw_factory(fuse_config("cost", ratio))
    await assert_allowed(gw, paying(760), payable=760)
    await assert_fused(gw, paying(759), "S1")


@pytest.mark.parametrize("ratio", ["1", 1, "1.0", 1.0], ids=["string", "int", "decimal-string", "float"])
async def test_ratio_one_means_paid_at_least_cost(gw_factory: MakeGateway, ratio: Any) -> None:
    gw = await gw_factory(fuse_config("cost", ratio))
    await assert_allowed(gw, paying(800), payable=800)
    await assert_fused(gw, paying(799), "S1")


@pytest.mark.parametrize("ratio", ["0.333", 0.333], ids=["string", "number"])
@pytest.mark.parametrize(
    ("quantity", "lowest_allowed"),
    [(1, 334), (3, 1000), (7, 2334)],  # 1001 * 0.333 = 333.333 per unit; 999.999 for 3; 2333.331 for 7
)
async def test_original_base_with_a_fractional_floor(
    gw_factory: MakeGateway, ratio: Any, quantity: int, lowest_allowed: int
) -> None:
    gw = await gw_factory(fuse_config("original", ratio, cost=100, original=1001))
    await assert_allowed(gw, paying(lowest_allowed, quantity=quantity, unit_price=1001), payable=lowest_allowed)
    await assert_fused(gw, paying(lowest_allowed - 1, quantity=quantity, unit_price=1001), "S1")


async def test_original_base_ignores_cost(gw_factory: MakeGateway) -> None:
    # base original 1000 * 0.5 = 500, far below the cost of 800: paying 500 is accepted.
    gw = await gw_factory(fuse_config("original", "0.5", cost=800, original=1000))
    await assert_allowed(gw, paying(500), payable=500)
    await assert_fused(gw, paying(499), "S1")


async def test_large_amounts_are_compared_exactly(gw_factory: MakeGateway) -> None:
    # floor = 9999999999999 * 0.9999999 = 9999998999999.0000001: a float reads it as
    # 9999998999999.0 and would let 9999998999999 through.
    cost = 9_999_999_999_999
    gw = await gw_factory(fuse_config("cost", "0.9999999", cost=cost, original=cost))
    await assert_allowed(gw, paying(9_999_999_000_000, quantity=1, unit_price=cost), payable=9_999_999_000_000)
    await assert_fused(gw, paying(9_999_998_999_999, quantity=1, unit_price=cost), "S1")


@pytest.mark.parametrize(("quantity", "floor"), [(1, 760), (2, 1520), (4, 3040)])
async def test_quantity_scales_the_floor(gw_factory: MakeGateway, quantity: int, floor: int) -> None:
    gw = await gw_factory(fuse_config("cost", "0.95"))
    await assert_allowed(gw, paying(floor, quantity=quantity), payable=floor)
    await assert_fused(gw, paying(floor - 1, quantity=quantity), "S1")


async def test_price_below_floor_without_discounts_fuses(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(fuse_config("cost", "1.0"))
    await assert_allowed(gw, order(item("S1", 2, 800)), payable=1600)
    await assert_fused(gw, order(item("S1", 2, 799)), "S1")


async def test_activity_discount_is_counted_and_refusal_holds_no_budget(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(fuse_config("cost", "1.0"))
    await assert_fused(gw, order(item("S1", 1, 1000, discount(201, "A1"))), "S1")
    act = await gw.activity("A1")
    assert (act["held"], act["spent"]) == (0, 0)
    await assert_allowed(gw, order(item("S1", 1, 1000, discount(200, "A1"))), payable=800)
    assert (await gw.activity("A1"))["held"] == 200


# -- what counts --------------------------------------------------------------------------------


async def test_partner_funded_discounts_are_not_counted(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(fuse_config("cost", "1.0"))
    # paid for the fuse = 1000 - 200 = 800 (the partner's 500 is not counted); the buyer pays 300.
    ok = order(item("S1", 1, 1000, discount(200, None, ident="SHOP"), discount(500, None, ident="BEANS", funded_by="partner")))
    await assert_allowed(gw, ok, payable=300)
    bad = order(item("S1", 1, 1000, discount(201, None, ident="SHOP"), discount(500, None, ident="BEANS", funded_by="partner")))
    await assert_fused(gw, bad, "S1")


async def test_partner_funded_activity_discount_is_not_counted_but_spends_budget(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(fuse_config("cost", "1.0"))
    body = order(item("S1", 1, 1000, discount(900, "A1", funded_by="partner")))
    await assert_allowed(gw, body, payable=100)
    assert (await gw.activity("A1"))["held"] == 900


async def test_whitelisted_discount_ids_are_not_counted(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(fuse_config("cost", "1.0", lists={"whitelist": {"discount": ["618-SUPER"]}}))
    await assert_allowed(gw, order(item("S1", 1, 1000, discount(900, None, ident="618-SUPER"))), payable=100)
    # The same amount under another id is counted.
    await assert_fused(gw, order(item("S1", 1, 1000, discount(900, None, ident="OTHER"))), "S1")
    # Mixed: only the non-whitelisted part counts, to the unit.
    mixed_ok = order(item("S1", 1, 1000, discount(600, None, ident="618-SUPER"), discount(200, None, ident="OTHER")))
    await assert_allowed(gw, mixed_ok, payable=200)
    mixed_bad = order(item("S1", 1, 1000, discount(599, None, ident="618-SUPER"), discount(201, None, ident="OTHER")))
    await assert_fused(gw, mixed_bad, "S1")


async def test_whitelisted_activity_discount_is_not_counted_but_spends_budget(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(fuse_config("cost", "1.0", lists={"whitelist": {"discount": ["618-SUPER"]}}))
    await assert_allowed(gw, order(item("S1", 1, 1000, discount(700, "A1", ident="618-SUPER"))), payable=300)
    assert (await gw.activity("A1"))["held"] == 700


async def test_discount_whitelisted_at_run_time_is_not_counted_from_the_next_check(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(fuse_config("cost", "1.0"))
    await assert_fused(gw, order(item("S1", 1, 1000, discount(900, None, ident="618-SUPER"))), "S1")
    await gw.admin("PUT", "lists/whitelist/discount/618-SUPER")
    await assert_allowed(gw, order(item("S1", 1, 1000, discount(900, None, ident="618-SUPER"))), payable=100)
    await gw.admin("DELETE", "lists/whitelist/discount/618-SUPER")
    await assert_fused(gw, order(item("S1", 1, 1000, discount(900, None, ident="618-SUPER"))), "S1")


async def test_sku_without_price_fuse_never_fuses(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(fuse_config("cost", "1.0"))
    await assert_allowed(gw, paying(0, sku="S2"), payable=0)
    await assert_allowed(gw, order(item("S2", 5, 0)), payable=0)
    await assert_allowed(gw, order(item("S2", 3, 1000, discount(3000, "A1"))), payable=0)


async def test_base_config_sku_has_no_price_fuse(gw: Gateway) -> None:
    await assert_allowed(gw, order(item("S1", 2, 1000, discount(2000, None, ident="SHOP"))), payable=0)


async def test_fuse_is_per_item(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(fuse_config("cost", "1.0"))
    # S1 at the floor and S2 (no fuse) far below it: allowed.
    await assert_allowed(gw, order(paying(800)["items"][0], paying(1, sku="S2")["items"][0]), payable=801)
    # Two S1 items: one at the floor, one a unit below: one reason, for the second.
    res = await assert_fused(gw, order(paying(800)["items"][0], paying(799)["items"][0]), "S1")
    assert len(res["reasons"]) == 1
    # Both below: each item is a reason.
    await assert_fused(gw, order(paying(799)["items"][0], paying(700, quantity=2)["items"][0]), "S1", "S1")


async def test_price_fuse_refusal_holds_nothing(gw_factory: MakeGateway) -> None:
    cfg = fuse_config("cost", "1.0")
    cfg["skus"][0]["limits"] = {"user": 1}
    gw = await gw_factory(cfg)
    await assert_fused(gw, order(item("S1", 1, 1000, discount(201, "A1"))), "S1")
    user = await gw.user("u1")
    assert user["counters"]["sku"] == {} and user["counters"]["activity"] == {}
    assert (await gw.activity("A1"))["held"] == 0
    await assert_allowed(gw, order(item("S1", 1, 1000, discount(200, "A1"))), payable=800)
    assert (await gw.user("u1"))["counters"]["sku"] == {"S1": 1}


async def test_price_fuse_degrades_by_stripping_every_counted_discount_of_the_item(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(fuse_config("cost", "1.0", lists={"whitelist": {"discount": ["618-SUPER"]}}))
    body = order(
        item(
            "S1",
            1,
            1000,
            discount(150, "A1", ident="A1"),
            discount(150, None, ident="SHOP"),
            discount(50, None, ident="618-SUPER"),
            discount(100, None, ident="BEANS", funded_by="partner"),
        ),
        item("S2", 1, 1000, discount(500, None, ident="SHOP2")),
        on_refusal="degrade",
    )
    res = await gw.check(body)
    assert res["decision"] == "degrade", res
    assert fuse_reasons(res) == fused("S1")
    assert res["stripped"] == ["A1", "SHOP"]
    # S1 keeps the whitelisted and the partner discounts; S2 is untouched.
    assert res["payable"] == (1000 - 50 - 100) + (1000 - 500)
    assert res["message"] == DEGRADE
    assert (await gw.activity("A1"))["held"] == 0


async def test_price_fuse_changed_at_run_time_applies_to_the_next_check(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(fuse_config("cost", "1.0"))
    await assert_allowed(gw, paying(100, sku="S2"), payable=100)
    s2 = {"spu_id": "P1", "cost_price": 800, "original_price": 1000, "price_fuse": {"base": "original", "ratio": "0.9"}}
    await gw.admin("PUT", "skus/S2", s2)
    await assert_fused(gw, paying(899, sku="S2"), "S2")
    await assert_allowed(gw, paying(900, sku="S2"), payable=900)
    await gw.admin("PUT", "skus/S1", {"spu_id": "P1", "cost_price": 800, "original_price": 1000})
    await assert_allowed(gw, paying(1), payable=1)
