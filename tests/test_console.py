"""The console's server side (issue 6): its static files, `GET /v1/admin/overview`, and the bounded
top-refused counters in `Stats`. The page in a real browser is `test_console_browser`."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway import stats as stats_module
from gateway.keys import STATS
from domain.schema import CheckRequest, CheckResponse
from gateway.stats import Stats, region_path
from domain.types import Decision
from tests.conftest import ADDRESS, MakeGateway, base_config, discount, item, order


async def test_console_page_loads_without_a_token(gw_factory: MakeGateway) -> None:
    g = await gw_factory()
    for path in ("/console", "/console/"):
        resp = await g.client.get(path)
        assert resp.status == 200
        assert resp.content_type == "text/html"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        text = await resp.text()
        assert 'id="login-form"' in text and "/console/console.js" in text
    for name, kind in (("console.js", "text/javascript"), ("console.css", "text/css")):
        resp = await g.client.get("/console/" + name)
        assert resp.status == 200 and resp.content_type == kind
        await resp.read()


@pytest.mark.parametrize("path", ["/console/nope.js", "/console/..%2Fconsole.py", "/console/%2E%2E/app.py"])
async def test_console_serves_only_its_own_files(gw_factory: MakeGateway, path: str) -> None:
    g = await gw_factory()
    resp = await g.client.get(path)
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


async def test_overview_needs_the_token(gw_factory: MakeGateway) -> None:
    g = await gw_factory()
    await g.call("GET", "/v1/admin/overview", status=401)
    await g.call("GET", "/v1/admin/overview", status=401, headers={"Authorization": "Bearer wrong-token"})


async def test_overview_shows_budgets_rules_lists_and_settings(gw_factory: MakeGateway) -> None:
    cfg = base_config(
        activities=[{"activity_id": "A1", "budget": 300}, {"activity_id": "A2"}],
        rules=[
            {"rule_id": "R1", "subject": "user", "scope": {"category": "phone"}, "window": "1h", "max_quantity": 5},
            {"rule_id": "R2", "subject": "device", "window": "1h", "max_quantity": 0, "mode": "shadow"},
        ],
        lists={"blacklist": {"user": ["u-bad"]}, "whitelist": {"address": ["Zhejiang/Hangzhou/Xihu/Lingyin"]}},
    )
    cfg["settings"]["admin_token"] = "a-secret-admin-token"
    g = await gw_factory(cfg)
    for n in range(3):
        assert (await g.check(order(item("S1", 1, 1000, discount(100)), user=f"u{n}", device="d1")))["decision"] == "allow"
    assert (await g.check(order(item("S1", 1, 1000, discount(100)), user="u9")))["decision"] == "deny"
    await g.admin("PATCH", "settings", {"risk_multiplier": "1.5"})

    view: dict[str, Any] = await g.admin("GET", "overview")
    assert view["decisions"] == {"allow": 3, "deny": 1}
    assert view["reasons"] == {"ACTIVITY_BUDGET_EXHAUSTED": 1}
    assert view["shadow_hits"] == {"R2": 3}
    a1, a2 = view["activities"]
    assert a1 == {
        "activity_id": "A1", "budget": 300, "spent": 0, "held": 300, "remaining": 0,
        "fused": True, "active": True, "starts_at": None, "ends_at": None,
    }
    assert a2["activity_id"] == "A2" and a2["budget"] is None and a2["fused"] is False
    r1, r2 = view["rules"]
    assert (r1["rule_id"], r1["limit"], r1["mode"], r1["scope"], r1["shadow_hits"]) == ("R1", 7, "enforce", {"category": "phone"}, 0)
    assert (r2["rule_id"], r2["limit"], r2["mode"], r2["shadow_hits"]) == ("R2", 0, "shadow", 3)
    assert view["lists"]["blacklist"]["user"] == ["u-bad"]
    assert view["lists"]["whitelist"]["address"] == ["Zhejiang/Hangzhou/Xihu/Lingyin"]
    assert view["settings"]["risk_multiplier"] == "1.5"
    assert "admin_token" not in view["settings"]


async def test_overview_top_refused_from_denied_checks(gw_factory: MakeGateway) -> None:
    """Counted by `Stats.observe_check` when routes.check passes it the request."""
    g = await gw_factory(base_config(lists={"blacklist": {"user": ["u-bad"], "address": ["Guangdong/Dongguan"]}}))
    dongguan = {"province": "Guangdong", "city": "Dongguan", "district": "", "town": "Humen", "detail": "2 Rd"}
    for _ in range(3):
        await g.check(order(user="u-bad", address=ADDRESS))
    for user in ("u2", "u3"):
        await g.check(order(user=user, address=dongguan))
    await g.check(order(user="u4", address=ADDRESS))  # allowed: not counted
    view = await g.admin("GET", "overview?top=2")
    assert view["top_refused_users"] == [{"user_id": "u-bad", "refused": 3}, {"user_id": "u2", "refused": 1}]
    assert view["top_refused_addresses"] == [
        {"address": "zhejiang/hangzhou/xihu/lingyin", "refused": 3},
        {"address": "guangdong/dongguan//humen", "refused": 2},
    ]
    for bad in ("0", "101", "x"):
        await g.admin("GET", f"overview?top={bad}", status=400)


def _request(user: str, address: dict[str, str] | None = None) -> CheckRequest:
    return msgspec.convert(order(user=user, address=address), CheckRequest)


def _response(decision: Decision) -> CheckResponse:
    return CheckResponse(order_id="o", decision=decision, reasons=[], shadow=[], warnings=[], message=None)


def test_region_path_is_folded_and_keeps_missing_levels() -> None:
    assert region_path(_request("u", {"province": " Zhe  Jiang", "city": "HANGZHOU", "detail": "x"})) == "zhejiang/hangzhou"
    assert region_path(_request("u", {"province": "Guangdong", "city": "Dongguan", "town": "Humen"})) == "guangdong/dongguan//humen"
    assert region_path(_request("u", {"detail": "only a street"})) is None
    assert region_path(_request("u")) is None


def test_only_denied_checks_with_their_request_count_as_refused() -> None:
    stats = Stats()
    stats.observe_check(_response(Decision.DENY), 0.001)  # the old call: no request, nothing to attribute
    stats.observe_check(_response(Decision.ALLOW), 0.001, _request("u1", ADDRESS))
    stats.observe_check(_response(Decision.DEGRADE), 0.001, _request("u1", ADDRESS))
    stats.observe_check(_response(Decision.DENY), 0.001, _request("u2", ADDRESS))
    assert stats.decisions == {"deny": 2, "allow": 1, "degrade": 1}
    assert stats.top_refused() == ([("u2", 1)], [("zhejiang/hangzhou/xihu/lingyin", 1)])


def test_refused_counters_stay_bounded_and_keep_the_heavy_hitters(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stats_module, "TOP_CAP", 50)
    monkeypatch.setattr(stats_module, "TOP_KEEP", 10)
    stats = Stats()
    deny = _response(Decision.DENY)
    for n in range(1000):
        stats.observe_check(deny, 0.0, _request(f"one-off-{n}"))
        if n % 10 == 0:
            stats.observe_check(deny, 0.0, _request("scalper"))
    assert len(stats.refused_users) <= 50
    users, _ = stats.top_refused(1)
    assert users[0][0] == "scalper" and users[0][1] >= 90


async def test_overview_reads_the_app_stats(gw_factory: MakeGateway) -> None:
    g = await gw_factory()
    g.client.app[STATS].observe_refusal("u-x", region_path(_request("u-x", ADDRESS)))
    view = await g.admin("GET", "overview")
    assert view["top_refused_users"] == [{"user_id": "u-x", "refused": 1}]
