"""RISK_RULE (SPEC sections 2-3): subject x scope x sliding window.

A rule counts, per subject (user, device, ip, receiver name/phone/address, or an address region
level), the quantities of the SKUs its scope matches, over the orders checked at `t` with
`now - window < t <= now`. An order fails an enforced rule when the windowed quantity plus its
own matching quantity would pass `floor(max_quantity * risk_multiplier)`; a shadow rule reports
the hit in `shadow` and never refuses. Held and confirmed orders count; a cancelled or expired
hold leaves the window at once.

Observed (the SPEC is silent): a rule counts only orders checked while it exists. A rule added
mid-sale starts from an empty window, and so does a rule whose window or scope is changed (the
window is kept per subject x scope x window length); changing only `max_quantity` or `mode` keeps
the window's history.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actors.subject import SubjectActor
from actors.window import SMALL, Window
from domain.types import SEP, key
from tests.conftest import ADDRESS, T0, Gateway, MakeGateway, base_config, item, order

pytestmark = pytest.mark.both_modes  # every test against the single node and cluster mode

VAGUE = "Too many orders right now, please try again later"
HOLD_TTL = 15 * 60
HOUR = 3600
DAY = 86400
WEEK = 7 * DAY
KEYS = ("code", "rule_id", "subject", "limit", "used", "requested", "degradable")
TOWN = "zhejiang/hangzhou/xihu/lingyin"  # ADDRESS's region path, folded


def rule(
    rule_id: str = "R1",
    subject: str = "user",
    window: str | int = "1h",
    max_quantity: int = 2,
    scope: dict[str, str] | None = None,
    mode: str | None = None,
) -> dict[str, Any]:
    r: dict[str, Any] = {"rule_id": rule_id, "subject": subject, "window": window, "max_quantity": max_quantity}
    if scope is not None:
        r["scope"] = scope
    if mode is not None:
        r["mode"] = mode
    return r


def rules_config(*rules: dict[str, Any], multiplier: str | None = None) -> dict[str, Any]:
    """Four SKUs spread over categories, brands and SPUs (no limits, no fuses) and `rules`.

    S1, S2: SPU P1, phone, acme.  S3: SPU P2, phone, zeta.  S4: SPU P3, laptop, acme.
    """

    def sku(sku_id: str, spu: str, category: str, brand: str) -> dict[str, Any]:
        return {
            "sku_id": sku_id,
            "spu_id": spu,
            "category": category,
            "brand": brand,
            "cost_price": 800,
            "original_price": 1000,
        }

    cfg = base_config(
        skus=[
            sku("S1", "P1", "phone", "acme"),
            sku("S2", "P1", "phone", "acme"),
            sku("S3", "P2", "phone", "zeta"),
            sku("S4", "P3", "laptop", "acme"),
        ],
        rules=list(rules),
    )
    if multiplier is not None:
        cfg["settings"]["risk_multiplier"] = multiplier
    return cfg


def risk(rule_id: str, subject: str, limit: int, used: int, requested: int) -> dict[str, Any]:
    return {
        "code": "RISK_RULE",
        "rule_id": rule_id,
        "subject": subject,
        "limit": limit,
        "used": used,
        "requested": requested,
        "degradable": False,
    }


def located(reasons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in KEYS} for r in reasons]


async def allowed(gw: Gateway, body: dict[str, Any], *shadow: dict[str, Any]) -> dict[str, Any]:
    """Allowed and held, with exactly `shadow` as the shadow hits."""
    res: dict[str, Any] = await gw.check(body)
    assert res["decision"] == "allow", res
    assert res["reasons"] == [] and res["message"] is None
    assert res["hold"] == {"expires_at": gw.clock.now() + HOLD_TTL}
    assert located(res["shadow"]) == list(shadow)
    return res


async def placed(gw: Gateway, body: dict[str, Any]) -> None:
    """Allowed and confirmed, so it stays counted past the hold TTL."""
    await allowed(gw, body)
    assert (await gw.confirm(body["order_id"]))["state"] == "confirmed"


async def refused(gw: Gateway, body: dict[str, Any], *reasons: dict[str, Any]) -> dict[str, Any]:
    """Denied for exactly `reasons` (in this order), holding nothing."""
    res: dict[str, Any] = await gw.check(body)
    assert res["decision"] == "deny", res
    assert located(res["reasons"]) == list(reasons)
    assert res["hold"] is None and res["payable"] is None
    assert res["message"] == VAGUE
    assert (await gw.get(body["order_id"]))["state"] == "denied"
    return res


async def user_windows(gw: Gateway, user: str = "u1") -> list[dict[str, Any]]:
    windows: list[dict[str, Any]] = (await gw.user(user))["windows"]
    return windows


async def windowed(gw: Gateway, kind: str, value: str, seconds: int, scope: tuple[str, str] = ("", "")) -> int:
    """A subject's windowed quantity, read from its actor (0 when the actor or window is gone)."""
    actor = await gw.subject(kind, value)
    if actor is None:
        return 0
    return actor.window_count(key(*scope, str(seconds)), gw.clock.now())


