"""POST /v1/coupons/claim-check (SPEC section 4).

`{"user_id", "coupon_id", "device_id"?, "phone"?}`: `deny` for a blacklisted user (listed or
auto-blacklisted), device or phone (BLACKLISTED) or a claim past the coupon's `per_user_limit`
(COUPON_CLAIM_LIMIT); otherwise `allow`, which counts the claim at once. The answer has the shape
of a check's. Bad input is a 400 and counts nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Gateway, MakeGateway, base_config, discount, item, order

pytestmark = pytest.mark.both_modes  # every test against the single node and cluster mode

VAGUE = "Too many orders right now, please try again later"
SHAPE = {"order_id", "decision", "reasons", "shadow", "warnings", "message", "hold", "payable", "stripped"}
KEYS = ("code", "coupon_id", "subject", "value", "limit", "used", "requested", "degradable", "auto")


def claim_config(**sections: Any) -> dict[str, Any]:
    """Coupons C1 (one per user), C2 (two per user) and C3 (no limit), all of activity A1."""
    return base_config(
        coupons=[
            {"coupon_id": "C1", "activity_id": "A1", "per_user_limit": 1},
            {"coupon_id": "C2", "activity_id": "A1", "per_user_limit": 2},
            {"coupon_id": "C3", "activity_id": "A1"},
        ],
        **sections,
    )


def claim(user: str = "u1", coupon: str = "C1", **extra: str) -> dict[str, Any]:
    return {"user_id": user, "coupon_id": coupon, **extra}


def located(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in KEYS} for r in res["reasons"]]


def why(code: str, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {k: None for k in KEYS}
    out.update(fields, code=code, degradable=False)
    return out


def limit_reason(coupon: str, limit: int, used: int) -> dict[str, Any]:
    return why("COUPON_CLAIM_LIMIT", coupon_id=coupon, subject="user", limit=limit, used=used, requested=1)


async def claims(gw: Gateway, user: str = "u1") -> dict[str, int]:
    """The user's claim counters, per coupon."""
    out: dict[str, int] = (await gw.user(user))["counters"]["coupon"]
    return out


