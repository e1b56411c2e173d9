"""Atomicity over HTTP (SPEC section 3): concurrent checks can never together pass a limit or a budget.

The checks are fired together with asyncio.gather through the real HTTP stack, so they interleave
wherever the server awaits (reading bodies, committing, answering).
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import Gateway, MakeGateway, base_config, discount, item, order


async def check_all(gw: Gateway, bodies: list[dict[str, Any]]) -> list[Any]:
    async def one(body: dict[str, Any]) -> Any:
        resp = await gw.client.post("/v1/orders/check", json=body)
        data = await resp.json()
        assert resp.status == 200, (resp.status, data)
        return data

    return list(await asyncio.gather(*(one(b) for b in bodies)))


async def test_200_concurrent_orders_of_one_user_against_a_limit_of_1(gw_factory: MakeGateway) -> None:
    cfg = base_config(skus=[{"sku_id": "S1", "spu_id": "P1", "limits": {"user": 1}}])
    gw = await gw_factory(cfg)
    bodies = [order(item("S1", 1, 1000), user="u1", order_id=f"race-{i}") for i in range(200)]
    results = await check_all(gw, bodies)
    decisions = [r["decision"] for r in results]
    assert decisions.count("allow") == 1
    assert decisions.count("deny") == 199
    for r in results:
        if r["decision"] == "deny":
            assert [(x["code"], x["limit"], x["used"], x["requested"]) for x in r["reasons"]] == [("SKU_LIMIT", 1, 1, 1)]
    assert (await gw.user("u1"))["counters"]["sku"] == {"S1": 1}
    assert len(gw.coordinator.orders) == 200
    states = [(await gw.get(b["order_id"]))["state"] for b in bodies]
    assert states.count("held") == 1 and states.count("denied") == 199
    # The winner's hold is the one that counts: releasing it frees the limit again.
    winner = next(b for b, r in zip(bodies, results) if r["decision"] == "allow")
    await gw.cancel(winner["order_id"])
    assert (await gw.check(order(user="u1")))["decision"] == "allow"


async def test_100_concurrent_users_against_a_budget_for_exactly_7_orders(gw_factory: MakeGateway) -> None:
    cfg = base_config(activities=[{"activity_id": "A1", "budget": 700}])
    gw = await gw_factory(cfg)
    bodies = [order(item("S1", 1, 1000, discount(100)), user=f"user-{i}") for i in range(100)]
    results = await check_all(gw, bodies)
    allowed = [r for r in results if r["decision"] == "allow"]
    denied = [r for r in results if r["decision"] == "deny"]
    assert len(allowed) == 7
    assert len(denied) == 93
    for r in denied:
        assert [x["code"] for x in r["reasons"]] == ["ACTIVITY_BUDGET_EXHAUSTED"]
        assert r["reasons"][0]["activity_id"] == "A1"
    act = await gw.activity("A1")
    assert act["held"] == 700 == act["budget"]
    assert act["spent"] == 0
    assert act["fused"] is True
    # Nothing can slip in afterwards either.
    late = await gw.check(order(item("S1", 1, 1000, discount(1)), user="late"))
    assert late["decision"] == "deny"
    assert (await gw.activity("A1"))["held"] == 700


async def test_concurrent_degrades_never_overspend_the_budget(gw_factory: MakeGateway) -> None:
    cfg = base_config(activities=[{"activity_id": "A1", "budget": 500}])
    gw = await gw_factory(cfg)
    bodies = [order(item("S1", 1, 1000, discount(100)), user=f"user-{i}", on_refusal="degrade") for i in range(50)]
    results = await check_all(gw, bodies)
    decisions = [r["decision"] for r in results]
    assert decisions.count("allow") == 5
    assert decisions.count("degrade") == 45
    for r in results:
        if r["decision"] == "degrade":
            assert r["stripped"] == ["A1"] and r["payable"] == 1000
    act = await gw.activity("A1")
    assert act["held"] == 500 and act["fused"] is True