# -- the window's edge ---------------------------------------------------------------------

WINDOWS = [pytest.param("1h", HOUR, id="1h"), pytest.param("24h", DAY, id="24h"), pytest.param("7d", WEEK, id="7d")]


@pytest.mark.parametrize(("window", "seconds"), WINDOWS)
async def test_an_order_counts_until_one_second_before_t_plus_window(
    gw_factory: MakeGateway, window: str, seconds: int
) -> None:
    gw = await gw_factory(rules_config(rule(window=window, max_quantity=2)))
    await placed(gw, order(item("S1", 2)))
    assert await user_windows(gw) == [{"scope": {}, "window": seconds, "quantity": 2}]
    await gw.advance(seconds - 1)
    # now = t + window - 1: now - window < t, still inside.
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=2, used=2, requested=1))
    assert await user_windows(gw) == [{"scope": {}, "window": seconds, "quantity": 2}]
    await gw.advance(1)
    # now = t + window: the order has left the window.
    assert await user_windows(gw) == []
    await placed(gw, order(item("S1", 2)))
    assert await user_windows(gw) == [{"scope": {}, "window": seconds, "quantity": 2}]
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=2, used=2, requested=1))


@pytest.mark.parametrize(("window", "seconds"), WINDOWS)
async def test_each_order_leaves_the_window_at_its_own_time(gw_factory: MakeGateway, window: str, seconds: int) -> None:
    gw = await gw_factory(rules_config(rule(window=window, max_quantity=3)))
    await placed(gw, order(item("S1", 1)))  # t = T0
    await gw.advance(10)
    await placed(gw, order(item("S1", 2)))  # t = T0 + 10
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=3, used=3, requested=1))
    await gw.advance(seconds - 11)  # now = T0 + window - 1
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=3, used=3, requested=1))
    await gw.advance(1)  # now = T0 + window: the first order is gone, the second still counts
    await refused(gw, order(item("S1", 2)), risk("R1", "user", limit=3, used=2, requested=2))
    await gw.advance(9)  # now = T0 + 10 + window - 1
    await refused(gw, order(item("S1", 2)), risk("R1", "user", limit=3, used=2, requested=2))
    await gw.advance(1)  # now = T0 + 10 + window
    assert await user_windows(gw) == []
    await placed(gw, order(item("S1", 3)))
    assert await user_windows(gw) == [{"scope": {}, "window": seconds, "quantity": 3}]


async def test_windows_of_different_lengths_count_independently(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(
        rules_config(rule("R1", window="1h", max_quantity=2), rule("R2", window="24h", max_quantity=3))
    )
    await placed(gw, order(item("S1", 2)))
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=2, used=2, requested=1))
    await gw.advance(HOUR)
    await placed(gw, order(item("S1", 1)))
    assert await user_windows(gw) == [
        {"scope": {}, "window": HOUR, "quantity": 1},
        {"scope": {}, "window": DAY, "quantity": 3},
    ]
    # R1 has room (1 + 1 <= 2), R2 does not (3 + 1 > 3).
    await refused(gw, order(item("S1", 1)), risk("R2", "user", limit=3, used=3, requested=1))
    await gw.advance(DAY - HOUR)  # T0 + 24h: the first order leaves R2's window
    await placed(gw, order(item("S1", 2)))
    assert await user_windows(gw) == [
        {"scope": {}, "window": HOUR, "quantity": 2},
        {"scope": {}, "window": DAY, "quantity": 3},
    ]


async def test_rules_sharing_a_window_count_an_order_once(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule("R1", max_quantity=3), rule("R2", max_quantity=5)))
    await allowed(gw, order(item("S1", 3)))
    assert await user_windows(gw) == [{"scope": {}, "window": HOUR, "quantity": 3}]
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=3, used=3, requested=1))
    await refused(
        gw,
        order(item("S1", 3)),
        risk("R1", "user", limit=3, used=3, requested=3),
        risk("R2", "user", limit=5, used=3, requested=3),
    )
    assert await user_windows(gw) == [{"scope": {}, "window": HOUR, "quantity": 3}]


# -- subjects -------------------------------------------------------------------------------

