"""Holds and idempotency (SPEC sections 3 and 4): hold, confirm, cancel, expiry, repeats.

Every counter is read back through the admin API (activity budget, user counters), so these tests
see what an operator sees.
"""

from __future__ import annotations

import pytest

import json
from typing import Any

import msgpack

from tests.conftest import Gateway, MakeGateway, base_config, discount, item, order

pytestmark = pytest.mark.both_modes  # every test against the single node and cluster mode

TTL = 900  # base_config's hold_ttl = "15m"


def limited(user_limit: int = 1, **settings: Any) -> dict[str, Any]:
    """base_config with a per-user SKU limit on S1 and the given settings added."""
    cfg = base_config(
        skus=[
            {
                "sku_id": "S1",
                "spu_id": "P1",
                "category": "phone",
                "brand": "acme",
                "cost_price": 800,
                "original_price": 1000,
                "limits": {"user": user_limit},
            }
        ]
    )
    cfg["settings"].update(settings)
    return cfg


def sku_count(user_view: Any, sku: str = "S1") -> int:
    count: int = user_view["counters"]["sku"].get(sku, 0)
    return count


def assert_error(data: Any, code: str | None = None) -> None:
    assert set(data) == {"error"}, data
    assert isinstance(data["error"]["code"], str) and data["error"]["code"]
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]
    if code is not None:
        assert data["error"]["code"] == code, data


# -- allow, confirm, cancel ----------------------------------------------------------------


async def test_allow_holds_until_now_plus_hold_ttl(gw: Gateway) -> None:
    body = order(item("S1", 2, 1000, discount(100)))
    res = await gw.check(body)
    assert res["decision"] == "allow"
    assert res["hold"] == {"expires_at": gw.clock.now() + TTL}
    assert res["payable"] == 2000 - 100
    assert res["stripped"] == []
    view = await gw.get(body["order_id"])
    assert view["state"] == "held"
    assert view["order_id"] == body["order_id"]
    assert (await gw.activity("A1"))["held"] == 100
    assert sku_count(await gw.user("u1")) == 2


async def test_hold_ttl_setting_sets_expires_at(gw_factory: MakeGateway) -> None:
    for ttl, seconds in (("30s", 30), ("1h", 3600), (120, 120)):
        cfg = base_config()
        cfg["settings"]["hold_ttl"] = ttl
        gw = await gw_factory(cfg)
        await gw.advance(7)
        res = await gw.check(order())
        assert res["hold"] == {"expires_at": gw.clock.now() + seconds}, ttl


async def test_confirm_makes_the_order_confirmed_and_repeat_is_200(gw: Gateway) -> None:
    body = order(item("S1", 1, 1000, discount(100)))
    await gw.check(body)
    first = await gw.confirm(body["order_id"])
    assert first["state"] == "confirmed"
    again = await gw.confirm(body["order_id"])
    assert again["state"] == "confirmed"
    act = await gw.activity("A1")
    assert (act["held"], act["spent"]) == (0, 100), "a repeated confirm must not spend twice"
    assert sku_count(await gw.user("u1")) == 1
    assert (await gw.get(body["order_id"]))["state"] == "confirmed"


async def test_confirmed_order_outlives_the_hold_ttl(gw: Gateway) -> None:
    body = order(item("S1", 1, 1000, discount(100)))
    await gw.check(body)
    await gw.confirm(body["order_id"])
    await gw.advance(TTL * 10)
    assert (await gw.get(body["order_id"]))["state"] == "confirmed"
    act = await gw.activity("A1")
    assert (act["held"], act["spent"]) == (0, 100)
    assert sku_count(await gw.user("u1")) == 1


async def test_cancel_of_a_hold_gives_quota_back_and_repeat_is_200(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limited(user_limit=1))
    body = order(item("S1", 1, 1000, discount(100)))
    assert (await gw.check(body))["decision"] == "allow"
    assert (await gw.check(order()))["decision"] == "deny"  # the limit of 1 is held
    view = await gw.cancel(body["order_id"])
    assert view["state"] == "cancelled"
    act = await gw.activity("A1")
    assert (act["held"], act["spent"]) == (0, 0)
    assert sku_count(await gw.user("u1")) == 0
    again = await gw.cancel(body["order_id"])
    assert again["state"] == "cancelled"
    assert sku_count(await gw.user("u1")) == 0, "a repeated cancel must not give back twice"
    assert (await gw.get(body["order_id"]))["state"] == "cancelled"
    assert (await gw.check(order()))["decision"] == "allow"


async def test_confirm_after_cancel_is_409(gw: Gateway) -> None:
    body = order()
    await gw.check(body)
    await gw.cancel(body["order_id"])
    assert_error(await gw.confirm(body["order_id"], status=409))
    assert (await gw.get(body["order_id"]))["state"] == "cancelled"
    assert sku_count(await gw.user("u1")) == 0


async def test_confirm_after_cancel_of_a_confirmed_order_is_409(gw: Gateway) -> None:
    body = order()
    await gw.check(body)
    await gw.confirm(body["order_id"])
    await gw.cancel(body["order_id"])
    assert_error(await gw.confirm(body["order_id"], status=409))
    assert (await gw.get(body["order_id"]))["state"] == "cancelled"