async def allowed(gw: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    res = await gw.claim(body)
    assert set(res) == SHAPE
    assert res["decision"] == "allow", res
    assert res["order_id"] is None and res["message"] is None
    assert res["hold"] is None and res["payable"] is None and res["stripped"] == []
    assert res["shadow"] == []
    out: dict[str, Any] = res
    return out


async def denied(gw: Gateway, body: dict[str, Any], *reasons: dict[str, Any]) -> dict[str, Any]:
    res = await gw.claim(body)
    assert set(res) == SHAPE
    assert res["decision"] == "deny", res
    assert located(res) == list(reasons)
    assert res["order_id"] is None and res["message"] == VAGUE
    assert res["hold"] is None and res["payable"] is None and res["stripped"] == []
    assert res["shadow"] == []
    out: dict[str, Any] = res
    return out


# -- per_user_limit ----------------------------------------------------------------------------------


async def test_allow_counts_the_claim_at_once(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(claim_config())
    res = await allowed(gw, claim())
    assert res["reasons"] == [] and res["warnings"] == []
    assert await claims(gw) == {"C1": 1}
    await denied(gw, claim(), limit_reason("C1", limit=1, used=1))
    assert await claims(gw) == {"C1": 1}


async def test_limit_of_two(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(claim_config())
    await allowed(gw, claim(coupon="C2"))
    await allowed(gw, claim(coupon="C2"))
    assert await claims(gw) == {"C2": 2}
    await denied(gw, claim(coupon="C2"), limit_reason("C2", limit=2, used=2))
    await denied(gw, claim(coupon="C2"), limit_reason("C2", limit=2, used=2))
    assert await claims(gw) == {"C2": 2}


async def test_limit_is_per_user_and_per_coupon(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(claim_config())
    await allowed(gw, claim("u1", "C1"))
    await allowed(gw, claim("u2", "C1"))
    await allowed(gw, claim("u1", "C2"))
    await denied(gw, claim("u1", "C1"), limit_reason("C1", limit=1, used=1))
    assert await claims(gw, "u1") == {"C1": 1, "C2": 1}
    assert await claims(gw, "u2") == {"C1": 1}


async def test_coupon_without_a_limit_is_always_allowed(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(claim_config())
    for _ in range(5):
        await allowed(gw, claim(coupon="C3"))
    assert await claims(gw) == {"C3": 5}


async def test_claims_are_not_orders(gw_factory: MakeGateway) -> None:
    cfg = claim_config()
    cfg["activities"][0]["user_limit"] = 1
    gw = await gw_factory(cfg)
    await allowed(gw, claim(coupon="C3"))
    await allowed(gw, claim(coupon="C3"))
    # Claiming a coupon of A1 twice buys nothing under A1: an order under A1 is still allowed.
    res = await gw.check(order(item("S1", 1, 1000, discount(10, "A1", ident="C3"))))
    assert res["decision"] == "allow", res
    counters = (await gw.user("u1"))["counters"]
    assert counters["coupon"] == {"C3": 2} and counters["activity"] == {"A1": 1}
    assert (await gw.activity("A1"))["held"] == 10


async def test_raising_the_limit_at_run_time_applies_to_the_next_claim(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(claim_config())
    await allowed(gw, claim())
    await denied(gw, claim(), limit_reason("C1", limit=1, used=1))
    await gw.admin("PUT", "coupons/C1", {"activity_id": "A1", "per_user_limit": 2})
    await allowed(gw, claim())
    await denied(gw, claim(), limit_reason("C1", limit=2, used=2))
    assert await claims(gw) == {"C1": 2}


# -- blacklists ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "subject", "value"),
    [
        (claim("u-bad"), "user", "u-bad"),
        (claim(device_id="d-bad"), "device", "d-bad"),
        (claim(phone="13800000000"), "phone", "13800000000"),
        (claim(phone="138-0000 0000"), "phone", "13800000000"),
        (claim(phone="+86 １３８ 0000 0000"), "phone", "13800000000"),
    ],
    ids=["user", "device", "phone", "phone-formatted", "phone-+86-fullwidth"],
)
async def test_blacklisted_claimer_is_denied_and_counts_nothing(
    gw_factory: MakeGateway, body: dict[str, Any], subject: str, value: str
) -> None:
    lists = {"blacklist": {"user": ["u-bad"], "device": ["d-bad"], "phone": ["13800000000"]}}
    gw = await gw_factory(claim_config(lists=lists))
    await denied(gw, body, why("BLACKLISTED", subject=subject, value=value))
    assert await claims(gw, body["user_id"]) == {}


async def test_clean_device_and_phone_are_allowed(gw_factory: MakeGateway) -> None:
    lists = {"blacklist": {"user": ["u-bad"], "device": ["d-bad"], "phone": ["13800000000"]}}
    gw = await gw_factory(claim_config(lists=lists))
    await allowed(gw, claim(device_id="d-good", phone="13900000000"))
    assert await claims(gw) == {"C1": 1}


async def test_blacklisted_and_over_the_limit_reports_both(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(claim_config())
    await allowed(gw, claim())
    await gw.admin("PUT", "lists/blacklist/device/d-bad")
    await denied(
        gw,
        claim(device_id="d-bad"),
        why("BLACKLISTED", subject="device", value="d-bad"),
        limit_reason("C1", limit=1, used=1),
    )
    assert await claims(gw) == {"C1": 1}


async def test_blacklisting_at_run_time_applies_to_the_next_claim(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(claim_config())
    await allowed(gw, claim(coupon="C3"))
    await gw.admin("PUT", "lists/blacklist/user/u1")
    await denied(gw, claim(coupon="C3"), why("BLACKLISTED", subject="user", value="u1"))
    await gw.admin("DELETE", "lists/blacklist/user/u1")
    await allowed(gw, claim(coupon="C3"))
    assert await claims(gw) == {"C3": 2}


async def test_user_auto_blacklisted_for_discount_cost_is_denied(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(claim_config(auto_blacklist={"discount_cost": 500}))
    body = order(item("S1", 1, 5000, discount(500, "A1")))
    assert (await gw.check(body))["decision"] == "allow"
    # A held order feeds nothing: only confirmed orders do.
    await allowed(gw, claim(coupon="C3"))
    await gw.confirm(body["order_id"])
    user = await gw.user("u1")
    assert user["auto"] is True and user["blacklisted"] is True
    await denied(gw, claim(), why("BLACKLISTED", subject="user", value="u1", auto=True))
    assert await claims(gw) == {"C3": 1}
    # Another user is not affected.
    await allowed(gw, claim("u2"))
    # Cancelling the confirmed order takes its discount out of the totals.
    await gw.cancel(body["order_id"])
    await allowed(gw, claim())
    assert await claims(gw) == {"C1": 1, "C3": 1}


async def test_user_auto_blacklisted_for_negative_margin_is_denied(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(claim_config(auto_blacklist={"negative_margin": True}))
    body = order(item("S1", 1, 1000, discount(201, "A1")))  # paid 799 < cost 800
    assert (await gw.check(body))["decision"] == "allow"
    await gw.confirm(body["order_id"])
    assert (await gw.user("u1"))["auto_blacklist"]["margin_total"] == -1
    await denied(gw, claim(), why("BLACKLISTED", subject="user", value="u1", auto=True))
    assert await claims(gw) == {}


# -- whitelist -------------------------------------------------------------------------------------------


async def test_whitelisted_user_is_allowed_past_the_limit_and_still_counted(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(claim_config(lists={"whitelist": {"user": ["staff-1"]}}))
    first = await allowed(gw, claim("staff-1"))
    assert located(first) == [why("WHITELISTED", subject="user", value="staff-1")]
    second = await allowed(gw, claim("staff-1"))
    assert located(second) == [why("WHITELISTED", subject="user", value="staff-1")]
    # What would have refused the claim is reported to the operator as a warning.
    assert [w["code"] for w in second["warnings"]] == ["COUPON_CLAIM_LIMIT"]
    assert await claims(gw, "staff-1") == {"C1": 2}


async def test_whitelisted_user_on_a_blacklisted_device_is_allowed(gw_factory: MakeGateway) -> None:
    lists = {"whitelist": {"user": ["staff-1"]}, "blacklist": {"device": ["d-bad"]}}
    gw = await gw_factory(claim_config(lists=lists))
    res = await allowed(gw, claim("staff-1", device_id="d-bad"))
    assert located(res) == [why("WHITELISTED", subject="user", value="staff-1")]
    assert [w["code"] for w in res["warnings"]] == ["BLACKLISTED"]
    assert await claims(gw, "staff-1") == {"C1": 1}


# -- unknown coupons -------------------------------------------------------------------------------------


async def test_unknown_coupon_is_allowed_with_a_warning(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(claim_config())
    res = await allowed(gw, claim(coupon="C-NEW"))
    assert res["reasons"] == []
    assert [(w["code"], w.get("coupon_id")) for w in res["warnings"]] == [("UNKNOWN_COUPON", "C-NEW")]
    assert await claims(gw) == {"C-NEW": 1}
    # Once configured, the claims already made count against its limit.
    await gw.admin("PUT", "coupons/C-NEW", {"per_user_limit": 1})
    await denied(gw, claim(coupon="C-NEW"), limit_reason("C-NEW", limit=1, used=1))


async def test_unknown_coupon_is_denied_when_unknown_is_deny(gw_factory: MakeGateway) -> None:
    cfg = claim_config()
    cfg["settings"]["unknown"] = "deny"
    gw = await gw_factory(cfg)
    res = await denied(gw, claim(coupon="C-NEW"), why("UNKNOWN_COUPON", coupon_id="C-NEW"))
    assert res["warnings"] == []
    assert await claims(gw) == {}
    await allowed(gw, claim())
    assert await claims(gw) == {"C1": 1}


async def test_blacklisted_user_with_an_unknown_coupon_is_denied(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(claim_config(lists={"blacklist": {"user": ["u-bad"]}}))
    res = await denied(gw, claim("u-bad", "C-NEW"), why("BLACKLISTED", subject="user", value="u-bad"))
    assert [w["code"] for w in res["warnings"]] == ["UNKNOWN_COUPON"]
    assert await claims(gw, "u-bad") == {}


# -- messages ----------------------------------------------------------------------------------------------


async def test_claim_refusals_are_vague_in_chinese(gw_factory: MakeGateway) -> None:
    cfg = claim_config(lists={"blacklist": {"user": ["u-bad"]}})
    cfg["settings"]["locale"] = "zh"
    gw = await gw_factory(cfg)
    await allowed(gw, claim())
    over = await gw.claim(claim())
    assert over["decision"] == "deny" and over["message"] == "当前下单人数太多，请稍后再试"
    bad = await gw.claim(claim("u-bad"))
    assert bad["decision"] == "deny" and bad["message"] == "当前下单人数太多，请稍后再试"


# -- bad input -----------------------------------------------------------------------------------------------

BAD_BODIES: dict[str, Any] = {
    "empty-object": {},
    "array": [claim()],
    "string": "u1",
    "missing-coupon": {"user_id": "u1"},
    "missing-user": {"coupon_id": "C1"},
    "empty-user": claim(""),
    "empty-coupon": claim(coupon=""),
    "long-user": claim("u" * 129),
    "control-char": claim("u1\x00"),
    "number-user": {"user_id": 1, "coupon_id": "C1"},
    "null-coupon": {"user_id": "u1", "coupon_id": None},
    "empty-device": claim(device_id=""),
    "long-phone": claim(phone="1" * 33),
    "number-phone": {"user_id": "u1", "coupon_id": "C1", "phone": 13800000000},
    "unknown-field": {"user_id": "u1", "coupon_id": "C1", "quantity": 1},
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
async def test_bad_body_is_400_and_counts_nothing(gw_factory: MakeGateway, name: str) -> None:
    gw = await gw_factory(claim_config())
    err = await gw.call("POST", "/v1/coupons/claim-check", BAD_BODIES[name], status=400)
    assert set(err) == {"error"}
    assert isinstance(err["error"]["code"], str) and isinstance(err["error"]["message"], str)
    assert await claims(gw) == {}
    await allowed(gw, claim())
    assert await claims(gw) == {"C1": 1}


@pytest.mark.parametrize("raw", [b"", b"{", b"not json", b'{"user_id": "u1", "coupon_id": "C1"'])
async def test_malformed_json_is_400_and_counts_nothing(gw_factory: MakeGateway, raw: bytes) -> None:
    gw = await gw_factory(claim_config())
    resp = await gw.client.post(
        "/v1/coupons/claim-check", data=raw, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    err = await resp.json()
    assert set(err) == {"error"} and isinstance(err["error"]["code"], str)
    assert await claims(gw) == {}
    await allowed(gw, claim())