SUBJECTS = [
    # subject, the first order's fields, another order naming the same subject, a different
    # subject, and the first subject's folded actor value.
    pytest.param("user", {"user": "u1"}, {"user": "u1"}, {"user": "u2"}, "u1", id="user"),
    pytest.param("device", {"device": "d1"}, {"device": "d1"}, {"device": "d2"}, "d1", id="device"),
    pytest.param("ip", {"ip": "10.0.0.1"}, {"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}, "10.0.0.1", id="ip"),
    pytest.param(
        "receiver_name", {"name": "Zhang San"}, {"name": " ＺＨＡＮＧ  san "}, {"name": "Li Si"}, "zhangsan", id="name"
    ),
    pytest.param(
        "receiver_phone",
        {"phone": "13900000000"},
        {"phone": "+86 139-0000-0000"},
        {"phone": "13900000001"},
        "13900000000",
        id="phone",
    ),
    pytest.param(
        "receiver_address",
        {"address": ADDRESS},
        {"address": {**ADDRESS, "province": "ZHEJIANG ", "detail": "1  ＬＡＫＥ rd"}},
        {"address": {**ADDRESS, "detail": "2 Lake Rd"}},
        TOWN + SEP + "1lakerd",
        id="receiver_address",
    ),
    pytest.param(
        "address:province",
        {"address": ADDRESS},
        {"address": {"province": "zhejiang", "city": "Ningbo", "district": "Haishu", "town": "X", "detail": "9"}},
        {"address": {**ADDRESS, "province": "Jiangsu"}},
        "zhejiang",
        id="province",
    ),
    pytest.param(
        "address:city",
        {"address": ADDRESS},
        {"address": {**ADDRESS, "district": "Binjiang", "town": "Changhe", "detail": "5 River Rd"}},
        # The same city name under another province is another city: the key is the path.
        {"address": {**ADDRESS, "province": "Jiangsu"}},
        "zhejiang/hangzhou",
        id="city",
    ),
    pytest.param(
        "address:district",
        {"address": ADDRESS},
        {"address": {**ADDRESS, "town": "Beishan", "detail": "7 Hill Rd"}},
        {"address": {**ADDRESS, "district": "Binjiang"}},
        "zhejiang/hangzhou/xihu",
        id="district",
    ),
    pytest.param(
        "address:town",
        {"address": ADDRESS},
        {"address": {**ADDRESS, "town": " LINGYIN", "detail": "99 Temple Rd"}},
        {"address": {**ADDRESS, "town": "Beishan"}},
        TOWN,
        id="town",
    ),
]


@pytest.mark.parametrize(("subject", "first", "same", "other", "value"), SUBJECTS)
async def test_rule_counts_per_subject(
    gw_factory: MakeGateway,
    subject: str,
    first: dict[str, Any],
    same: dict[str, Any],
    other: dict[str, Any],
    value: str,
) -> None:
    gw = await gw_factory(rules_config(rule(subject=subject, max_quantity=2)))

    def body(qty: int, fields: dict[str, Any], user: str) -> dict[str, Any]:
        return order(item("S1", qty), **{"user": user, **fields})

    # Different users (except for the user rule), so only the rule's subject links the orders.
    await placed(gw, body(2, first, "a1"))
    assert await windowed(gw, subject, value, HOUR) == 2
    res = await refused(gw, body(1, same, "a2"), risk("R1", subject, limit=2, used=2, requested=1))
    assert res["reasons"][0]["subject"] == subject
    await placed(gw, body(2, other, "a3"))
    await refused(gw, body(1, other, "a4"), risk("R1", subject, limit=2, used=2, requested=1))
    assert await windowed(gw, subject, value, HOUR) == 2
    await gw.advance(HOUR)
    assert await windowed(gw, subject, value, HOUR) == 0
    await placed(gw, body(2, same, "a5"))
    assert await windowed(gw, subject, value, HOUR) == 2


async def test_orders_without_the_rule_subject_are_not_counted_by_it(gw_factory: MakeGateway) -> None:
    # The SPEC makes device, ip and receiver optional; a rule on an absent subject does not apply.
    gw = await gw_factory(rules_config(rule("R1", subject="device", max_quantity=1)))
    await allowed(gw, order(item("S1", 5)))
    await allowed(gw, order(item("S1", 5), ip="10.0.0.1"))
    await allowed(gw, order(item("S1", 1), device="d1"))
    await refused(gw, order(item("S1", 1), device="d1", user="u2"), risk("R1", "device", 1, 1, 1))
    assert await windowed(gw, "device", "d1", HOUR) == 1


async def test_one_order_fails_the_rules_of_several_subjects(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(
        rules_config(
            rule("R-dev", subject="device", max_quantity=2),
            rule("R-ip", subject="ip", max_quantity=2),
            rule("R-town", subject="address:town", max_quantity=3),
        )
    )
    await allowed(gw, order(item("S1", 2), device="d1", ip="10.0.0.1", address=ADDRESS))
    await refused(
        gw,
        order(item("S1", 1), user="u2", device="d1", ip="10.0.0.1", address=ADDRESS),
        risk("R-dev", "device", limit=2, used=2, requested=1),
        risk("R-ip", "ip", limit=2, used=2, requested=1),
    )
    await refused(
        gw,
        order(item("S1", 2), user="u3", device="d2", ip="10.0.0.1", address=ADDRESS),
        risk("R-ip", "ip", limit=2, used=2, requested=2),
        risk("R-town", "address:town", limit=3, used=2, requested=2),
    )
    assert await windowed(gw, "device", "d1", HOUR) == 2
    assert await windowed(gw, "address:town", TOWN, HOUR) == 2


# -- scopes ---------------------------------------------------------------------------------

# One order of S1 x1, S2 x2, S3 x4, S4 x8: the quantity each scope matches.
SCOPES = [
    pytest.param({}, ("", ""), 15, 4, [], id="every-sku"),
    pytest.param({"category": "phone"}, ("category", "phone"), 7, 3, ["S4"], id="category"),
    pytest.param({"brand": "acme"}, ("brand", "acme"), 11, 3, ["S3"], id="brand"),
    pytest.param({"spu_id": "P1"}, ("spu_id", "P1"), 3, 2, ["S3", "S4"], id="spu"),
    pytest.param({"sku_id": "S1"}, ("sku_id", "S1"), 1, 1, ["S2", "S3", "S4"], id="sku"),
]


@pytest.mark.parametrize(("scope", "scope_key", "matching", "matching_one_each", "outside"), SCOPES)
async def test_scope_counts_only_the_matching_items(
    gw_factory: MakeGateway,
    scope: dict[str, str],
    scope_key: tuple[str, str],
    matching: int,
    matching_one_each: int,
    outside: list[str],
) -> None:
    gw = await gw_factory(rules_config(rule(scope=scope, max_quantity=matching)))
    # Exactly at the limit: allowed.
    await allowed(gw, order(item("S1", 1), item("S2", 2), item("S3", 4), item("S4", 8)))
    shown = {scope_key[0]: scope_key[1]} if scope_key[0] else {}
    assert await user_windows(gw) == [{"scope": shown, "window": HOUR, "quantity": matching}]
    # One more of each SKU: `requested` is only the matching quantity.
    await refused(
        gw,
        order(item("S1", 1), item("S2", 1), item("S3", 1), item("S4", 1)),
        risk("R1", "user", limit=matching, used=matching, requested=matching_one_each),
    )
    # Items outside the scope pass, and are not counted.
    if scope:
        await allowed(gw, order(*(item(s, 3) for s in outside)))
    assert await user_windows(gw) == [{"scope": shown, "window": HOUR, "quantity": matching}]
    assert await windowed(gw, "user", "u1", HOUR, scope_key) == matching


async def test_an_order_with_no_item_in_scope_is_neither_checked_nor_counted(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(scope={"category": "phone"}, max_quantity=0)))
    await allowed(gw, order(item("S4", 9)))
    assert await user_windows(gw) == []
    await refused(gw, order(item("S4", 1), item("S3", 1)), risk("R1", "user", limit=0, used=0, requested=1))


async def test_items_of_one_sku_on_several_lines_sum(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(scope={"sku_id": "S1"}, max_quantity=4)))
    await refused(
        gw, order(item("S1", 2), item("S4", 1), item("S1", 3)), risk("R1", "user", limit=4, used=0, requested=5)
    )
    await allowed(gw, order(item("S1", 2), item("S4", 1), item("S1", 2)))
    assert await user_windows(gw) == [{"scope": {"sku_id": "S1"}, "window": HOUR, "quantity": 4}]


# -- risk_multiplier ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_quantity", "multiplier", "limit"),
    [
        pytest.param(3, "1.0", 3, id="3x1.0"),
        pytest.param(3, "1.5", 4, id="3x1.5"),
        pytest.param(3, "0.5", 1, id="3x0.5"),
        pytest.param(3, "2", 6, id="3x2"),
        pytest.param(3, "0.3", 0, id="3x0.3"),
        # Exact decimals: 100 * 0.29 is 28.999... and 100 * 1.15 is 114.999... in binary floats.
        pytest.param(100, "0.29", 29, id="100x0.29"),
        pytest.param(100, "1.15", 115, id="100x1.15"),
    ],
)
async def test_limit_is_floor_of_max_quantity_times_multiplier(
    gw_factory: MakeGateway, max_quantity: int, multiplier: str, limit: int
) -> None:
    gw = await gw_factory(rules_config(rule(max_quantity=max_quantity), multiplier=multiplier))
    await refused(gw, order(item("S1", limit + 1)), risk("R1", "user", limit=limit, used=0, requested=limit + 1))
    if limit:
        await allowed(gw, order(item("S1", limit)))
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=limit, used=limit, requested=1))
    assert await windowed(gw, "user", "u1", HOUR) == limit