# -- expiry --------------------------------------------------------------------------------


async def test_hold_is_held_one_second_before_expires_at_and_expired_at_it(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limited(user_limit=1))
    body = order(item("S1", 1, 1000, discount(100)))
    res = await gw.check(body)
    expires_at = res["hold"]["expires_at"]
    await gw.advance(expires_at - 1 - gw.clock.now())
    assert gw.clock.now() == expires_at - 1
    assert (await gw.get(body["order_id"]))["state"] == "held"
    assert (await gw.activity("A1"))["held"] == 100
    assert sku_count(await gw.user("u1")) == 1
    await gw.advance(1)
    view = await gw.get(body["order_id"])
    assert view["state"] == "expired"
    act = await gw.activity("A1")
    assert (act["held"], act["spent"]) == (0, 0)
    assert sku_count(await gw.user("u1")) == 0


async def test_expired_hold_frees_the_limit_for_the_next_check(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limited(user_limit=1))
    first = order()
    await gw.check(first)
    await gw.advance(TTL - 1)
    denied = await gw.check(order())
    assert denied["decision"] == "deny"
    assert [r["code"] for r in denied["reasons"]] == ["SKU_LIMIT"]
    await gw.advance(1)
    assert (await gw.check(order()))["decision"] == "allow"
    assert (await gw.get(first["order_id"]))["state"] == "expired"


async def test_confirm_after_expiry_is_410(gw: Gateway) -> None:
    body = order(item("S1", 1, 1000, discount(100)))
    await gw.check(body)
    await gw.advance(TTL)
    assert_error(await gw.confirm(body["order_id"], status=410))
    assert (await gw.get(body["order_id"]))["state"] == "expired"
    act = await gw.activity("A1")
    assert (act["held"], act["spent"]) == (0, 0), "a refused confirm must not spend"


async def test_confirm_one_second_before_expiry_succeeds(gw: Gateway) -> None:
    body = order(item("S1", 1, 1000, discount(100)))
    await gw.check(body)
    await gw.advance(TTL - 1)
    assert (await gw.confirm(body["order_id"]))["state"] == "confirmed"
    await gw.advance(1)
    assert (await gw.get(body["order_id"]))["state"] == "confirmed"
    assert (await gw.activity("A1"))["spent"] == 100


async def test_cancel_after_expiry_is_200_and_stays_expired(gw: Gateway) -> None:
    # SPEC is silent; an operator expects cancel to be safe to retry and not to resurrect anything.
    body = order(item("S1", 1, 1000, discount(100)))
    await gw.check(body)
    await gw.advance(TTL)
    view = await gw.cancel(body["order_id"])
    assert view["state"] == "expired"
    act = await gw.activity("A1")
    assert (act["held"], act["spent"]) == (0, 0)
    assert sku_count(await gw.user("u1")) == 0


# -- cancel of a confirmed order and release_on_cancel -------------------------------------


async def test_cancel_confirmed_gives_quota_and_budget_back_when_release_on_cancel(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limited(user_limit=1, release_on_cancel=True))
    body = order(item("S1", 1, 1000, discount(100)))
    await gw.check(body)
    await gw.confirm(body["order_id"])
    assert (await gw.activity("A1"))["spent"] == 100
    view = await gw.cancel(body["order_id"])
    assert view["state"] == "cancelled"
    act = await gw.activity("A1")
    assert (act["held"], act["spent"]) == (0, 0)
    assert sku_count(await gw.user("u1")) == 0
    assert (await gw.cancel(body["order_id"]))["state"] == "cancelled"
    assert (await gw.activity("A1"))["spent"] == 0, "a repeated cancel must not give back twice"
    assert (await gw.check(order(item("S1", 1, 1000, discount(100)))))["decision"] == "allow"


async def test_cancel_confirmed_keeps_quota_and_budget_when_release_on_cancel_is_false(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limited(user_limit=1, release_on_cancel=False))
    body = order(item("S1", 1, 1000, discount(100)))
    await gw.check(body)
    await gw.confirm(body["order_id"])
    view = await gw.cancel(body["order_id"])
    assert view["state"] == "cancelled"
    act = await gw.activity("A1")
    assert (act["held"], act["spent"]) == (0, 100)
    assert sku_count(await gw.user("u1")) == 1
    assert (await gw.cancel(body["order_id"]))["state"] == "cancelled"
    assert (await gw.activity("A1"))["spent"] == 100
    res = await gw.check(order())
    assert res["decision"] == "deny"
    assert [(r["code"], r["limit"], r["used"]) for r in res["reasons"]] == [("SKU_LIMIT", 1, 1)]


async def test_release_on_cancel_false_still_releases_a_held_order(gw_factory: MakeGateway) -> None:
    # release_on_cancel governs confirmed orders; a hold is always given back on cancel.
    gw = await gw_factory(limited(user_limit=1, release_on_cancel=False))
    body = order(item("S1", 1, 1000, discount(100)))
    await gw.check(body)
    await gw.cancel(body["order_id"])
    act = await gw.activity("A1")
    assert (act["held"], act["spent"]) == (0, 0)
    assert (await gw.check(order()))["decision"] == "allow"


