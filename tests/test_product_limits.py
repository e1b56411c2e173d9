"""SKU_LIMIT and SPU_LIMIT (SPEC sections 2-3), and what the buyer is told.

A SKU's or SPU's `limits` cap the quantity (held plus confirmed) per user, device, receiver name,
receiver phone and receiver address; the SPU counts over all its SKUs. Receiver names and
addresses fold full-width forms, case and white space away; phones fold to their digits, and
China's +86 / 0086 to the national number.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ADDRESS, Gateway, MakeGateway, base_config, discount, item, order

pytestmark = pytest.mark.both_modes  # every test against the single node and cluster mode

VAGUE = "Too many orders right now, please try again later"
HOLD_TTL = 15 * 60
KEYS = ("code", "sku_id", "spu_id", "subject", "limit", "used", "requested")


def limited(limit: int) -> str:
    return f"This item is limited to {limit} per customer"


def product_config(
    sku: dict[str, int] | None = None, spu: dict[str, int] | None = None, **sections: Any
) -> dict[str, Any]:
    """S1 (limits `sku`) and S2 of SPU P1 (limits `spu`), S3 of SPU P2; no price fuses."""
    s1: dict[str, Any] = {"sku_id": "S1", "spu_id": "P1", "cost_price": 800, "original_price": 1000}
    if sku is not None:
        s1["limits"] = sku
    spus: list[dict[str, Any]] = [{"spu_id": "P1", "limits": spu}] if spu is not None else []
    return base_config(
        skus=[
            s1,
            {"sku_id": "S2", "spu_id": "P1", "cost_price": 800, "original_price": 1000},
            {"sku_id": "S3", "spu_id": "P2", "cost_price": 800, "original_price": 1000},
        ],
        spus=spus,
        **sections,
    )


def sku_reason(subject: str, limit: int, used: int, requested: int, sku_id: str = "S1") -> dict[str, Any]:
    return {
        "code": "SKU_LIMIT",
        "sku_id": sku_id,
        "spu_id": None,
        "subject": subject,
        "limit": limit,
        "used": used,
        "requested": requested,
    }


def spu_reason(subject: str, limit: int, used: int, requested: int, spu_id: str = "P1") -> dict[str, Any]:
    return {
        "code": "SPU_LIMIT",
        "sku_id": None,
        "spu_id": spu_id,
        "subject": subject,
        "limit": limit,
        "used": used,
        "requested": requested,
    }


def located(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in KEYS} for r in res["reasons"]]


def by_code_subject(reasons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(reasons, key=lambda r: (r["code"], r["subject"]))


async def allowed(gw: Gateway, body: dict[str, Any]) -> None:
    res = await gw.check(body)
    assert res["decision"] == "allow", res
    assert res["reasons"] == [] and res["message"] is None
    assert res["hold"] is not None


async def denied(gw: Gateway, body: dict[str, Any], *reasons: dict[str, Any]) -> dict[str, Any]:
    """Denied for exactly `reasons` (in this order), non-degradable, holding nothing."""
    res = await gw.check(body)
    assert res["decision"] == "deny", res
    assert located(res) == list(reasons)
    assert all(r.get("degradable", False) is False for r in res["reasons"])
    assert res["hold"] is None and res["payable"] is None
    assert (await gw.get(body["order_id"]))["state"] == "denied"
    out: dict[str, Any] = res
    return out


async def user_counters(gw: Gateway, user: str = "u1") -> tuple[dict[str, int], dict[str, int]]:
    c = (await gw.user(user))["counters"]
    return c["sku"], c["spu"]


# -- SKU_LIMIT per user -------------------------------------------------------------------------


async def test_sku_user_limit_at_the_limit_allowed_one_past_refused(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(sku={"user": 2}))
    await allowed(gw, order(item("S1", 1)))
    await allowed(gw, order(item("S1", 1)))
    assert await user_counters(gw) == ({"S1": 2}, {"P1": 2})
    res = await denied(gw, order(item("S1", 1)), sku_reason("user", limit=2, used=2, requested=1))
    assert res["message"] == limited(2)
    assert await user_counters(gw) == ({"S1": 2}, {"P1": 2})
    # Other users and other SKUs are not affected.
    await allowed(gw, order(item("S1", 2), user="u2"))
    await allowed(gw, order(item("S2", 5)))


async def test_sku_limit_in_one_order(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(sku={"user": 2}))
    await denied(gw, order(item("S1", 3)), sku_reason("user", limit=2, used=0, requested=3))
    # Two items of the SKU sum into one reason.
    await denied(gw, order(item("S1", 2), item("S1", 1)), sku_reason("user", limit=2, used=0, requested=3))
    await allowed(gw, order(item("S1", 1), item("S1", 1), item("S2", 4)))
    assert await user_counters(gw) == ({"S1": 2, "S2": 4}, {"P1": 6})


async def test_sku_limit_counts_confirmed_orders(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(sku={"user": 2}))
    first = order(item("S1", 1))
    await allowed(gw, first)
    await gw.confirm(first["order_id"])
    await gw.advance(HOLD_TTL * 3)
    await allowed(gw, order(item("S1", 1)))
    await denied(gw, order(item("S1", 1)), sku_reason("user", limit=2, used=2, requested=1))


async def test_sku_limit_cancel_and_expiry_give_quantity_back(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(sku={"user": 2}))
    held = order(item("S1", 1))
    confirmed = order(item("S1", 1))
    await allowed(gw, held)
    await allowed(gw, confirmed)
    await gw.confirm(confirmed["order_id"])
    await denied(gw, order(item("S1", 1)), sku_reason("user", limit=2, used=2, requested=1))
    await gw.cancel(held["order_id"])
    assert (await user_counters(gw))[0] == {"S1": 1}
    await gw.cancel(confirmed["order_id"])
    assert (await user_counters(gw))[0] == {}
    await allowed(gw, order(item("S1", 2)))
    await gw.advance(HOLD_TTL - 1)
    await denied(gw, order(item("S1", 1)), sku_reason("user", limit=2, used=2, requested=1))
    await gw.advance(1)
    assert (await user_counters(gw))[0] == {}
    await allowed(gw, order(item("S1", 2)))


async def test_denied_order_counts_nothing(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(sku={"user": 2}))
    await denied(gw, order(item("S1", 3), item("S2", 1)), sku_reason("user", limit=2, used=0, requested=3))
    assert await user_counters(gw) == ({}, {})
    await allowed(gw, order(item("S1", 2)))


async def test_risk_multiplier_does_not_raise_product_limits(gw_factory: MakeGateway) -> None:
    cfg = product_config(sku={"user": 2})
    cfg["settings"]["risk_multiplier"] = "3"
    gw = await gw_factory(cfg)
    await denied(gw, order(item("S1", 3)), sku_reason("user", limit=2, used=0, requested=3))


# -- SKU_LIMIT per other subjects; identities fold -------------------------------------------

SHARED = [
    # subject, how the first order names it, how a later one names the same subject, a different one
    pytest.param("device", {"device": "d1"}, {"device": "d1"}, {"device": "d2"}, id="device"),
    pytest.param("receiver_name", {"name": "Zhang San"}, {"name": "  zhang   SAN "}, {"name": "Li Si"}, id="name"),
    pytest.param("receiver_name", {"name": "Zhang San"}, {"name": "ZHANG\tSAN"}, {"name": "Zhang Sa"}, id="name-tab"),
    pytest.param("receiver_name", {"name": "张三"}, {"name": "张 三"}, {"name": "张四"}, id="name-cjk"),
    pytest.param("receiver_name", {"name": "Zhang San"}, {"name": "ＺＨＡＮＧ ＳＡＮ"}, {"name": "Li Si"}, id="name-fullwidth"),
    pytest.param("receiver_phone", {"phone": "13900000000"}, {"phone": "139-0000-0000"}, {"phone": "13900000001"}, id="phone"),
    pytest.param(
        "receiver_phone", {"phone": "13900000000"}, {"phone": "+86 139 0000 0000"}, {"phone": "+1 139 0000 0000"}, id="phone-+86"
    ),
    pytest.param("receiver_phone", {"phone": "13900000000"}, {"phone": "0086-13900000000"}, {"phone": "0013900000000"}, id="phone-0086"),
    pytest.param("receiver_phone", {"phone": "13900000000"}, {"phone": "8613900000000"}, {"phone": "861390000000"}, id="phone-86"),
    pytest.param("receiver_phone", {"phone": "13900000000"}, {"phone": "１３９００００００００"}, {"phone": "13900000001"}, id="phone-fullwidth"),
    pytest.param(
        "receiver_phone", {"phone": "139 0000 0000"}, {"phone": "(139) 0000-0000"}, {"phone": "139-0000-0001"}, id="phone-spaces"
    ),
    pytest.param(
        "receiver_address",
        {"address": ADDRESS},
        {
            "address": {
                "province": "ZHEJIANG",
                "city": " hangzhou",
                "district": "Xihu ",
                "town": "lingYIN",
                "detail": "1  lake   RD ",
            }
        },
        {"address": {**ADDRESS, "detail": "2 Lake Rd"}},
        id="address",
    ),
    pytest.param(
        "receiver_address",
        {"address": {**ADDRESS, "detail": "西湖路1号"}},
        {"address": {**ADDRESS, "detail": "西湖路 1 号"}},
        {"address": {**ADDRESS, "detail": "西湖路2号"}},
        id="address-cjk",
    ),
    pytest.param(
        "receiver_address",
        {"address": ADDRESS},
        {"address": {**ADDRESS, "detail": "\t1 Lake Rd"}},
        {"address": {**ADDRESS, "town": "Beishan"}},
        id="address-other-town",
    ),
]


@pytest.mark.parametrize(("subject", "first", "same", "other"), SHARED)
async def test_sku_limit_per_subject(
    gw_factory: MakeGateway, subject: str, first: dict[str, Any], same: dict[str, Any], other: dict[str, Any]
) -> None:
    gw = await gw_factory(product_config(sku={subject: 2}))
    # Different users, so only the shared subject links the orders.
    await allowed(gw, order(item("S1", 2), user="u1", **first))
    res = await denied(gw, order(item("S1", 1), user="u2", **same), sku_reason(subject, limit=2, used=2, requested=1))
    assert res["reasons"][0]["subject"] == subject
    assert res["message"] == limited(2)
    await allowed(gw, order(item("S1", 2), user="u3", **other))
    await denied(gw, order(item("S1", 1), user="u4", **other), sku_reason(subject, limit=2, used=2, requested=1))


@pytest.mark.parametrize(("subject", "first", "same", "other"), SHARED)
async def test_spu_limit_per_subject(
    gw_factory: MakeGateway, subject: str, first: dict[str, Any], same: dict[str, Any], other: dict[str, Any]
) -> None:
    gw = await gw_factory(product_config(spu={subject: 3}))
    await allowed(gw, order(item("S1", 2), user="u1", **first))
    await allowed(gw, order(item("S2", 1), user="u2", **same))
    await denied(gw, order(item("S2", 1), user="u3", **same), spu_reason(subject, limit=3, used=3, requested=1))
    await allowed(gw, order(item("S1", 3), user="u4", **other))


async def test_subject_absent_from_the_order_is_not_limited(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(sku={"device": 1, "receiver_name": 1, "receiver_phone": 1, "receiver_address": 1}))
    await allowed(gw, order(item("S1", 5)))
    await allowed(gw, order(item("S1", 5)))
    await allowed(gw, order(item("S1", 1), device="d1", name="Zhang San", phone="13900000000", address=ADDRESS))


# -- SPU_LIMIT ------------------------------------------------------------------------------------


async def test_spu_limit_counts_all_skus_of_the_spu(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(spu={"user": 3}))
    await allowed(gw, order(item("S1", 2)))
    await allowed(gw, order(item("S2", 1)))
    assert await user_counters(gw) == ({"S1": 2, "S2": 1}, {"P1": 3})
    res = await denied(gw, order(item("S2", 1)), spu_reason("user", limit=3, used=3, requested=1))
    assert res["message"] == limited(3)
    await denied(gw, order(item("S1", 1)), spu_reason("user", limit=3, used=3, requested=1))
    # S3 is another SPU.
    await allowed(gw, order(item("S3", 4)))


async def test_spu_limit_in_one_order(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(spu={"user": 3}))
    await denied(gw, order(item("S1", 2), item("S2", 2)), spu_reason("user", limit=3, used=0, requested=4))
    await allowed(gw, order(item("S1", 2), item("S2", 1), item("S3", 9)))


async def test_spu_limit_cancel_gives_back(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(spu={"user": 3}))
    first = order(item("S1", 3))
    await allowed(gw, first)
    await gw.confirm(first["order_id"])
    await denied(gw, order(item("S2", 1)), spu_reason("user", limit=3, used=3, requested=1))
    await gw.cancel(first["order_id"])
    assert await user_counters(gw) == ({}, {})
    await allowed(gw, order(item("S2", 3)))


# -- every reason together, and the message ------------------------------------------------------


async def test_every_failing_limit_is_reported(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(sku={"user": 1, "device": 1, "receiver_phone": 1}, spu={"user": 1, "device": 2}))
    res = await gw.check(order(item("S1", 2), device="d1", phone="13900000000"))
    assert res["decision"] == "deny"
    assert by_code_subject(located(res)) == by_code_subject(
        [
            sku_reason("user", limit=1, used=0, requested=2),
            sku_reason("device", limit=1, used=0, requested=2),
            sku_reason("receiver_phone", limit=1, used=0, requested=2),
            spu_reason("user", limit=1, used=0, requested=2),
        ]
    )
    assert len(res["reasons"]) == 4
    # The explicit message names the limit of the first reason.
    assert res["message"] == limited(res["reasons"][0]["limit"])
    assert await user_counters(gw) == ({}, {})


async def test_message_names_the_first_reasons_limit(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(sku={"user": 2}, spu={"user": 5}))
    res = await gw.check(order(item("S1", 6)))
    assert res["decision"] == "deny"
    assert by_code_subject(located(res)) == [
        sku_reason("user", limit=2, used=0, requested=6),
        spu_reason("user", limit=5, used=0, requested=6),
    ]
    assert res["message"] == limited(res["reasons"][0]["limit"])


async def test_product_limit_with_a_price_fuse_gets_the_vague_message(gw_factory: MakeGateway) -> None:
    cfg = product_config(sku={"user": 1})
    cfg["skus"][0]["price_fuse"] = {"base": "cost", "ratio": "1.0"}
    gw = await gw_factory(cfg)
    res = await gw.check(order(item("S1", 2, 1000, discount(500, "A1"))))
    assert res["decision"] == "deny"
    assert sorted(r["code"] for r in res["reasons"]) == ["PRICE_FUSE", "SKU_LIMIT"]
    assert [r for r in located(res) if r["code"] == "SKU_LIMIT"] == [sku_reason("user", limit=1, used=0, requested=2)]
    assert res["message"] == VAGUE
    assert (await gw.activity("A1"))["held"] == 0


async def test_product_limit_with_a_budget_refusal_gets_the_vague_message(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(sku={"user": 1}, activities=[{"activity_id": "A1", "budget": 100}]))
    res = await gw.check(order(item("S1", 2, 1000, discount(101, "A1")), on_refusal="degrade"))
    # SKU_LIMIT is not degradable, so the order is denied whatever on_refusal says.
    assert res["decision"] == "deny"
    assert sorted(r["code"] for r in res["reasons"]) == ["ACTIVITY_BUDGET_EXHAUSTED", "SKU_LIMIT"]
    assert res["message"] == VAGUE
    assert res["stripped"] == [] and res["hold"] is None


async def test_product_limit_with_a_blacklisted_user_gets_the_vague_message(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(sku={"user": 1}, lists={"blacklist": {"user": ["u1"]}}))
    res = await gw.check(order(item("S1", 2)))
    assert res["decision"] == "deny"
    assert sorted(r["code"] for r in res["reasons"]) == ["BLACKLISTED", "SKU_LIMIT"]
    assert res["message"] == VAGUE


@pytest.mark.parametrize(("disclose", "message"), [(True, limited(1)), (False, VAGUE)])
async def test_product_limit_with_an_activity_limit_states_it_only_with_disclose_limits(
    gw_factory: MakeGateway, disclose: bool, message: str
) -> None:
    cfg = product_config(
        sku={"user": 1},
        activities=[{"activity_id": "A1", "budget": 1_000_000, "user_limit": 1, "disclose_limits": disclose}],
    )
    gw = await gw_factory(cfg)
    res = await gw.check(order(item("S1", 2, 1000, discount(10, "A1"))))
    assert res["decision"] == "deny"
    assert sorted(r["code"] for r in res["reasons"]) == ["ACTIVITY_USER_LIMIT", "SKU_LIMIT"]
    assert res["message"] == message


async def test_chinese_limit_message(gw_factory: MakeGateway) -> None:
    cfg = product_config(sku={"user": 2})
    cfg["settings"]["locale"] = "zh"
    gw = await gw_factory(cfg)
    res = await denied(gw, order(item("S1", 3)), sku_reason("user", limit=2, used=0, requested=3))
    assert res["message"] == "当前商品限购数量为2，您已超过限购数量"


async def test_reason_has_the_spec_example_shape(gw_factory: MakeGateway) -> None:
    """SPEC section 3's example: a SKU_LIMIT reason states `"degradable": false`."""
    gw = await gw_factory(product_config(sku={"user": 2}))
    await allowed(gw, order(item("S1", 2)))
    res = await gw.check(order(item("S1", 1)))
    assert res["decision"] == "deny"
    assert res["reasons"] == [
        {"code": "SKU_LIMIT", "sku_id": "S1", "subject": "user", "limit": 2, "used": 2, "requested": 1, "degradable": False}
    ]
    assert (res["shadow"], res["warnings"], res["hold"], res["payable"], res["stripped"]) == ([], [], None, None, [])