async def test_multiplier_changed_live_applies_at_the_next_check(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(max_quantity=3)))
    await allowed(gw, order(item("S1", 3)))
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=3, used=3, requested=1))
    settings = await gw.admin("PATCH", "settings", {"risk_multiplier": "1.5"})
    assert settings["risk_multiplier"] == "1.5"
    await allowed(gw, order(item("S1", 1)))
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=4, used=4, requested=1))
    await gw.admin("PATCH", "settings", {"risk_multiplier": "0.5"})
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=1, used=4, requested=1))
    await gw.admin("PATCH", "settings", {"risk_multiplier": 2})
    await allowed(gw, order(item("S1", 2)))
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=6, used=6, requested=1))
    assert await user_windows(gw) == [{"scope": {}, "window": HOUR, "quantity": 6}]


async def test_multiplier_applies_to_every_rule(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(
        rules_config(
            rule("R1", max_quantity=4),
            rule("R2", subject="device", max_quantity=10),
            multiplier="0.5",
        )
    )
    await allowed(gw, order(item("S1", 2), device="d1"))
    await refused(
        gw,
        order(item("S1", 4), device="d1"),
        risk("R1", "user", limit=2, used=2, requested=4),
        risk("R2", "device", limit=5, used=2, requested=4),
    )


async def test_invalid_multiplier_is_refused_and_changes_nothing(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(max_quantity=3)))
    err = await gw.admin("PATCH", "settings", {"risk_multiplier": "-1"}, status=400)
    assert set(err) == {"error"} and "risk_multiplier" in err["error"]["message"]
    await allowed(gw, order(item("S1", 3)))
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=3, used=3, requested=1))