# -- unknown orders ------------------------------------------------------------------------


async def test_unknown_order_is_404_for_confirm_cancel_and_get(gw: Gateway) -> None:
    assert_error(await gw.confirm("no-such-order", status=404))
    assert_error(await gw.cancel("no-such-order", status=404))
    assert_error(await gw.get("no-such-order", status=404))
    assert await gw.orders() == 0


# -- idempotency ---------------------------------------------------------------------------


async def test_same_order_id_and_body_returns_the_first_answer_and_counts_once(gw: Gateway) -> None:
    body = order(item("S1", 2, 1000, discount(150)))
    first = await gw.check(body)
    await gw.advance(10)
    second = await gw.check(body)
    assert second == first
    assert await gw.orders() == 1
    assert (await gw.activity("A1"))["held"] == 150
    assert sku_count(await gw.user("u1")) == 2


async def test_repeat_with_reordered_keys_is_the_same_order(gw: Gateway) -> None:
    body = order(item("S1", 1, 1000, discount(100)), device="d1", phone="13900000000")
    first = await gw.check(body)

    def reverse(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: reverse(value[k]) for k in reversed(list(value))}
        if isinstance(value, list):
            return [reverse(v) for v in value]
        return value

    text = json.dumps(reverse(body))
    assert text != json.dumps(body)
    resp = await gw.client.post("/v1/orders/check", data=text, headers={"Content-Type": "application/json"})
    assert resp.status == 200
    assert await resp.json() == first
    assert await gw.orders() == 1
    assert (await gw.activity("A1"))["held"] == 100
    assert sku_count(await gw.user("u1")) == 1


async def test_repeat_as_msgpack_is_the_same_order(gw: Gateway) -> None:
    body = order(item("S1", 1, 1000, discount(100)))
    first = await gw.check(body)
    resp = await gw.client.post(
        "/v1/orders/check",
        data=msgpack.packb(body),
        headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
    )
    assert resp.status == 200
    assert resp.content_type == "application/msgpack"
    assert msgpack.unpackb(await resp.read()) == first
    assert await gw.orders() == 1
    assert (await gw.activity("A1"))["held"] == 100
    assert sku_count(await gw.user("u1")) == 1


async def test_first_sent_as_msgpack_then_json_is_the_same_order(gw: Gateway) -> None:
    body = order(item("S1", 1, 1000, discount(100)))
    resp = await gw.client.post(
        "/v1/orders/check",
        data=msgpack.packb(body),
        headers={"Content-Type": "application/msgpack", "Accept": "application/msgpack"},
    )
    assert resp.status == 200
    first = msgpack.unpackb(await resp.read())
    assert first["decision"] == "allow"
    assert await gw.check(body) == first
    assert (await gw.activity("A1"))["held"] == 100


async def test_same_order_id_with_a_different_body_is_409_and_changes_nothing(gw: Gateway) -> None:
    body = order(item("S1", 1, 1000, discount(100)))
    await gw.check(body)
    before = (await gw.activity("A1"), await gw.user("u1"))
    for changed in (
        {**body, "items": [item("S1", 2, 1000, discount(100))]},
        {**body, "user_id": "u2"},
        {**body, "device_id": "d9"},
        {**body, "on_refusal": "degrade"},
    ):
        assert_error(await gw.check(changed, status=409))
    assert (await gw.activity("A1"), await gw.user("u1")) == before
    assert (await gw.user("u2"))["counters"]["sku"] == {}
    assert await gw.orders() == 1
    assert (await gw.get(body["order_id"]))["state"] == "held"
    assert (await gw.check(body))["decision"] == "allow"


async def test_different_body_after_confirm_is_still_409(gw: Gateway) -> None:
    body = order()
    await gw.check(body)
    await gw.confirm(body["order_id"])
    assert_error(await gw.check({**body, "items": [item("S1", 3)]}, status=409))
    assert sku_count(await gw.user("u1")) == 1
    assert (await gw.get(body["order_id"]))["state"] == "confirmed"


async def test_denied_order_repeated_stays_denied(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limited(user_limit=1))
    held = order()
    await gw.check(held)
    denied = order()
    first = await gw.check(denied)
    assert first["decision"] == "deny"
    assert first["hold"] is None and first["payable"] is None
    # The limit frees up; the repeat still answers what the first check answered.
    await gw.cancel(held["order_id"])
    again = await gw.check(denied)
    assert again == first
    view = await gw.get(denied["order_id"])
    assert view["state"] == "denied"
    assert sku_count(await gw.user("u1")) == 0, "a denied order holds nothing"


async def test_confirm_of_a_denied_order_is_409(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(limited(user_limit=1))
    await gw.check(order())
    denied = order()
    assert (await gw.check(denied))["decision"] == "deny"
    assert_error(await gw.confirm(denied["order_id"], status=409))
    assert (await gw.get(denied["order_id"]))["state"] == "denied"
    assert sku_count(await gw.user("u1")) == 1
