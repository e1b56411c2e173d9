"""`GET /metrics`: decisions, reasons, latency, live holds and budgets, in Prometheus text."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Gateway, MakeGateway, base_config, discount, item, order


async def scrape(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await gw.client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(await resp.text())
        for s in family.samples
    }


async def test_decisions_reasons_holds_and_budgets_are_counted(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(
        base_config(
            skus=[{"sku_id": "S1", "cost_price": 800, "limits": {"user": 1}}],
            activities=[{"activity_id": "A1", "budget": 1000}],
        )
    )
    first = order(item("S1", 1, 1000, discount(100)))
    await gw.check(first)
    await gw.check(order(item("S1", 1, 1000, discount(100))))
    m = await scrape(gw)
    assert m[("flashguard_checks_total", (("decision", "allow"),))] == 1
    assert m[("flashguard_checks_total", (("decision", "deny"),))] == 1
    assert m[("flashguard_reasons_total", (("code", "SKU_LIMIT"),))] == 1
    assert m[("flashguard_live_holds", ())] == 1
    assert m[("flashguard_activity_held", (("activity_id", "A1"),))] == 100
    assert m[("flashguard_activity_remaining", (("activity_id", "A1"),))] == 900
    assert m[("flashguard_activity_fused", (("activity_id", "A1"),))] == 0
    assert m[("flashguard_check_seconds_count", ())] == 2
    await gw.confirm(first["order_id"])
    m = await scrape(gw)
    assert m[("flashguard_live_holds", ())] == 0
    assert m[("flashguard_activity_spent", (("activity_id", "A1"),))] == 100


async def test_shed_requests_are_counted(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(max_inflight=0)
    resp = await gw.client.post("/v1/orders/check", json=order())
    assert resp.status == 429 and resp.headers["Retry-After"] == "1"
    assert (await scrape(gw))[("flashguard_shed_total", ())] == 1
