"""What the buyer is told (SPEC section 3).

A refusal states a limit ("This item is limited to X per customer") only when every one of its
reasons may be stated: ACTIVITY_SKU_LIMIT / ACTIVITY_USER_LIMIT of an activity with
`disclose_limits = true`, SKU_LIMIT and SPU_LIMIT; it names the limit of the first reason. Every
other refusal gets the vague line; a degrade gets the degrade line; an allow has no message.
Defaults follow `settings.locale`; each text can be overridden in `settings.messages`.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import T0, Gateway, MakeGateway, base_config, discount, item, order

pytestmark = pytest.mark.both_modes  # every test against the single node and cluster mode

EN = {
    "busy": "Too many orders right now, please try again later",
    "limit": "This item is limited to {limit} per customer",
    "degrade": "This promotion has ended. Continue without the discount?",
}
ZH = {
    "busy": "当前下单人数太多，请稍后再试",
    "limit": "当前商品限购数量为{limit}，您已超过限购数量",
    "degrade": "当前活动已结束，是否去除优惠继续下单",
}
KEYS = ("code", "activity_id", "sku_id", "spu_id", "rule_id", "subject", "limit", "used", "requested")


def limited(limit: int, texts: dict[str, str] = EN) -> str:
    return texts["limit"].replace("{limit}", str(limit))


def message_config(locale: str | None = "en", **sections: Any) -> dict[str, Any]:
    """S1 (limits user 2) and S2 (no limits) of SPU P1 (limits user 3), S3 (price fuse at cost) of P2;
    A1 (user_limit 1, sku_limits S2: 1) discloses its limits, A2 (user_limit 1) does not, A3 is over,
    A4 has a budget of 100."""
    doc = base_config(
        skus=[
            {"sku_id": "S1", "spu_id": "P1", "cost_price": 800, "original_price": 1000, "limits": {"user": 2}},
            {"sku_id": "S2", "spu_id": "P1", "cost_price": 800, "original_price": 1000},
            {
                "sku_id": "S3",
                "spu_id": "P2",
                "cost_price": 800,
                "original_price": 1000,
                "price_fuse": {"base": "cost", "ratio": "1.0"},
            },
        ],
        spus=[{"spu_id": "P1", "limits": {"user": 3}}],
        activities=[
            {"activity_id": "A1", "budget": 1_000_000, "user_limit": 1, "sku_limits": {"S2": 1}, "disclose_limits": True},
            {"activity_id": "A2", "budget": 1_000_000, "user_limit": 1},
            {"activity_id": "A3", "budget": 1_000_000, "ends_at": T0},
            {"activity_id": "A4", "budget": 100},
        ],
    )
    if locale is None:
        del doc["settings"]["locale"]
    else:
        doc["settings"]["locale"] = locale
    doc.update(sections)
    return doc


def located(res: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in KEYS} for r in res["reasons"]]


def why(code: str, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {k: None for k in KEYS}
    out.update(fields, code=code)
    return out


async def refused(gw: Gateway, body: dict[str, Any], *codes: str) -> dict[str, Any]:
    """Denied for reasons with exactly these codes (in any order), counting nothing."""
    before = (await gw.user(body["user_id"]))["counters"]
    res = await gw.check(body)
    assert res["decision"] == "deny", res
    assert sorted(r["code"] for r in res["reasons"]) == sorted(codes)
    assert res["hold"] is None and res["payable"] is None and res["stripped"] == []
    assert (await gw.user(body["user_id"]))["counters"] == before
    out: dict[str, Any] = res
    return out


async def allowed(gw: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    res = await gw.check(body)
    assert res["decision"] == "allow", res
    assert res["message"] is None
    out: dict[str, Any] = res
    return out


# -- stated limits ---------------------------------------------------------------------------------


async def test_sku_limit_states_the_limit(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config())
    res = await refused(gw, order(item("S1", 3)), "SKU_LIMIT")
    assert located(res) == [why("SKU_LIMIT", sku_id="S1", subject="user", limit=2, used=0, requested=3)]
    assert res["message"] == "This item is limited to 2 per customer"


async def test_spu_limit_states_the_limit(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config())
    await allowed(gw, order(item("S2", 2)))
    res = await refused(gw, order(item("S2", 2)), "SPU_LIMIT")
    assert located(res) == [why("SPU_LIMIT", spu_id="P1", subject="user", limit=3, used=2, requested=2)]
    assert res["message"] == limited(3)


async def test_several_statable_limits_name_the_first_reasons_limit(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config())
    res = await refused(gw, order(item("S1", 4)), "SKU_LIMIT", "SPU_LIMIT")
    assert sorted(map(repr, located(res))) == sorted(
        map(
            repr,
            [
                why("SKU_LIMIT", sku_id="S1", subject="user", limit=2, used=0, requested=4),
                why("SPU_LIMIT", spu_id="P1", subject="user", limit=3, used=0, requested=4),
            ],
        )
    )
    assert res["message"] == limited(res["reasons"][0]["limit"])


async def test_disclosed_activity_user_limit_states_the_limit(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config())
    await allowed(gw, order(item("S1", 1, 1000, discount(10, "A1"))))
    res = await refused(gw, order(item("S1", 1, 1000, discount(10, "A1"))), "ACTIVITY_USER_LIMIT")
    assert located(res) == [why("ACTIVITY_USER_LIMIT", activity_id="A1", subject="user", limit=1, used=1, requested=1)]
    assert res["message"] == limited(1)


async def test_disclosed_activity_sku_limit_states_the_limit(gw_factory: MakeGateway) -> None:
    cfg = message_config()
    cfg["activities"][0]["user_limit"] = 10
    cfg["activities"][0]["sku_limits"] = {"S2": 4}
    gw = await gw_factory(cfg)
    res = await refused(gw, order(item("S2", 5, 1000, discount(10, "A1"))), "ACTIVITY_SKU_LIMIT", "SPU_LIMIT")
    assert sorted(r["code"] for r in res["reasons"]) == ["ACTIVITY_SKU_LIMIT", "SPU_LIMIT"]
    sku_reason = next(r for r in res["reasons"] if r["code"] == "ACTIVITY_SKU_LIMIT")
    assert {k: sku_reason.get(k) for k in KEYS} == why(
        "ACTIVITY_SKU_LIMIT", activity_id="A1", sku_id="S2", subject="user", limit=4, used=0, requested=5
    )
    # Both may be stated: the first reason's limit is named.
    assert res["message"] == limited(res["reasons"][0]["limit"])


async def test_disclosed_activity_limit_with_a_product_limit_names_the_first(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config())
    res = await refused(gw, order(item("S1", 3, 1000, discount(10, "A1"))), "ACTIVITY_USER_LIMIT", "SKU_LIMIT")
    limits = {r["code"]: r["limit"] for r in res["reasons"]}
    assert limits == {"ACTIVITY_USER_LIMIT": 1, "SKU_LIMIT": 2}
    assert res["message"] == limited(res["reasons"][0]["limit"])


# -- vague refusals --------------------------------------------------------------------------------


async def test_undisclosed_activity_limit_is_vague(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config())
    res = await refused(gw, order(item("S2", 2, 1000, discount(10, "A2"))), "ACTIVITY_USER_LIMIT")
    assert located(res) == [why("ACTIVITY_USER_LIMIT", activity_id="A2", subject="user", limit=1, used=0, requested=2)]
    assert res["message"] == EN["busy"]


async def test_disclosed_and_undisclosed_activity_limits_together_are_vague(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config())
    body = order(item("S2", 2, 1000, discount(10, "A1"), discount(10, "A2", ident="A2")))
    res = await refused(gw, body, "ACTIVITY_USER_LIMIT", "ACTIVITY_SKU_LIMIT", "ACTIVITY_USER_LIMIT")
    assert sorted(r["activity_id"] for r in res["reasons"]) == ["A1", "A1", "A2"]
    assert res["message"] == EN["busy"]


MIXED = {
    "blacklisted": (order(item("S1", 3), user="u-bad"), ["BLACKLISTED", "SKU_LIMIT"]),
    "not-active": (order(item("S1", 3, 1000, discount(10, "A3"))), ["ACTIVITY_NOT_ACTIVE", "SKU_LIMIT"]),
    "budget": (order(item("S1", 3, 1000, discount(101, "A4"))), ["ACTIVITY_BUDGET_EXHAUSTED", "SKU_LIMIT"]),
    "price-fuse": (
        order(item("S1", 3), item("S3", 1, 1000, discount(300, None, ident="SHOP"))),
        ["PRICE_FUSE", "SKU_LIMIT"],
    ),
    "risk-rule": (order(item("S1", 3), device="d1"), ["RISK_RULE", "SKU_LIMIT"]),
    "undisclosed": (order(item("S1", 3, 1000, discount(10, "A2"))), ["ACTIVITY_USER_LIMIT", "SKU_LIMIT"]),
}


@pytest.mark.parametrize("case", list(MIXED))
async def test_a_stated_limit_mixed_with_any_other_reason_is_vague(gw_factory: MakeGateway, case: str) -> None:
    rule = {"rule_id": "R1", "subject": "device", "scope": {}, "window": "1h", "max_quantity": 2}
    gw = await gw_factory(message_config(lists={"blacklist": {"user": ["u-bad"]}}, rules=[rule]))
    body, codes = MIXED[case]
    res = await refused(gw, body, *codes)
    assert any(r["code"] == "SKU_LIMIT" and r["limit"] == 2 for r in res["reasons"])
    assert res["message"] == EN["busy"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (order(item("S1", 1), user="u-bad"), "BLACKLISTED"),
        (order(item("S2", 1, 1000, discount(10, "A3"))), "ACTIVITY_NOT_ACTIVE"),
        (order(item("S3", 1, 1000, discount(201, None, ident="SHOP"))), "PRICE_FUSE"),
        (order(item("S2", 3), device="d1"), "RISK_RULE"),
    ],
    ids=["blacklisted", "not-active", "price-fuse", "risk-rule"],
)
@pytest.mark.parametrize("locale", ["en", "zh"])
async def test_other_refusals_are_vague(gw_factory: MakeGateway, body: dict[str, Any], code: str, locale: str) -> None:
    rule = {"rule_id": "R1", "subject": "device", "scope": {}, "window": "1h", "max_quantity": 2}
    gw = await gw_factory(message_config(locale, lists={"blacklist": {"user": ["u-bad"]}}, rules=[rule]))
    body = {**body, "order_id": f"{body['order_id']}-{locale}"}
    res = await refused(gw, body, code)
    assert res["message"] == (EN if locale == "en" else ZH)["busy"]


async def test_budget_refusal_is_vague(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config())
    res = await refused(gw, order(item("S2", 1, 1000, discount(101, "A4"))), "ACTIVITY_BUDGET_EXHAUSTED")
    assert located(res) == [why("ACTIVITY_BUDGET_EXHAUSTED", activity_id="A4", limit=100, used=0, requested=101)]
    assert res["message"] == EN["busy"]


async def test_refusals_of_a_disclosing_activity_that_are_not_limits_are_vague(gw_factory: MakeGateway) -> None:
    cfg = message_config()
    cfg["activities"][0].update(budget=5, ends_at=T0 + 100)
    gw = await gw_factory(cfg)
    res = await refused(gw, order(item("S1", 1, 1000, discount(10, "A1"))), "ACTIVITY_BUDGET_EXHAUSTED")
    assert located(res) == [why("ACTIVITY_BUDGET_EXHAUSTED", activity_id="A1", limit=5, used=0, requested=10)]
    assert res["message"] == EN["busy"]
    await gw.advance(100)
    res = await refused(gw, order(item("S1", 1, 1000, discount(5, "A1"))), "ACTIVITY_NOT_ACTIVE")
    assert res["message"] == EN["busy"]


async def test_a_shadow_hit_does_not_hide_a_stated_limit(gw_factory: MakeGateway) -> None:
    rule = {"rule_id": "R1", "subject": "user", "scope": {}, "window": "1h", "max_quantity": 0, "mode": "shadow"}
    gw = await gw_factory(message_config(rules=[rule]))
    res = await refused(gw, order(item("S1", 3)), "SKU_LIMIT")
    assert [r["code"] for r in res["shadow"]] == ["RISK_RULE"]
    assert res["message"] == limited(2)


# -- degrade and allow -----------------------------------------------------------------------------


async def test_degrade_gets_the_degrade_line(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config())
    res = await gw.check(order(item("S2", 1, 1000, discount(10, "A3")), on_refusal="degrade"))
    assert res["decision"] == "degrade", res
    assert located(res) == [why("ACTIVITY_NOT_ACTIVE", activity_id="A3")]
    assert res["message"] == EN["degrade"]


async def test_degrade_that_fails_its_recheck_is_vague(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config())
    res = await gw.check(order(item("S3", 1, 700, discount(10, "A3")), on_refusal="degrade"))
    assert res["decision"] == "deny", res
    assert sorted(r["code"] for r in res["reasons"]) == ["ACTIVITY_NOT_ACTIVE", "PRICE_FUSE"]
    assert res["message"] == EN["busy"]


async def test_allow_has_no_message(gw_factory: MakeGateway) -> None:
    rule = {"rule_id": "R1", "subject": "user", "scope": {}, "window": "1h", "max_quantity": 0, "mode": "shadow"}
    gw = await gw_factory(message_config(rules=[rule]))
    res = await allowed(gw, order(item("S1", 1)))
    assert res["reasons"] == []
    # A shadow hit refuses nothing, so it says nothing to the buyer either.
    assert [r["code"] for r in res["shadow"]] == ["RISK_RULE"]


async def test_whitelisted_user_past_a_limit_has_no_message(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config(lists={"whitelist": {"user": ["staff-1"]}}))
    res = await allowed(gw, order(item("S1", 3), user="staff-1"))
    assert [(r["code"], r.get("subject")) for r in res["reasons"]] == [("WHITELISTED", "user")]
    assert (await gw.user("staff-1"))["counters"]["sku"] == {"S1": 3}


# -- locales ---------------------------------------------------------------------------------------


async def test_chinese_messages(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config("zh"))
    assert (await refused(gw, order(item("S1", 3)), "SKU_LIMIT"))["message"] == "当前商品限购数量为2，您已超过限购数量"
    vague = await refused(gw, order(item("S2", 2, 1000, discount(10, "A2"))), "ACTIVITY_USER_LIMIT")
    assert vague["message"] == "当前下单人数太多，请稍后再试"
    degraded = await gw.check(order(item("S2", 1, 1000, discount(10, "A3")), on_refusal="degrade"))
    assert degraded["decision"] == "degrade"
    assert degraded["message"] == "当前活动已结束，是否去除优惠继续下单"


async def test_default_locale_is_chinese(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config(None))
    assert (await gw.admin("GET", "config"))["settings"]["locale"] == "zh"
    assert (await refused(gw, order(item("S1", 3)), "SKU_LIMIT"))["message"] == limited(2, ZH)
    vague = await refused(gw, order(item("S2", 2, 1000, discount(10, "A2"))), "ACTIVITY_USER_LIMIT")
    assert vague["message"] == ZH["busy"]


# -- overrides -------------------------------------------------------------------------------------

CUSTOM = {
    "busy": "Busy, busy.",
    "limit": "Only {limit} each, sorry ({limit} max)",
    "degrade": "Promo over - pay full price?",
}


@pytest.mark.parametrize("locale", ["en", "zh"])
async def test_messages_overridden_in_the_configuration(gw_factory: MakeGateway, locale: str) -> None:
    cfg = message_config(locale)
    cfg["settings"]["messages"] = CUSTOM
    gw = await gw_factory(cfg)
    assert (await refused(gw, order(item("S1", 3)), "SKU_LIMIT"))["message"] == "Only 2 each, sorry (2 max)"
    vague = await refused(gw, order(item("S2", 2, 1000, discount(10, "A2"))), "ACTIVITY_USER_LIMIT")
    assert vague["message"] == "Busy, busy."
    degraded = await gw.check(order(item("S2", 1, 1000, discount(10, "A3")), on_refusal="degrade"))
    assert degraded["decision"] == "degrade"
    assert degraded["message"] == "Promo over - pay full price?"
    assert (await allowed(gw, order(item("S2", 1))))["message"] is None


async def test_one_override_leaves_the_other_defaults(gw_factory: MakeGateway) -> None:
    cfg = message_config("en")
    cfg["settings"]["messages"] = {"limit": "Max {limit}."}
    gw = await gw_factory(cfg)
    assert (await refused(gw, order(item("S1", 3)), "SKU_LIMIT"))["message"] == "Max 2."
    vague = await refused(gw, order(item("S2", 2, 1000, discount(10, "A2"))), "ACTIVITY_USER_LIMIT")
    assert vague["message"] == EN["busy"]
    degraded = await gw.check(order(item("S2", 1, 1000, discount(10, "A3")), on_refusal="degrade"))
    assert degraded["message"] == EN["degrade"]


async def test_limit_override_without_a_placeholder_is_used_as_is(gw_factory: MakeGateway) -> None:
    cfg = message_config("en")
    cfg["settings"]["messages"] = {"limit": "You have reached the limit."}
    gw = await gw_factory(cfg)
    assert (await refused(gw, order(item("S1", 3)), "SKU_LIMIT"))["message"] == "You have reached the limit."


async def test_messages_overridden_at_run_time(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config("en"))
    first = order(item("S1", 3))
    assert (await refused(gw, first, "SKU_LIMIT"))["message"] == limited(2)

    settings = await gw.admin("PATCH", "settings", {"messages": CUSTOM})
    assert {k: settings["messages"][k] for k in CUSTOM} == CUSTOM
    assert (await gw.admin("GET", "config"))["settings"]["messages"] == settings["messages"]
    assert (await refused(gw, order(item("S1", 3)), "SKU_LIMIT"))["message"] == "Only 2 each, sorry (2 max)"
    vague = await refused(gw, order(item("S2", 2, 1000, discount(10, "A2"))), "ACTIVITY_USER_LIMIT")
    assert vague["message"] == "Busy, busy."
    degraded = await gw.check(order(item("S2", 1, 1000, discount(10, "A3")), user="u9", on_refusal="degrade"))
    assert degraded["decision"] == "degrade"
    assert degraded["message"] == "Promo over - pay full price?"
    # A repeated check returns the first answer, message included.
    assert (await gw.check(first))["message"] == limited(2)

    # Switching the locale changes the defaults; the overrides still stand until cleared.
    await gw.admin("PATCH", "settings", {"locale": "zh"})
    assert (await refused(gw, order(item("S1", 3)), "SKU_LIMIT"))["message"] == "Only 2 each, sorry (2 max)"
    await gw.admin("PATCH", "settings", {"messages": {"busy": None, "limit": None, "degrade": None}})
    assert (await refused(gw, order(item("S1", 3)), "SKU_LIMIT"))["message"] == limited(2, ZH)
    vague = await refused(gw, order(item("S2", 2, 1000, discount(10, "A2")), user="u3"), "ACTIVITY_USER_LIMIT")
    assert vague["message"] == ZH["busy"]


async def test_patching_one_message_keeps_the_other_overrides(gw_factory: MakeGateway) -> None:
    # SPEC is silent on how PATCH treats the nested `messages` table; an operator changing one text
    # expects the others to stay (JSON merge-patch semantics, RFC 7386).
    gw = await gw_factory(message_config("en"))
    await gw.admin("PATCH", "settings", {"messages": {"limit": "Max {limit}."}})
    settings = await gw.admin("PATCH", "settings", {"messages": {"busy": "Busy, busy."}})
    assert settings["messages"].get("limit") == "Max {limit}." and settings["messages"].get("busy") == "Busy, busy."
    assert (await refused(gw, order(item("S1", 3)), "SKU_LIMIT"))["message"] == "Max 2."
    vague = await refused(gw, order(item("S2", 2, 1000, discount(10, "A2"))), "ACTIVITY_USER_LIMIT")
    assert vague["message"] == "Busy, busy."


async def test_invalid_message_override_is_refused_and_changes_nothing(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(message_config("en"))
    before = (await gw.admin("GET", "config"))["settings"]
    for patch in ({"messages": {"busy": 5}}, {"messages": {"shout": "hey"}}, {"locale": "fr"}):
        err = await gw.admin("PATCH", "settings", patch, status=400)
        assert set(err) == {"error"} and isinstance(err["error"]["code"], str)
    assert (await gw.admin("GET", "config"))["settings"] == before
    assert (await refused(gw, order(item("S1", 3)), "SKU_LIMIT"))["message"] == limited(2)
