"""The admin API (SPEC section 5): the bearer token, config round trips, one-entry changes that take
effect on the next check, settings, lists and the manual clock.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from gateway.app import make_app
from domain.clock import ManualClock, SystemClock
from node.coordinator import Coordinator
from domain.document import build_config
from gateway.keys import AUTH, COORDINATOR
from snapshots.store import Store
from tests.conftest import ADDRESS, T0, TOKEN, Gateway, MakeGateway, base_config, discount, item, order

S1 = {"sku_id": "S1", "spu_id": "P1", "category": "phone", "brand": "acme", "cost_price": 800, "original_price": 1000}


def assert_error(data: Any, code: str | None = None) -> None:
    assert isinstance(data, dict) and set(data) == {"error"}, data
    assert set(data["error"]) == {"code", "message"}
    assert isinstance(data["error"]["code"], str) and data["error"]["code"]
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]
    if code is not None:
        assert data["error"]["code"] == code


async def everything(gw: Gateway) -> Any:
    """All an admin call could change: the document, the clock, orders, counters."""
    cfg = await gw.admin("GET", "config")
    act = await gw.activity("A1")
    user = await gw.user("u1")
    return (cfg, gw.clock.now(), sorted(gw.coordinator.orders), act["held"], act["spent"], user)


# -- the token -----------------------------------------------------------------------------

ADMIN_CALLS: list[tuple[str, str, Any]] = [
    ("GET", "config", None),
    ("PUT", "config", base_config(skus=[])),
    ("PUT", "skus/S1", {"limits": {"user": 1}}),
    ("DELETE", "skus/S1", None),
    ("PUT", "spus/P1", {"limits": {"user": 1}}),
    ("DELETE", "activities/A1", None),
    ("PUT", "activities/A2", {"budget": 5}),
    ("PUT", "coupons/C1", {"per_user_limit": 1}),
    ("PUT", "rules/R1", {"subject": "user", "window": "1h", "max_quantity": 0}),
    ("DELETE", "rules/R1", None),
    ("PUT", "lists/blacklist/user/u1", None),
    ("DELETE", "lists/whitelist/user/u1", None),
    ("PUT", "lists/blacklist/address/Zhejiang%2FHangzhou", None),
    ("PATCH", "settings", {"locale": "zh"}),
    ("GET", "activities/A1", None),
    ("GET", "users/u1", None),
    ("POST", "snapshot", None),
    ("POST", "clock", {"advance": 3600}),
    ("POST", "clock", {"set": T0 + 10_000}),
    ("GET", "no-such-admin-route", None),
]

BAD_AUTH: dict[str, dict[str, str]] = {
    "no header": {},
    "empty header": {"Authorization": ""},
    "wrong token": {"Authorization": "Bearer wrong-token"},
    "token with a suffix": {"Authorization": f"Bearer {TOKEN}x"},
    "token prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
    "bearer without token": {"Authorization": "Bearer"},
    "bearer and a space": {"Authorization": "Bearer "},
    "basic scheme": {"Authorization": f"Basic {TOKEN}"},
    "token scheme": {"Authorization": f"Token {TOKEN}"},
    "bare token": {"Authorization": TOKEN},
    "token in another header": {"X-Admin-Token": TOKEN},
}


@pytest.mark.parametrize("auth", list(BAD_AUTH))
@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CALLS, ids=[f"{m} {p}" for m, p, _ in ADMIN_CALLS])
async def test_admin_call_without_a_valid_token_is_401_and_changes_nothing(
    gw: Gateway, auth: str, method: str, path: str, body: Any
) -> None:
    await gw.check(order(item("S1", 1, 1000, discount(100)), order_id="seed"))
    before = await everything(gw)
    resp = await gw.client.request(method, "/v1/admin/" + path, json=body, headers=BAD_AUTH[auth])
    assert resp.status == 401
    assert_error(await resp.json())
    assert await everything(gw) == before


async def test_401_offers_the_bearer_scheme(gw: Gateway) -> None:
    resp = await gw.client.get("/v1/admin/config")
    assert resp.status == 401
    assert resp.headers.get("WWW-Authenticate", "").lower().startswith("bearer")


async def test_the_token_opens_the_admin_api(gw: Gateway) -> None:
    doc = await gw.admin("GET", "config")
    assert [s["sku_id"] for s in doc["skus"]] == ["S1"]


async def test_admin_token_is_not_shown_in_the_config(gw_factory: MakeGateway) -> None:
    cfg = base_config()
    cfg["settings"]["admin_token"] = "a-secret-token-in-config"
    gw = await gw_factory(cfg)
    doc = await gw.admin("GET", "config")
    assert "a-secret-token-in-config" not in repr(doc)


async def test_healthz_needs_no_token(gw: Gateway) -> None:
    resp = await gw.client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["status"] == "ok"


async def test_metrics_needs_no_token(gw: Gateway) -> None:
    await gw.check(order())
    resp = await gw.client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    text = await resp.text()
    assert any(line and not line.startswith("#") for line in text.splitlines()), text


# -- the whole document --------------------------------------------------------------------


async def test_get_put_config_round_trips(gw: Gateway) -> None:
    doc = await gw.admin("GET", "config")
    assert await gw.admin("PUT", "config", doc) == doc
    assert await gw.admin("GET", "config") == doc


async def test_put_config_replaces_the_document_for_the_next_check(gw: Gateway) -> None:
    doc = await gw.admin("GET", "config")
    doc["skus"].append({"sku_id": "S2", "spu_id": "P2", "limits": {"user": 1}})
    doc["rules"].append({"rule_id": "R1", "subject": "device", "window": "1h", "max_quantity": 5})
    doc["settings"]["hold_ttl"] = "30s"
    put = await gw.admin("PUT", "config", doc)
    got = await gw.admin("GET", "config")
    assert put == got
    assert [s["sku_id"] for s in got["skus"]] == ["S1", "S2"]
    assert [r["rule_id"] for r in got["rules"]] == ["R1"]
    first = await gw.check(order(item("S2")))
    assert first["decision"] == "allow"
    assert first["hold"] == {"expires_at": gw.clock.now() + 30}
    second = await gw.check(order(item("S2")))
    assert second["decision"] == "deny"
    assert [(r["code"], r["sku_id"], r["limit"]) for r in second["reasons"]] == [("SKU_LIMIT", "S2", 1)]


async def test_put_config_from_a_toml_shaped_doc_with_lists(gw: Gateway) -> None:
    doc = base_config(lists={"blacklist": {"user": ["u-bad"]}})
    await gw.admin("PUT", "config", doc)
    got = await gw.admin("GET", "config")
    assert got["lists"]["blacklist"]["user"] == ["u-bad"]
    res = await gw.check(order(user="u-bad"))
    assert res["decision"] == "deny"
    assert [r["code"] for r in res["reasons"]] == ["BLACKLISTED"]


async def test_invalid_config_is_400_naming_the_field_and_changes_nothing(gw: Gateway) -> None:
    before = await gw.admin("GET", "config")
    doc = base_config(skus=[dict(S1), {"sku_id": "S2", "limits": {"user": 0}}])
    err = await gw.admin("PUT", "config", doc, status=400)
    assert_error(err)
    assert "skus[1]" in err["error"]["message"] and "limits.user" in err["error"]["message"]
    assert await gw.admin("GET", "config") == before
    bads: list[Any] = [[1, 2], "config", {"skus": "S1"}, {"nonsense": {}}]
    for bad in bads:
        assert_error(await gw.admin("PUT", "config", bad, status=400))
    assert await gw.admin("GET", "config") == before


async def test_put_config_keeps_counters_and_holds(gw: Gateway) -> None:
    body = order(item("S1", 1, 1000, discount(100)))
    await gw.check(body)
    doc = await gw.admin("GET", "config")
    doc["skus"][0]["limits"] = {"user": 1}
    await gw.admin("PUT", "config", doc)
    assert (await gw.activity("A1"))["held"] == 100
    assert (await gw.get(body["order_id"]))["state"] == "held"
    res = await gw.check(order())
    assert res["decision"] == "deny"
    assert [(r["code"], r["used"]) for r in res["reasons"]] == [("SKU_LIMIT", 1)]


# -- one entry -----------------------------------------------------------------------------


async def test_put_sku_tightens_the_limit_for_the_next_check(gw: Gateway) -> None:
    assert (await gw.check(order()))["decision"] == "allow"
    entry = await gw.admin("PUT", "skus/S1", {**S1, "limits": {"user": 1}})
    assert entry["sku_id"] == "S1" and entry["limits"] == {"user": 1}
    res = await gw.check(order())
    assert res["decision"] == "deny"
    assert [(r["code"], r["sku_id"], r["subject"], r["limit"], r["used"]) for r in res["reasons"]] == [
        ("SKU_LIMIT", "S1", "user", 1, 1)
    ]
    doc = await gw.admin("GET", "config")
    assert doc["skus"][0]["limits"] == {"user": 1}


async def test_put_sku_without_the_id_in_the_body_uses_the_path(gw: Gateway) -> None:
    await gw.admin("PUT", "skus/S7", {"limits": {"user": 1}})
    doc = await gw.admin("GET", "config")
    assert {"sku_id": "S7", "limits": {"user": 1}} in doc["skus"]
    assert (await gw.check(order(item("S7"))))["decision"] == "allow"
    assert (await gw.check(order(item("S7"))))["decision"] == "deny"


async def test_put_sku_whose_body_names_another_id_is_400(gw: Gateway) -> None:
    before = await gw.admin("GET", "config")
    assert_error(await gw.admin("PUT", "skus/S1", {"sku_id": "S2"}, status=400))
    assert await gw.admin("GET", "config") == before


async def test_put_spu_limit_takes_effect(gw: Gateway) -> None:
    await gw.admin("PUT", "spus/P1", {"limits": {"user": 2}})
    assert (await gw.check(order(item("S1", 2))))["decision"] == "allow"
    res = await gw.check(order(item("S1", 1)))
    assert [(r["code"], r["spu_id"], r["limit"]) for r in res["reasons"]] == [("SPU_LIMIT", "P1", 2)]


async def test_put_activity_budget_takes_effect(gw: Gateway) -> None:
    await gw.admin("PUT", "activities/A1", {"budget": 150})
    assert (await gw.check(order(item("S1", 1, 1000, discount(100)))))["decision"] == "allow"
    res = await gw.check(order(item("S1", 1, 1000, discount(100))))
    assert res["decision"] == "deny"
    assert [(r["code"], r["activity_id"]) for r in res["reasons"]] == [("ACTIVITY_BUDGET_EXHAUSTED", "A1")]
    assert (await gw.activity("A1"))["budget"] == 150


async def test_put_and_delete_rule_take_effect(gw: Gateway) -> None:
    await gw.admin("PUT", "rules/R1", {"subject": "user", "window": "1h", "max_quantity": 1})
    assert (await gw.check(order()))["decision"] == "allow"
    res = await gw.check(order())
    assert [(r["code"], r["rule_id"]) for r in res["reasons"]] == [("RISK_RULE", "R1")]
    assert await gw.admin("DELETE", "rules/R1") is not None
    assert (await gw.admin("GET", "config"))["rules"] == []
    assert (await gw.check(order()))["decision"] == "allow"


async def test_delete_sku_makes_it_unknown(gw: Gateway) -> None:
    await gw.admin("PUT", "skus/S1", {**S1, "limits": {"user": 1}})
    await gw.check(order())
    assert (await gw.check(order()))["decision"] == "deny"
    await gw.admin("DELETE", "skus/S1")
    res = await gw.check(order())
    assert res["decision"] == "allow"  # settings.unknown defaults to "allow"
    assert [w["code"] for w in res["warnings"]] == ["UNKNOWN_SKU"]


async def test_delete_activity_takes_effect(gw: Gateway) -> None:
    await gw.admin("PUT", "activities/A1", {"budget": 50})
    assert (await gw.check(order(item("S1", 1, 1000, discount(100)))))["decision"] == "deny"
    await gw.admin("DELETE", "activities/A1")
    assert (await gw.admin("GET", "config"))["activities"] == []
    res = await gw.check(order(item("S1", 1, 1000, discount(100))))
    assert res["decision"] == "allow"
    assert [w["code"] for w in res["warnings"]] == ["UNKNOWN_ACTIVITY"]


async def test_delete_of_a_missing_entry_is_404(gw: Gateway) -> None:
    before = await gw.admin("GET", "config")
    assert_error(await gw.admin("DELETE", "skus/NOPE", status=404))
    assert_error(await gw.admin("DELETE", "rules/NOPE", status=404))
    assert await gw.admin("GET", "config") == before


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("skus/S1", {"limits": {"user": 0}}, "limits.user"),
        ("skus/S1", {"limits": {"usr": 1}}, "usr"),
        ("skus/S1", {"cost_price": 1.5}, "cost_price"),
        ("skus/S1", {"cost_price": -1}, "cost_price"),
        ("skus/S1", {"price_fuse": {"base": "cost", "ratio": "1"}}, "cost_price"),
        ("skus/S1", {"price_fuse": {"base": "cost", "ratio": "abc"}, "cost_price": 1}, "ratio"),
        ("activities/A1", {"budget": -1}, "budget"),
        ("activities/A1", {"starts_at": 10, "ends_at": 5}, "ends_at"),
        ("rules/R1", {"subject": "nobody", "window": "1h", "max_quantity": 1}, "subject"),
        ("rules/R1", {"subject": "user", "window": "8d", "max_quantity": 1}, "window"),
        ("rules/R1", {"subject": "user", "window": "1h"}, "max_quantity"),
        ("coupons/C1", {"per_user_limit": 0}, "per_user_limit"),
        ("spus/P1", {"limits": {"user": True}}, "limits.user"),
    ],
)
async def test_invalid_entry_is_400_naming_the_field_and_changes_nothing(
    gw: Gateway, path: str, body: Any, field: str
) -> None:
    before = await gw.admin("GET", "config")
    err = await gw.admin("PUT", path, body, status=400)
    assert_error(err)
    assert field in err["error"]["message"], err
    assert await gw.admin("GET", "config") == before
    assert (await gw.check(order(item("S1", 5, 1000, discount(100)))))["decision"] == "allow"


async def test_malformed_admin_body_is_400(gw: Gateway) -> None:
    before = await gw.admin("GET", "config")
    for raw in (b"{", b"", b"[1"):
        resp = await gw.client.put(
            "/v1/admin/skus/S1", data=raw, headers={**gw.auth, "Content-Type": "application/json"}
        )
        assert resp.status == 400
        assert_error(await resp.json())
    assert await gw.admin("GET", "config") == before


DEEP = 1000  # levels: past the interpreter's recursion limit, under msgpack's own (1024)


@pytest.mark.parametrize(
    ("method", "path", "content_type", "raw"),
    [
        ("PUT", "config", "application/json", b"[" * DEEP),
        ("PATCH", "settings", "application/json", b'{"locale":' + b"[" * DEEP + b"1" + b"]" * DEEP + b"}"),
        ("PUT", "skus/S1", "application/json", b'{"cost_price":' + b"[" * DEEP + b"]" * DEEP + b"}"),
        ("PUT", "skus/X1", "application/msgpack", b"\x81\xa6sku_id" + b"\x91" * DEEP + b"\x01"),
    ],
    ids=["json-config", "json-settings", "json-entry", "msgpack-entry-id"],
)
async def test_a_deeply_nested_admin_body_is_400(gw: Gateway, method: str, path: str, content_type: str, raw: bytes) -> None:
    before = await gw.admin("GET", "config")
    resp = await gw.client.request(method, f"/v1/admin/{path}", data=raw, headers={**gw.auth, "Content-Type": content_type})
    assert resp.status == 400, await resp.read()
    assert await gw.admin("GET", "config") == before


async def test_unknown_admin_section_is_404(gw: Gateway) -> None:
    assert_error(await gw.admin("PUT", "widgets/W1", {"a": 1}, status=404))


# -- lists ---------------------------------------------------------------------------------


async def test_blacklist_user_put_and_delete(gw: Gateway) -> None:
    await gw.admin("PUT", "lists/blacklist/user/u-bad")
    res = await gw.check(order(user="u-bad"))
    assert [(r["code"], r["subject"]) for r in res["reasons"]] == [("BLACKLISTED", "user")]
    assert (await gw.user("u-bad"))["blacklisted"] is True
    await gw.admin("DELETE", "lists/blacklist/user/u-bad")
    assert (await gw.check(order(user="u-bad")))["decision"] == "allow"
    assert_error(await gw.admin("DELETE", "lists/blacklist/user/u-bad", status=404))


async def test_blacklist_address_with_an_encoded_path(gw: Gateway) -> None:
    await gw.admin("PUT", "lists/blacklist/address/Zhejiang%2FHangzhou")
    assert (await gw.admin("GET", "config"))["lists"]["blacklist"]["address"] == ["Zhejiang/Hangzhou"]
    res = await gw.check(order(address=ADDRESS))
    assert [(r["code"], r["subject"]) for r in res["reasons"]] == [("BLACKLISTED", "address")]
    await gw.admin("PUT", "lists/whitelist/address/Zhejiang%2FHangzhou%2FXihu%2FLingyin")
    assert (await gw.check(order(address=ADDRESS)))["decision"] == "allow"


# -- settings ------------------------------------------------------------------------------


async def test_patch_settings_changes_one_setting(gw: Gateway) -> None:
    await gw.admin("PUT", "skus/S1", {**S1, "limits": {"user": 1}})
    await gw.check(order())
    assert (await gw.check(order()))["message"] == "This item is limited to 1 per customer"
    before = (await gw.admin("GET", "config"))["settings"]
    settings = await gw.admin("PATCH", "settings", {"locale": "zh"})
    # The document leaves out settings at their default ("zh" is the default locale).
    assert settings.get("locale", "zh") == "zh"
    assert {k: v for k, v in settings.items() if k != "locale"} == {k: v for k, v in before.items() if k != "locale"}
    assert (await gw.admin("GET", "config"))["settings"] == settings
    assert (await gw.check(order()))["message"] == "当前商品限购数量为1，您已超过限购数量"


async def test_patch_hold_ttl_takes_effect(gw: Gateway) -> None:
    await gw.admin("PATCH", "settings", {"hold_ttl": "30s"})
    res = await gw.check(order())
    assert res["hold"] == {"expires_at": gw.clock.now() + 30}


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"locale": "fr"}, "locale"),
        ({"unknown": "maybe"}, "unknown"),
        ({"hold_ttl": "abc"}, "hold_ttl"),
        ({"hold_ttl": 0}, "hold_ttl"),
        ({"risk_multiplier": "lots"}, "risk_multiplier"),
        ({"release_on_cancel": "yes"}, "release_on_cancel"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
async def test_patch_settings_rejects_invalid_values(gw: Gateway, patch: dict[str, Any], field: str) -> None:
    before = await gw.admin("GET", "config")
    err = await gw.admin("PATCH", "settings", patch, status=400)
    assert_error(err)
    assert field in err["error"]["message"], err
    assert await gw.admin("GET", "config") == before


async def test_patch_settings_rejects_a_non_object(gw: Gateway) -> None:
    before = await gw.admin("GET", "config")
    for bad in (["locale", "zh"], "zh", 1):
        assert_error(await gw.admin("PATCH", "settings", bad, status=400))
    assert await gw.admin("GET", "config") == before


# -- the clock -----------------------------------------------------------------------------


async def test_clock_advance_and_set(gw: Gateway) -> None:
    assert gw.clock.now() == T0
    res = await gw.admin("POST", "clock", {"advance": 60})
    assert res["now"] == T0 + 60 == gw.clock.now()
    res = await gw.admin("POST", "clock", {"set": T0 + 1000})
    assert res["now"] == T0 + 1000 == gw.clock.now()
    res = await gw.admin("POST", "clock", {"set": T0 + 1000})  # setting to now is not backwards
    assert res["now"] == T0 + 1000
    assert (await gw.client.get("/healthz")).status == 200
    assert (await (await gw.client.get("/healthz")).json())["now"] == T0 + 1000


async def test_clock_advance_expires_due_holds(gw: Gateway) -> None:
    body = order()
    await gw.check(body)
    res = await gw.admin("POST", "clock", {"advance": 900})
    assert res["expired"] == 1
    assert (await gw.get(body["order_id"]))["state"] == "expired"


@pytest.mark.parametrize(
    "body",
    [
        {"set": T0 - 1},
        {"advance": -1},
        {},
        {"advance": 1, "set": T0 + 5},
        {"advance": 1.5},
        {"advance": "1h"},
        {"jump": 5},
    ],
)
async def test_bad_clock_request_is_400_and_leaves_the_clock(gw: Gateway, body: dict[str, Any]) -> None:
    await gw.advance(100)
    assert_error(await gw.admin("POST", "clock", body, status=400))
    assert gw.clock.now() == T0 + 100


@pytest.fixture
async def system_clock_client() -> AsyncIterator[TestClient[Any, Any]]:
    coordinator = Coordinator(build_config(base_config()), SystemClock())
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(coordinator, admin_token=TOKEN)))
    await client.start_server()
    yield client
    await client.close()


async def test_clock_is_404_without_a_manual_clock(system_clock_client: TestClient[Any, Any]) -> None:
    resp = await system_clock_client.post(
        "/v1/admin/clock", json={"advance": 60}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert resp.status == 404
    assert_error(await resp.json())


async def test_a_generated_token_is_kept_across_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no token set anywhere, the server makes one, and a restart on the same data keeps it."""
    monkeypatch.delenv("FLASHGUARD_ADMIN_TOKEN", raising=False)
    tokens = []
    for _ in range(2):
        config = build_config(base_config())
        app = make_app(Coordinator(config, ManualClock(T0)), store=Store(tmp_path), seed=config, snapshot_every=0)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()
        token = app[AUTH].token(app[COORDINATOR].config)
        assert token
        resp = await client.get("/v1/admin/config", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200
        assert (await resp.json())["settings"]["admin_token"] is None  # never shown
        tokens.append(token)
        await client.close()
    assert tokens[0] == tokens[1]


async def test_a_token_changed_through_the_admin_api_holds_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings are live (SPEC section 2): a new admin token locks the old one out at the next
    call, and stays after a restart."""
    monkeypatch.delenv("FLASHGUARD_ADMIN_TOKEN", raising=False)
    doc = base_config()
    doc["settings"]["admin_token"] = "first-token-123"
    for _ in range(2):
        config = build_config(doc)
        app = make_app(Coordinator(config, ManualClock(T0)), store=Store(tmp_path), seed=config, snapshot_every=0)
        client: TestClient[Any, Any] = TestClient(TestServer(app))
        await client.start_server()

        async def status(token: str) -> int:
            resp = await client.get("/v1/admin/config", headers={"Authorization": f"Bearer {token}"})
            return resp.status

        if await status("first-token-123") == 200:  # the first run: change it
            resp = await client.patch(
                "/v1/admin/settings",
                json={"admin_token": "second-token-456"},
                headers={"Authorization": "Bearer first-token-123"},
            )
            assert resp.status == 200
        assert await status("second-token-456") == 200
        assert await status("first-token-123") == 401
        await client.close()


async def test_the_environment_token_wins_over_the_configurations(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLASHGUARD_ADMIN_TOKEN", "env-token-789")
    doc = base_config()
    doc["settings"]["admin_token"] = "config-token-123"
    config = build_config(doc)
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(Coordinator(config, ManualClock(T0)))))
    await client.start_server()
    for token, expected in (("env-token-789", 200), ("config-token-123", 401)):
        resp = await client.get("/v1/admin/config", headers={"Authorization": f"Bearer {token}"})
        assert resp.status == expected, token
    await client.close()


async def test_settings_without_a_token_keep_the_one_in_force(monkeypatch: pytest.MonkeyPatch) -> None:
    # GET shows "admin_token": null; sending that back (or a null) must not lock everyone out.
    monkeypatch.delenv("FLASHGUARD_ADMIN_TOKEN", raising=False)
    doc = base_config()
    doc["settings"]["admin_token"] = "config-token-123"
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(Coordinator(build_config(doc), ManualClock(T0)))))
    await client.start_server()
    auth = {"Authorization": "Bearer config-token-123"}
    settings = (await (await client.get("/v1/admin/config", headers=auth)).json())["settings"]
    assert settings["admin_token"] is None
    for method, path, body in (
        ("PATCH", "/v1/admin/settings", {"admin_token": None}),
        ("PATCH", "/v1/admin/settings", settings),
        ("PUT", "/v1/admin/config", {**doc, "settings": settings}),
    ):
        resp = await client.request(method, path, json=body, headers=auth)
        assert resp.status == 200, (method, body, await resp.text())
        assert (await client.get("/v1/admin/config", headers=auth)).status == 200, (method, body)
    await client.close()