# -- address identity, repeats and run-time changes -----------------------------------------------


async def test_addresses_without_a_district_but_in_different_towns_are_different(gw_factory: MakeGateway) -> None:
    # Some cities (Dongguan, Zhongshan) have towns directly under the city: no district level.
    gw = await gw_factory(product_config(sku={"receiver_address": 1}))
    humen = {"province": "Guangdong", "city": "Dongguan", "town": "Humen", "detail": "1 Main St"}
    changan = {"province": "Guangdong", "city": "Dongguan", "town": "Changan", "detail": "1 Main St"}
    await allowed(gw, order(item("S1", 1), user="u1", address=humen))
    await allowed(gw, order(item("S1", 1), user="u2", address=changan))
    await denied(
        gw,
        order(item("S1", 1), user="u3", address={**humen, "town": "HUMEN "}),
        sku_reason("receiver_address", limit=1, used=1, requested=1),
    )


async def test_repeated_check_counts_once(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(sku={"user": 2}))
    body = order(item("S1", 2))
    first = await gw.check(body)
    assert first["decision"] == "allow"
    assert await gw.check(body) == first
    assert await user_counters(gw) == ({"S1": 2}, {"P1": 2})


async def test_limits_changed_at_run_time_apply_to_the_next_check(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config())
    await allowed(gw, order(item("S1", 3), device="d1"))
    await gw.admin("PUT", "skus/S1", {"spu_id": "P1", "limits": {"device": 3}})
    await denied(gw, order(item("S1", 1), user="u2", device="d1"), sku_reason("device", limit=3, used=3, requested=1))
    await gw.admin("PUT", "spus/P1", {"limits": {"user": 4}})
    await denied(gw, order(item("S2", 2)), spu_reason("user", limit=4, used=3, requested=2))
    await allowed(gw, order(item("S2", 1)))


async def test_subjects_of_different_kinds_never_share_a_counter(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(product_config(sku={"user": 1, "device": 1, "receiver_name": 1}))
    await allowed(gw, order(item("S1", 1), user="x", device="y", name="z"))
    # "y" and "z" as a user, "x" and "z" as a device, "x" as a name: all unused so far.
    await allowed(gw, order(item("S1", 1), user="y", device="x", name="x"))
    await allowed(gw, order(item("S1", 1), user="z", device="z", name="y"))
    await denied(gw, order(item("S1", 1), user="w", device="y"), sku_reason("device", limit=1, used=1, requested=1))