# -- shadow mode ------------------------------------------------------------------------------


async def test_shadow_rule_reports_and_never_refuses(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule("R1", max_quantity=1, mode="shadow")))
    await allowed(gw, order(item("S1", 1)))
    res = await allowed(gw, order(item("S1", 2)), risk("R1", "user", limit=1, used=1, requested=2))
    assert res["payable"] == 2000
    # Still counted.
    assert await user_windows(gw) == [{"scope": {}, "window": HOUR, "quantity": 3}]
    await allowed(gw, order(item("S1", 1)), risk("R1", "user", limit=1, used=3, requested=1))
    assert await user_windows(gw) == [{"scope": {}, "window": HOUR, "quantity": 4}]


async def test_shadow_hit_is_reported_beside_an_enforced_refusal(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule("R1", max_quantity=1, mode="shadow"), rule("R2", max_quantity=3)))
    await allowed(gw, order(item("S1", 1)))
    await allowed(gw, order(item("S1", 2)), risk("R1", "user", limit=1, used=1, requested=2))
    res = await refused(gw, order(item("S1", 1)), risk("R2", "user", limit=3, used=3, requested=1))
    assert located(res["shadow"]) == [risk("R1", "user", limit=1, used=3, requested=1)]
    assert await user_windows(gw) == [{"scope": {}, "window": HOUR, "quantity": 3}]


async def test_switching_a_rule_between_shadow_and_enforce_live(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule("R1", max_quantity=1, mode="shadow")))
    await allowed(gw, order(item("S1", 2)), risk("R1", "user", limit=1, used=0, requested=2))
    await gw.admin("PUT", "rules/R1", rule("R1", max_quantity=1, mode="enforce"))
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=1, used=2, requested=1))
    await gw.admin("PUT", "rules/R1", rule("R1", max_quantity=1, mode="shadow"))
    await allowed(gw, order(item("S1", 1)), risk("R1", "user", limit=1, used=2, requested=1))
    assert await user_windows(gw) == [{"scope": {}, "window": HOUR, "quantity": 3}]


# -- holds ending -----------------------------------------------------------------------------


async def test_cancelled_hold_leaves_the_window_at_once(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(max_quantity=2)))
    first = order(item("S1", 2))
    await allowed(gw, first)
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=2, used=2, requested=1))
    assert (await gw.cancel(first["order_id"]))["state"] == "cancelled"
    assert await user_windows(gw) == []
    await allowed(gw, order(item("S1", 2)))
    assert await user_windows(gw) == [{"scope": {}, "window": HOUR, "quantity": 2}]


async def test_expired_hold_leaves_the_window_at_once(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(max_quantity=2)))
    first = order(item("S1", 2))
    await allowed(gw, first)
    await gw.advance(HOLD_TTL - 1)
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=2, used=2, requested=1))
    moved = await gw.advance(1)
    assert moved["expired"] == 1
    assert (await gw.get(first["order_id"]))["state"] == "expired"
    assert await user_windows(gw) == []
    await allowed(gw, order(item("S1", 2)))
    assert await user_windows(gw) == [{"scope": {}, "window": HOUR, "quantity": 2}]


