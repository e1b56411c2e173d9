"""Black- and whitelists (SPEC sections 2, 3 and 5).

BLACKLISTED (never degradable) refuses an order whose user, device, receiver phone or receiver
address is listed; an address entry is a region path prefix (`province/city/district/town`)
matched part by part, with case and white space folded, and a whitelisted address is exempt from
address blacklists. A whitelisted user is always allowed with reason WHITELISTED, and the order
still counts; the checks it would have failed are reported as warnings. Whitelisted discount ids
are never counted by the price fuse. Lists change at run time through
`PUT|DELETE /v1/admin/lists/{blacklist|whitelist}/{kind}/{value}`, effective at the next check.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.conftest import ADDRESS, Gateway, MakeGateway, base_config, discount, item, order

pytestmark = pytest.mark.both_modes  # every test against the single node and cluster mode

VAGUE = "Too many orders right now, please try again later"
DEGRADE = "This promotion has ended. Continue without the discount?"
HOLD_TTL = 15 * 60
KEYS = ("code", "subject", "value", "auto", "degradable")
EMPTY_COUNTERS: dict[str, dict[str, int]] = {"sku": {}, "spu": {}, "activity": {}, "activity_sku": {}, "coupon": {}}


def lists_config(
    black: dict[str, list[str]] | None = None, white: dict[str, list[str]] | None = None, **sections: Any
) -> dict[str, Any]:
    """S1 with a price fuse at cost (800); S2 limited to 1 per user and 2 per device; a rule
    allowing 2 units of S2 per user per hour; activity A1 with a budget of 1000."""
    return base_config(
        skus=[
            {
                "sku_id": "S1",
                "spu_id": "P1",
                "category": "phone",
                "cost_price": 800,
                "original_price": 1000,
                "price_fuse": {"base": "cost", "ratio": "1.0"},
            },
            {"sku_id": "S2", "spu_id": "P2", "cost_price": 800, "original_price": 1000, "limits": {"user": 1, "device": 2}},
        ],
        activities=[{"activity_id": "A1", "budget": 1000}],
        rules=[{"rule_id": "R1", "subject": "user", "scope": {"sku_id": "S2"}, "window": "1h", "max_quantity": 2}],
        lists={"blacklist": black or {}, "whitelist": white or {}},
        **sections,
    )


def black(subject: str, value: str) -> dict[str, Any]:
    return {"code": "BLACKLISTED", "subject": subject, "value": value, "auto": None, "degradable": False}


def located(reasons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in KEYS} for r in reasons]


async def allowed(gw: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    res: dict[str, Any] = await gw.check(body)
    assert res["decision"] == "allow", res
    assert res["reasons"] == [] and res["message"] is None
    assert res["hold"] == {"expires_at": gw.clock.now() + HOLD_TTL}
    return res


async def refused(gw: Gateway, body: dict[str, Any], *reasons: dict[str, Any]) -> dict[str, Any]:
    """Denied for exactly `reasons`, with the vague message, holding and counting nothing."""
    before = await gw.user(body["user_id"])
    res: dict[str, Any] = await gw.check(body)
    assert res["decision"] == "deny", res
    assert located(res["reasons"]) == list(reasons)
    assert res["message"] == VAGUE
    assert res["hold"] is None and res["payable"] is None and res["stripped"] == []
    assert (await gw.get(body["order_id"]))["state"] == "denied"
    after = await gw.user(body["user_id"])
    assert (after["counters"], after["windows"]) == (before["counters"], before["windows"])
    return res


def address_path(value: str) -> str:
    """An address list value as it appears in an admin path: every '/' URL-encoded."""
    return quote(value, safe="")


async def lists(gw: Gateway) -> dict[str, Any]:
    doc: dict[str, Any] = await gw.admin("GET", "lists")
    return doc


# -- BLACKLISTED per subject ----------------------------------------------------------------

LISTED = [
    # list kind, listed value, the order's fields naming it, the reason's subject and value
    pytest.param("user", "u-bad", {"user": "u-bad"}, "user", "u-bad", id="user"),
    pytest.param("device", "d-bad", {"device": "d-bad"}, "device", "d-bad", id="device"),
    pytest.param("phone", "13800000000", {"phone": "13800000000"}, "phone", "13800000000", id="phone"),
    pytest.param(
        "address", "Zhejiang/Hangzhou/Xihu", {"address": ADDRESS}, "address", "Zhejiang/Hangzhou/Xihu", id="address"
    ),
]


@pytest.mark.parametrize(("kind", "value", "fields", "subject", "shown"), LISTED)
async def test_blacklisted_subject_is_refused_and_counts_nothing(
    gw_factory: MakeGateway, kind: str, value: str, fields: dict[str, Any], subject: str, shown: str
) -> None:
    gw = await gw_factory(lists_config(black={kind: [value]}))
    body = {"user": "u1", **fields}
    await refused(gw, order(item("S2", 1), **body), black(subject, shown))
    # Not degradable: degrade mode refuses it just the same, and strips nothing.
    res = await refused(
        gw, order(item("S2", 1, 1000, discount(100)), on_refusal="degrade", **body), black(subject, shown)
    )
    assert res["reasons"][0]["degradable"] is False
    assert (await gw.user(body["user"]))["counters"] == EMPTY_COUNTERS
    assert (await gw.activity("A1"))["held"] == 0
    # The same order without the listed subject is allowed.
    await allowed(gw, order(item("S2", 1), user="u2"))


async def test_listed_phone_matches_however_it_is_written(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config(black={"phone": ["138-0000-0000"]}))
    for written in ("13800000000", "138 0000 0000", "(138) 0000-0000", "+86 138 0000 0000", "0086-13800000000", "１３８００００００００"):
        res = await gw.check(order(user="u2", phone=written))
        assert res["decision"] == "deny", res
        assert [(r["code"], r["subject"], r["degradable"]) for r in res["reasons"]] == [("BLACKLISTED", "phone", False)]
    await allowed(gw, order(user="u2", phone="13800000001"))
    await allowed(gw, order(user="u2", phone="+1 138 0000 0000"))  # another country's number


async def test_every_blacklist_hit_is_reported_with_the_other_reasons(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(
        lists_config(
            black={
                "user": ["u-bad"],
                "device": ["d-bad"],
                "phone": ["13800000000"],
                "address": ["Zhejiang/Hangzhou"],
            }
        )
    )
    res = await gw.check(
        order(item("S2", 2), user="u-bad", device="d-bad", phone="13800000000", address=ADDRESS)
    )
    assert res["decision"] == "deny"
    assert located(res["reasons"]) == [
        black("user", "u-bad"),
        black("device", "d-bad"),
        black("phone", "13800000000"),
        black("address", "Zhejiang/Hangzhou"),
        {"code": "SKU_LIMIT", "subject": "user", "value": None, "auto": None, "degradable": False},
    ]
    assert res["message"] == VAGUE  # a blacklisting is never stated to the buyer
    assert (await gw.user("u-bad"))["counters"] == EMPTY_COUNTERS


async def test_blacklisted_user_with_a_degradable_reason_is_denied_in_degrade_mode(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config(black={"user": ["u-bad"]}))
    # 300 off S1 pays 700, under the cost fuse of 800: PRICE_FUSE (degradable) plus BLACKLISTED.
    res = await gw.check(order(item("S1", 1, 1000, discount(300)), user="u-bad", on_refusal="degrade"))
    assert res["decision"] == "deny"
    assert sorted(r["code"] for r in res["reasons"]) == ["BLACKLISTED", "PRICE_FUSE"]
    assert res["stripped"] == [] and res["hold"] is None
    assert (await gw.activity("A1"))["held"] == 0


# -- address prefixes -------------------------------------------------------------------------

DONGGUAN = {"province": "Guangdong", "city": "Dongguan", "town": "Humen", "detail": "1 Main St"}

PREFIXES = [
    # listed region path, the receiver address, refused?
    pytest.param("Zhejiang", ADDRESS, True, id="province"),
    pytest.param("Zhejiang/Hangzhou", ADDRESS, True, id="city"),
    pytest.param("Zhejiang/Hangzhou/Xihu", ADDRESS, True, id="district"),
    pytest.param("Zhejiang/Hangzhou/Xihu/Lingyin", ADDRESS, True, id="town"),
    pytest.param("zhejiang /  HANGZHOU ", ADDRESS, True, id="entry-folded"),
    pytest.param(
        "Zhejiang/Hangzhou",
        {"province": " ZHEJIANG", "city": "hangzhou  ", "district": "Binjiang", "town": "Changhe", "detail": "2"},
        True,
        id="address-folded",
    ),
    pytest.param("Zhejiang/Hangzhoux", ADDRESS, False, id="longer-part"),
    pytest.param("Zhejiang/Hang", ADDRESS, False, id="shorter-part"),
    pytest.param("Zhejiang/Hangzhou/Binjiang", ADDRESS, False, id="sibling-district"),
    pytest.param("Hangzhou", ADDRESS, False, id="not-from-the-province"),
    pytest.param("Jiangsu/Hangzhou", ADDRESS, False, id="other-province"),
    pytest.param(
        "Zhejiang/Hangzhou/Xihu", {"province": "Zhejiang", "city": "Hangzhou", "detail": "3"}, False, id="address-shorter"
    ),
    pytest.param("Guangdong/Dongguan", DONGGUAN, True, id="town-without-district-city"),
    pytest.param("Guangdong/Dongguan//Humen", DONGGUAN, True, id="town-without-district-town"),
    pytest.param("Guangdong/Dongguan//Changan", DONGGUAN, False, id="town-without-district-other"),
]


@pytest.mark.parametrize(("entry", "address", "refused_"), PREFIXES)
async def test_address_entry_is_a_region_prefix_matched_part_by_part(
    gw_factory: MakeGateway, entry: str, address: dict[str, str], refused_: bool
) -> None:
    gw = await gw_factory(lists_config(black={"address": [entry]}))
    body = order(address=address)
    if refused_:
        await refused(gw, body, black("address", entry))
    else:
        await allowed(gw, body)


async def test_whitelisted_address_inside_a_blacklisted_region_passes(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(
        lists_config(black={"address": ["Zhejiang/Hangzhou"]}, white={"address": ["Zhejiang/Hangzhou/Xihu/Lingyin"]})
    )
    await allowed(gw, order(address=ADDRESS))
    await allowed(gw, order(address={**ADDRESS, "town": " LINGYIN ", "detail": "9 Temple Rd"}))
    await refused(gw, order(address={**ADDRESS, "town": "Beishan"}), black("address", "Zhejiang/Hangzhou"))
    await refused(gw, order(address={**ADDRESS, "district": "Binjiang"}), black("address", "Zhejiang/Hangzhou"))


async def test_whitelisted_address_does_not_exempt_other_blacklists(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(
        lists_config(
            black={"address": ["Zhejiang"], "user": ["u-bad"], "phone": ["13800000000"]},
            white={"address": ["Zhejiang/Hangzhou"]},
        )
    )
    await refused(gw, order(user="u-bad", address=ADDRESS), black("user", "u-bad"))
    await refused(gw, order(phone="13800000000", address=ADDRESS), black("phone", "13800000000"))
    await allowed(gw, order(address=ADDRESS))


# -- whitelisted users ----------------------------------------------------------------------------


async def test_whitelisted_user_is_allowed_past_limits_and_still_counted(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config(white={"user": ["staff-1"]}))
    res = await gw.check(order(item("S2", 3), user="staff-1"))
    assert res["decision"] == "allow", res
    assert located(res["reasons"]) == [
        {"code": "WHITELISTED", "subject": "user", "value": "staff-1", "auto": None, "degradable": False}
    ]
    # What the user passed is reported to the operator, not applied.
    assert [w["code"] for w in res["warnings"]] == ["SKU_LIMIT", "RISK_RULE"]
    assert res["message"] is None
    assert res["hold"] == {"expires_at": gw.clock.now() + HOLD_TTL} and res["payable"] == 3000
    view = await gw.user("staff-1")
    assert view["whitelisted"] is True and view["blacklisted"] is False
    assert view["counters"]["sku"] == {"S2": 3} and view["counters"]["spu"] == {"P2": 3}
    assert view["windows"] == [{"scope": {"sku_id": "S2"}, "window": 3600, "quantity": 3}]
    again = await gw.check(order(item("S2", 1), user="staff-1"))
    assert again["decision"] == "allow" and [r["code"] for r in again["reasons"]] == ["WHITELISTED"]
    assert (await gw.user("staff-1"))["counters"]["sku"] == {"S2": 4}


async def test_whitelisted_user_on_the_blacklist_is_allowed(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config(black={"user": ["staff-1"]}, white={"user": ["staff-1"]}))
    res = await gw.check(order(user="staff-1"))
    assert res["decision"] == "allow", res
    assert [r["code"] for r in res["reasons"]] == ["WHITELISTED"]
    assert [w["code"] for w in res["warnings"]] == ["BLACKLISTED"]
    view = await gw.user("staff-1")
    assert view["whitelisted"] is True and view["listed"] is True
    assert view["counters"]["sku"] == {"S1": 1}


async def test_whitelisted_user_order_counts_for_the_shared_subjects(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config(white={"user": ["staff-1"]}))
    res = await gw.check(order(item("S2", 2), user="staff-1", device="d1"))
    assert res["decision"] == "allow"
    follow = await gw.check(order(item("S2", 1), user="u2", device="d1"))
    assert follow["decision"] == "deny"
    assert [(r["code"], r["subject"], r["limit"], r["used"], r["requested"]) for r in follow["reasons"]] == [
        ("SKU_LIMIT", "device", 2, 2, 1)
    ]


async def test_whitelisted_user_hold_ends_like_any_other(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config(white={"user": ["staff-1"]}))
    body = order(item("S2", 2), user="staff-1")
    assert (await gw.check(body))["decision"] == "allow"
    await gw.advance(HOLD_TTL)
    assert (await gw.get(body["order_id"]))["state"] == "expired"
    view = await gw.user("staff-1")
    assert view["counters"] == EMPTY_COUNTERS and view["windows"] == []


# -- whitelisted discount ids ---------------------------------------------------------------------


async def test_whitelisted_discount_is_not_counted_by_the_price_fuse(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config(white={"discount": ["618-SUPER"]}))
    # 1000 - 300 = 700 < 800 would fuse, but the whitelisted discount does not count.
    res = await allowed(gw, order(item("S1", 1, 1000, discount(300, None, ident="618-SUPER"))))
    assert res["payable"] == 700
    res = await gw.check(order(item("S1", 1, 1000, discount(300, None, ident="OTHER"))))
    assert res["decision"] == "deny"
    assert [(r["code"], r["sku_id"], r["degradable"]) for r in res["reasons"]] == [("PRICE_FUSE", "S1", True)]
    # Listing the other id at run time takes effect at the next check.
    await gw.admin("PUT", "lists/whitelist/discount/OTHER")
    res = await allowed(gw, order(item("S1", 1, 1000, discount(300, None, ident="OTHER"))))
    assert res["payable"] == 700
    await gw.admin("DELETE", "lists/whitelist/discount/OTHER")
    assert (await gw.check(order(item("S1", 1, 1000, discount(300, None, ident="OTHER")))))["decision"] == "deny"


async def test_whitelisted_discount_with_an_activity_still_spends_its_budget(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config(white={"discount": ["618-SUPER"]}))
    res = await allowed(gw, order(item("S1", 1, 1000, discount(400, "A1", ident="618-SUPER"))))
    assert res["payable"] == 600
    act = await gw.activity("A1")
    assert (act["held"], act["spent"]) == (400, 0)


async def test_degrade_strips_only_the_counted_discounts_of_a_fused_item(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config(white={"discount": ["618-SUPER"]}))
    # Counted: OTHER (250) only, so paid = 750 < 800. Only OTHER is stripped.
    body = order(
        item("S1", 1, 1000, discount(300, None, ident="618-SUPER"), discount(250, None, ident="OTHER")),
        on_refusal="degrade",
    )
    res = await gw.check(body)
    assert res["decision"] == "degrade", res
    assert [(r["code"], r["sku_id"]) for r in res["reasons"]] == [("PRICE_FUSE", "S1")]
    assert res["stripped"] == ["OTHER"]
    assert res["payable"] == 700
    assert res["message"] == DEGRADE


# -- the admin API ----------------------------------------------------------------------------------


async def test_blacklisting_a_user_at_run_time_applies_at_the_next_check(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config())
    await allowed(gw, order(user="u1"))
    put = await gw.admin("PUT", "lists/blacklist/user/u1")
    assert put == {"list": "blacklist", "kind": "user", "value": "u1", "present": True}
    assert (await lists(gw))["blacklist"]["user"] == ["u1"]
    view = await gw.user("u1")
    assert (view["blacklisted"], view["listed"], view["auto"]) == (True, True, False)
    await refused(gw, order(user="u1"), black("user", "u1"))
    deleted = await gw.admin("DELETE", "lists/blacklist/user/u1")
    assert deleted == {"list": "blacklist", "kind": "user", "value": "u1", "present": False}
    assert (await lists(gw))["blacklist"].get("user", []) == []
    await allowed(gw, order(user="u1"))
    assert (await gw.user("u1"))["counters"]["sku"] == {"S1": 2}


@pytest.mark.parametrize(
    ("kind", "value", "fields", "subject"),
    [
        pytest.param("device", "d-9", {"device": "d-9"}, "device", id="device"),
        pytest.param("phone", "13900000009", {"phone": "139-0000-0009"}, "phone", id="phone"),
    ],
)
async def test_blacklisting_a_device_or_phone_at_run_time(
    gw_factory: MakeGateway, kind: str, value: str, fields: dict[str, Any], subject: str
) -> None:
    gw = await gw_factory(lists_config())
    await allowed(gw, order(**fields))
    await gw.admin("PUT", f"lists/blacklist/{kind}/{value}")
    assert (await lists(gw))["blacklist"][kind] == [value]
    await refused(gw, order(user="u2", **fields), black(subject, value))
    await gw.admin("DELETE", f"lists/blacklist/{kind}/{value}")
    await allowed(gw, order(user="u2", **fields))


async def test_address_entries_through_url_encoded_paths(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config())
    put = await gw.admin("PUT", "lists/blacklist/address/Zhejiang%2FHangzhou")
    assert put["value"] == "Zhejiang/Hangzhou"
    assert (await lists(gw))["blacklist"]["address"] == ["Zhejiang/Hangzhou"]
    await refused(gw, order(address=ADDRESS), black("address", "Zhejiang/Hangzhou"))
    await gw.admin("PUT", "lists/whitelist/address/" + address_path("Zhejiang/Hangzhou/Xihu/Lingyin"))
    assert (await lists(gw))["whitelist"]["address"] == ["Zhejiang/Hangzhou/Xihu/Lingyin"]
    await allowed(gw, order(address=ADDRESS))
    await refused(gw, order(address={**ADDRESS, "town": "Beishan"}), black("address", "Zhejiang/Hangzhou"))
    # An entry is removed by any spelling that folds to it.
    await gw.admin("DELETE", "lists/blacklist/address/" + address_path(" zhejiang/HANGZHOU "))
    assert (await lists(gw))["blacklist"].get("address", []) == []
    await allowed(gw, order(address={**ADDRESS, "town": "Beishan"}))


async def test_folded_address_entry_added_at_run_time_matches(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config())
    await gw.admin("PUT", "lists/blacklist/address/" + address_path("ZHEJIANG /  hangzhou"))
    res = await gw.check(order(address=ADDRESS))
    assert res["decision"] == "deny"
    assert [(r["code"], r["subject"]) for r in res["reasons"]] == [("BLACKLISTED", "address")]
    await allowed(gw, order(address={**ADDRESS, "city": "Hangzhoux"}))


async def test_get_lists_shows_both_lists_as_written(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(
        lists_config(
            black={"user": ["u-bad"], "phone": ["138-0000-0000"], "address": ["Zhejiang/Hangzhou/Xihu"]},
            white={"user": ["staff-1"], "discount": ["618-SUPER"]},
        )
    )
    await gw.admin("PUT", "lists/blacklist/device/d-bad")
    await gw.admin("PUT", "lists/blacklist/device/d-bad")  # adding twice keeps one entry
    doc = await lists(gw)
    assert set(doc) == {"blacklist", "whitelist"}
    black_doc, white_doc = doc["blacklist"], doc["whitelist"]
    assert black_doc["user"] == ["u-bad"] and black_doc["device"] == ["d-bad"]
    assert black_doc["phone"] == ["138-0000-0000"] and black_doc["address"] == ["Zhejiang/Hangzhou/Xihu"]
    assert white_doc["user"] == ["staff-1"] and white_doc["discount"] == ["618-SUPER"]
    await gw.admin("DELETE", "lists/blacklist/device/d-bad")
    assert (await lists(gw))["blacklist"].get("device", []) == []
    config_lists = (await gw.admin("GET", "config"))["lists"]
    assert config_lists["blacklist"]["user"] == ["u-bad"] and config_lists["whitelist"]["user"] == ["staff-1"]


async def test_whitelisting_a_user_at_run_time_applies_at_the_next_check(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config())
    await allowed(gw, order(item("S2", 1)))
    res = await gw.check(order(item("S2", 1)))
    assert res["decision"] == "deny" and [r["code"] for r in res["reasons"]] == ["SKU_LIMIT"]
    await gw.admin("PUT", "lists/whitelist/user/u1")
    res = await gw.check(order(item("S2", 1)))
    assert res["decision"] == "allow" and [r["code"] for r in res["reasons"]] == ["WHITELISTED"]
    assert (await gw.user("u1"))["counters"]["sku"] == {"S2": 2}
    await gw.admin("DELETE", "lists/whitelist/user/u1")
    res = await gw.check(order(item("S2", 1)))
    assert res["decision"] == "deny"
    assert [(r["code"], r["limit"], r["used"]) for r in res["reasons"]] == [("SKU_LIMIT", 1, 2), ("RISK_RULE", 2, 2)]


def assert_error(data: Any, code: str) -> None:
    assert set(data) == {"error"}, data
    assert data["error"]["code"] == code, data
    assert isinstance(data["error"]["message"], str) and data["error"]["message"]


@pytest.mark.parametrize(
    "path",
    [
        "lists/blacklist/user/u-none",
        "lists/whitelist/user/u-bad",
        "lists/blacklist/device/d-none",
        "lists/blacklist/phone/13900000000",
        "lists/blacklist/address/" + address_path("Zhejiang/Hangzhou"),
        "lists/whitelist/discount/NOPE",
    ],
)
async def test_removing_an_absent_entry_is_404_and_changes_nothing(gw_factory: MakeGateway, path: str) -> None:
    gw = await gw_factory(lists_config(black={"user": ["u-bad"], "address": ["Zhejiang/Hangzhou/Xihu"]}))
    before = await lists(gw)
    assert_error(await gw.admin("DELETE", path, status=404), "not_listed")
    assert await lists(gw) == before
    await refused(gw, order(user="u-bad"), black("user", "u-bad"))


NO_GREYLIST = "no list 'greylist'; lists are blacklist, whitelist"
KINDS = "kinds are user, device, phone, address, discount"


@pytest.mark.parametrize(
    ("method", "path", "code", "message"),
    [
        ("PUT", "lists/greylist/user/u1", "unknown_list", NO_GREYLIST),
        ("DELETE", "lists/greylist/user/u-bad", "unknown_list", NO_GREYLIST),
        ("PUT", "lists/greylist/ip/u1", "unknown_list", NO_GREYLIST),
        ("PUT", "lists/blacklist/ip/x", "unknown_list_kind", f"no list kind 'ip'; {KINDS}"),
        ("PUT", "lists/whitelist/email/a@b.c", "unknown_list_kind", f"no list kind 'email'; {KINDS}"),
        ("DELETE", "lists/blacklist/users/u-bad", "unknown_list_kind", f"no list kind 'users'; {KINDS}"),
        ("PUT", "lists/blacklist/user", "not_found", "Not Found"),  # no value: no list route
    ],
)
async def test_unknown_list_or_kind_is_404_naming_the_valid_ones(
    gw_factory: MakeGateway, method: str, path: str, code: str, message: str
) -> None:
    gw = await gw_factory(lists_config(black={"user": ["u-bad"]}))
    before = await lists(gw)
    assert (await gw.admin(method, path, status=404))["error"] == {"code": code, "message": message}
    assert await lists(gw) == before
    await allowed(gw, order(user="u1"))


@pytest.mark.parametrize(
    "path",
    [
        "lists/blacklist/address/" + address_path("/"),
        "lists/blacklist/address/" + address_path(" / / "),
        "lists/blacklist/phone/" + quote("no digits", safe=""),
        "lists/blacklist/user/" + "u" * 600,
    ],
)
async def test_unusable_value_is_400_and_changes_nothing(gw_factory: MakeGateway, path: str) -> None:
    gw = await gw_factory(lists_config())
    before = await lists(gw)
    assert_error(await gw.admin("PUT", path, status=400), "invalid_value")
    assert await lists(gw) == before
    await allowed(gw, order(address=ADDRESS, phone="13900000000"))


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        pytest.param("user", "u" * 129, id="user-129-chars"),
        pytest.param("device", "d" * 129, id="device-129-chars"),
        pytest.param("phone", "1" * 129, id="phone-129-chars"),
        pytest.param("discount", "x" * 129, id="discount-129-chars"),
        pytest.param("user", "a\x1fb", id="user-control-character"),
    ],
)
async def test_list_value_that_is_not_a_valid_id_is_400(gw_factory: MakeGateway, kind: str, value: str) -> None:
    # SPEC 1: ids are non-empty strings of at most 128 characters; the config document refuses
    # such list entries, so the admin API must not let one in (bad input never changes state).
    gw = await gw_factory(lists_config())
    before = await lists(gw)
    assert_error(await gw.admin("PUT", f"lists/blacklist/{kind}/" + quote(value, safe=""), status=400), "invalid_value")
    assert await lists(gw) == before


async def test_config_round_trips_after_list_changes(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config(black={"user": ["u-bad"]}))
    await gw.admin("PUT", "lists/blacklist/phone/138-0000-0000")
    await gw.admin("PUT", "lists/blacklist/address/" + address_path("Zhejiang/Hangzhou"))
    await gw.admin("PUT", "lists/whitelist/address/" + address_path("Zhejiang/Hangzhou/Xihu/Lingyin"))
    await gw.admin("PUT", "lists/whitelist/discount/618-SUPER")
    doc = await gw.admin("GET", "config")
    assert await gw.admin("PUT", "config", doc) == doc
    assert (await gw.admin("GET", "config"))["lists"] == doc["lists"]
    await refused(gw, order(user="u-bad"), black("user", "u-bad"))
    await refused(gw, order(phone="13800000000"), black("phone", "13800000000"))
    await allowed(gw, order(address=ADDRESS))


async def test_list_calls_need_the_admin_token(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(lists_config())
    data = await gw.call("PUT", "/v1/admin/lists/blacklist/user/u1", status=401)
    assert_error(data, "unauthorized")
    assert_error(await gw.call("GET", "/v1/admin/lists", status=401), "unauthorized")
    await allowed(gw, order(user="u1"))


# -- coupon claims -----------------------------------------------------------------------------------


async def test_blacklisted_user_or_phone_cannot_claim_a_coupon(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(
        lists_config(
            black={"user": ["u-bad"], "phone": ["13800000000"]},
            coupons=[{"coupon_id": "C1", "activity_id": "A1", "per_user_limit": 1}],
        )
    )
    res = await gw.claim({"user_id": "u-bad", "coupon_id": "C1"})
    assert res["decision"] == "deny"
    assert located(res["reasons"]) == [black("user", "u-bad")]
    res = await gw.claim({"user_id": "u1", "coupon_id": "C1", "phone": "138-0000-0000"})
    assert res["decision"] == "deny"
    assert [(r["code"], r["subject"]) for r in res["reasons"]] == [("BLACKLISTED", "phone")]
    assert (await gw.user("u1"))["counters"]["coupon"] == {}
    res = await gw.claim({"user_id": "u1", "coupon_id": "C1"})
    assert res["decision"] == "allow"
    assert (await gw.user("u1"))["counters"]["coupon"] == {"C1": 1}
