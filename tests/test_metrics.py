"""`GET /metrics`: decisions, reasons, latency, live holds, budgets, journal and snapshots, in Prometheus text."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from snapshots.journal import Journal
from tests.conftest import Gateway, MakeGateway, base_config, discount, item, order
from tests.test_snapshot_restore import start


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


async def test_a_repeated_check_is_counted_once_and_as_a_repeat(gw_factory: MakeGateway) -> None:
    # Idempotency (SPEC section 3): a checkout retry counts once, in the metrics as in the quotas.
    gw = await gw_factory()
    body = order(item("S1", 1))
    for _ in range(3):
        assert (await gw.check(body))["decision"] == "allow"
    m = await scrape(gw)
    assert m[("flashguard_checks_total", (("decision", "allow"),))] == 1
    assert m[("flashguard_check_seconds_count", ())] == 1
    assert m[("flashguard_check_repeats_total", ())] == 2
    assert (await gw.user("u1"))["counters"]["sku"] == {"S1": 1}


async def test_shed_requests_are_counted(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(max_inflight=0)
    resp = await gw.client.post("/v1/orders/check", json=order())
    assert resp.status == 429 and resp.headers["Retry-After"] == "1"
    assert (await scrape(gw))[("flashguard_shed_total", ())] == 1


async def test_journal_and_snapshot_figures_are_exported(tmp_path: Path) -> None:
    """With a data directory: the journal's position, its group-commit flushes and the time its
    writes and fsyncs took (how slow the disk is under load), and the snapshots taken."""
    gw = await start(tmp_path)
    try:
        await gw.check(order())
        await gw.admin("POST", "/snapshot")
        m = await scrape(gw)
        journal = gw.coordinator.journal
        assert isinstance(journal, Journal)
        assert m[("flashguard_journal_lsn", ())] == m[("flashguard_journal_durable_lsn", ())] == journal.lsn > 0
        assert m[("flashguard_journal_flushes_total", ())] == journal.fsyncs >= 1
        assert m[("flashguard_journal_write_seconds_total", ())] == journal.write_seconds > 0
        assert m[("flashguard_journal_failed", ())] == 0
        assert m[("flashguard_snapshots_total", (("outcome", "ok"),))] == 1
    finally:
        await gw.client.close()