async def test_cancelled_confirmed_order_leaves_the_window(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(subject="device", max_quantity=2)))
    first = order(item("S1", 2), device="d1")
    await placed(gw, first)
    await gw.advance(HOLD_TTL * 2)
    await refused(gw, order(item("S1", 1), user="u2", device="d1"), risk("R1", "device", 2, 2, 1))
    await gw.cancel(first["order_id"])
    assert await windowed(gw, "device", "d1", HOUR) == 0
    await allowed(gw, order(item("S1", 2), user="u2", device="d1"))
    assert await windowed(gw, "device", "d1", HOUR) == 2


async def test_cancel_after_the_order_left_the_window_takes_nothing_from_newer_orders(
    gw_factory: MakeGateway,
) -> None:
    gw = await gw_factory(rules_config(rule(max_quantity=3)))
    old = order(item("S1", 2))
    await placed(gw, old)
    await gw.advance(HOUR)
    await placed(gw, order(item("S1", 3)))
    await gw.cancel(old["order_id"])
    assert await user_windows(gw) == [{"scope": {}, "window": HOUR, "quantity": 3}]
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=3, used=3, requested=1))


async def test_repeated_check_counts_once_in_the_window(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(max_quantity=3)))
    body = order(item("S1", 2))
    first = await allowed(gw, body)
    assert await gw.check(body) == first
    assert await user_windows(gw) == [{"scope": {}, "window": HOUR, "quantity": 2}]


async def test_denied_order_is_not_counted(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(max_quantity=2)))
    await refused(gw, order(item("S1", 3)), risk("R1", "user", limit=2, used=0, requested=3))
    assert await user_windows(gw) == []
    await allowed(gw, order(item("S1", 2)))


# -- rules changed at run time --------------------------------------------------------------


async def test_new_rule_applies_at_the_next_check_and_counts_from_when_it_is_added(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config())
    await placed(gw, order(item("S1", 5)))
    assert await user_windows(gw) == []
    await gw.admin("PUT", "rules/R1", {"subject": "user", "window": "1h", "max_quantity": 2})
    # The order checked before the rule existed is not in its window.
    await refused(gw, order(item("S1", 3)), risk("R1", "user", limit=2, used=0, requested=3))
    await allowed(gw, order(item("S1", 2)))
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=2, used=2, requested=1))
    assert await user_windows(gw) == [{"scope": {}, "window": HOUR, "quantity": 2}]


async def test_changing_max_quantity_keeps_the_window(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(max_quantity=2)))
    await allowed(gw, order(item("S1", 2)))
    await gw.admin("PUT", "rules/R1", rule(max_quantity=3))
    await allowed(gw, order(item("S1", 1)))
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=3, used=3, requested=1))
    await gw.admin("PUT", "rules/R1", rule(max_quantity=1))
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=1, used=3, requested=1))


async def test_changing_a_rule_window_or_scope_starts_a_new_window(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(max_quantity=2)))
    await allowed(gw, order(item("S1", 2)))
    await gw.admin("PUT", "rules/R1", rule(window="24h", max_quantity=2))
    await allowed(gw, order(item("S1", 2)))
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=2, used=2, requested=1))
    await gw.admin("PUT", "rules/R1", rule(window="24h", max_quantity=2, scope={"category": "phone"}))
    await allowed(gw, order(item("S1", 2)))
    assert await user_windows(gw) == [
        {"scope": {}, "window": HOUR, "quantity": 2},
        {"scope": {}, "window": DAY, "quantity": 2},
        {"scope": {"category": "phone"}, "window": DAY, "quantity": 2},
    ]


async def test_deleted_rule_stops_refusing_at_the_next_check(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(max_quantity=1)))
    await allowed(gw, order(item("S1", 1)))
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=1, used=1, requested=1))
    assert await gw.admin("DELETE", "rules/R1") == {"deleted": "R1"}
    assert (await gw.admin("GET", "config"))["rules"] == []
    await allowed(gw, order(item("S1", 4)))
    # Without the rule no new window events are recorded.
    assert await user_windows(gw) == [{"scope": {}, "window": HOUR, "quantity": 1}]
    assert (await gw.admin("DELETE", "rules/R1", status=404))["error"]["code"] == "unknown_entry"


async def test_invalid_rule_is_refused_and_the_old_one_stands(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(max_quantity=1)))
    err = await gw.admin("PUT", "rules/R1", {"subject": "user", "window": "8d", "max_quantity": 5}, status=400)
    assert set(err) == {"error"} and "window" in err["error"]["message"]
    err = await gw.admin("PUT", "rules/R1", {"subject": "phone", "window": "1h", "max_quantity": 5}, status=400)
    assert set(err) == {"error"} and "subject" in err["error"]["message"]
    await allowed(gw, order(item("S1", 1)))
    await refused(gw, order(item("S1", 1)), risk("R1", "user", limit=1, used=1, requested=1))


# -- a village ---------------------------------------------------------------------------------

VILLAGE = {"province": "Henan", "city": "Zhoukou", "district": "Shangshui", "town": "Huangzhai"}


async def test_village_buying_through_many_accounts_is_stopped_by_an_address_town_rule(
    gw_factory: MakeGateway,
) -> None:
    gw = await gw_factory(
        rules_config(rule("R-village", subject="address:town", window="24h", max_quantity=5, scope={"category": "phone"}))
    )
    spellings = [VILLAGE, {k: v.upper() for k, v in VILLAGE.items()}, {k: f"  {v.lower()} " for k, v in VILLAGE.items()}]
    for n in range(5):
        await placed(
            gw,
            order(
                item("S1", 1),
                user=f"v{n}",
                device=f"dv{n}",
                ip=f"10.1.0.{n}",
                name=f"Villager {n}",
                phone=f"1370000000{n}",
                address={**spellings[n % 3], "detail": f"{n} Well Lane"},
            ),
        )
        await gw.advance(600)
    town = "henan/zhoukou/shangshui/huangzhai"
    assert await windowed(gw, "address:town", town, DAY, ("category", "phone")) == 5
    # The sixth account, with its own phone, name and house: refused on the town.
    sixth = order(
        item("S3", 1),
        user="v5",
        device="dv5",
        name="Villager 5",
        phone="13700000005",
        address={**VILLAGE, "detail": "5 Well Lane"},
    )
    res = await refused(gw, sixth, risk("R-village", "address:town", limit=5, used=5, requested=1))
    assert res["reasons"][0]["rule_id"] == "R-village"
    # A laptop is outside the rule's scope.
    await allowed(gw, order(item("S4", 1), user="v6", address={**VILLAGE, "detail": "6 Well Lane"}))
    # A buyer in the next town passes.
    await placed(
        gw, order(item("S1", 1), user="w1", name="Villager 0", address={**VILLAGE, "town": "Laocheng", "detail": "0 Well Lane"})
    )
    assert await windowed(gw, "address:town", town, DAY, ("category", "phone")) == 5
    assert await windowed(gw, "address:town", "henan/zhoukou/shangshui/laocheng", DAY, ("category", "phone")) == 1
    # A day after the first village order, one unit is free again.
    await gw.advance(DAY - 5 * 600)
    assert await windowed(gw, "address:town", town, DAY, ("category", "phone")) == 4
    await placed(gw, order(item("S1", 1), user="v7", address={**VILLAGE, "detail": "7 Well Lane"}))
    await refused(
        gw,
        order(item("S1", 1), user="v8", address={**VILLAGE, "detail": "8 Well Lane"}),
        risk("R-village", "address:town", limit=5, used=5, requested=1),
    )


# -- memory: old events are dropped --------------------------------------------------------------


def _found(actor: SubjectActor | None) -> SubjectActor:
    assert actor is not None
    return actor


@pytest.mark.node_only  # looks into the single node's memory
async def test_sweep_drops_a_window_past_its_length(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(max_quantity=5), rule("R2", subject="address:town", max_quantity=5)))
    await placed(gw, order(item("S1", 2), address=ADDRESS))
    find = gw.coordinator.ledger.find  # through every tier: the sweeper may have put some to rest
    town, user = key("address:town", TOWN), key("user", "u1")
    assert list(_found(find(town)).windows) == [key("", "", str(HOUR))]
    assert list(_found(find(user)).windows) == [key("", "", str(HOUR))]
    await gw.advance(HOUR - 1)
    gw.coordinator.expire_due(gw.clock.now())
    assert _found(find(town)).windows[key("", "", str(HOUR))].total == 2
    await gw.advance(1)  # the clock endpoint sweeps what is due
    gw.coordinator.expire_due(gw.clock.now())
    # The town counted nothing else: its actor is gone. The user keeps its lifetime counters.
    assert find(town) is None
    assert _found(find(user)).windows == {}
    assert (await gw.user("u1"))["counters"]["sku"] == {"S1": 2}


@pytest.mark.node_only  # looks into the single node's memory
async def test_sweep_drops_only_the_events_that_left(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(subject="ip", max_quantity=10)))
    await placed(gw, order(item("S1", 1), ip="10.0.0.1"))
    await gw.advance(1800)
    await placed(gw, order(item("S1", 3), user="u2", ip="10.0.0.1"))
    await gw.advance(1800)
    gw.coordinator.expire_due(gw.clock.now())
    window = _found(gw.coordinator.ledger.find(key("ip", "10.0.0.1"))).windows[key("", "", str(HOUR))]
    # Dropped by the sweep itself, before anything reads the window.
    assert window.total == 3
    assert window.next_expiry() == T0 + 1800 + HOUR
    await gw.advance(1800)
    gw.coordinator.expire_due(gw.clock.now())
    assert gw.coordinator.ledger.find(key("ip", "10.0.0.1")) is None


@pytest.mark.node_only  # looks into the single node's memory
async def test_many_subjects_are_all_dropped_after_the_window(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(rules_config(rule(subject="ip", max_quantity=1), rule("R2", subject="device", max_quantity=1)))
    for n in range(50):
        await placed(gw, order(item("S1", 1), user=f"u{n}", ip=f"10.0.1.{n}", device=f"d{n}"))
    ledger = gw.coordinator.ledger
    assert sum(1 for k in ledger.all_subjects() if k.startswith(key("ip", ""))) == 50
    await gw.advance(HOUR)
    gw.coordinator.expire_due(gw.clock.now())
    subjects = ledger.all_subjects()
    assert [k for k in subjects if k.startswith(key("ip", ""))] == []
    # Devices keep their lifetime SKU counters but no windows.
    assert all(not subjects[key("device", f"d{n}")].windows for n in range(50))


@pytest.mark.node_only  # looks into the single node's memory
async def test_busy_window_is_exact_at_the_edge_and_emptied_after(gw_factory: MakeGateway) -> None:
    # Forty orders in forty different seconds: more than a small window keeps inline.
    gw = await gw_factory(rules_config(rule(subject="device", max_quantity=40)))
    for n in range(40):
        await placed(gw, order(item("S1", 1), user=f"u{n}", device="d1"))
        await gw.advance(1)
    # now = T0 + 40; the orders were checked at T0 .. T0 + 39.
    await gw.advance(HOUR - 41)  # now = T0 + 3599
    await refused(gw, order(item("S1", 1), user="x", device="d1"), risk("R1", "device", limit=40, used=40, requested=1))
    await gw.advance(1)  # T0 + 3600: the first order left
    await refused(gw, order(item("S1", 2), user="x", device="d1"), risk("R1", "device", limit=40, used=39, requested=2))
    await placed(gw, order(item("S1", 1), user="x", device="d1"))
    assert await windowed(gw, "device", "d1", HOUR) == 40
    await gw.advance(38)  # T0 + 3638: only the order of T0 + 39 and the new one remain
    assert await windowed(gw, "device", "d1", HOUR) == 2
    await gw.advance(HOUR)
    gw.coordinator.expire_due(gw.clock.now())
    assert _found(gw.coordinator.ledger.find(key("device", "d1"))).windows == {}


@pytest.mark.node_only  # looks into the single node's memory
async def test_subjects_whose_orders_all_ended_leave_nothing_behind(gw_factory: MakeGateway) -> None:
    # Operator's view (the SPEC is silent on memory): once every order of a subject has ended
    # (cancelled or expired) and its windows have passed, the subject holds no state at all, so a
    # flood of abandoned orders under throw-away devices and names does not grow memory for good.
    gw = await gw_factory(rules_config(rule(max_quantity=5)))
    expired = order(item("S1", 1), device="d1", name="Zhang San", address=ADDRESS)
    cancelled = order(item("S1", 1), user="u2", device="d2", phone="13900000000")
    await allowed(gw, expired)
    await allowed(gw, cancelled)
    await gw.cancel(cancelled["order_id"])
    await gw.advance(HOLD_TTL)
    assert (await gw.get(expired["order_id"]))["state"] == "expired"
    await gw.advance(HOUR)
    gw.coordinator.expire_due(gw.clock.now())
    assert sorted(gw.coordinator.ledger.all_subjects()) == []


@given(
    seconds=st.integers(1, 4 * SMALL),
    steps=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 3), st.integers(0, 9)), max_size=150),
)
def test_a_window_counts_exactly_the_events_inside_it(seconds: int, steps: list[tuple[int, int, int]]) -> None:
    # The window's shortcuts (another order in the same second, one in a later second, a small
    # window kept inline, a big one sorted) against a recount of the orders checked at t with
    # now - window < t <= now; a removed (cancelled) order leaves at once.
    window, now = Window(seconds), 0
    events: list[tuple[int, int]] = []
    for advance, quantity, pick in steps:
        now += advance
        if pick == 0 and events:  # cancel one of the orders so far
            t, q = events.pop(len(events) // 2)
            window.remove(t, q)
        else:
            window.add(now, quantity)
            events.append((now, quantity))
        assert window.count(now) == sum(q for t, q in events if now - seconds < t <= now)
