"""auto_blacklist (SPEC sections 2, 4 and 5).

Confirmed orders feed two totals per user: the counted discount (platform-funded, id not on the
discount whitelist) and the margin (`paid - cost_price*quantity`, where `paid` is the item's
price less its counted discounts). A user whose counted discount reaches `discount_cost`, or
(with `negative_margin`) whose summed margin is below zero, is blacklisted with `"auto": true`:
the next check is BLACKLISTED. Held orders do not count until confirmed; cancelling a confirmed
order takes its amounts back out. `DELETE /v1/admin/lists/blacklist/user/{id}` pardons the user:
the totals restart from zero.

Where the SPEC is silent, these tests take the operator's view: a SKU without a cost price adds
nothing to the margin; a cancelled order never counts as farmed, whatever `release_on_cancel`
says about quotas; and a pardon forgives what came before it, so cancelling an order confirmed
before the pardon gives the user no credit.
"""

from __future__ import annotations

import pytest

from typing import Any

from tests.conftest import Gateway, MakeGateway, base_config, discount, item, order

pytestmark = pytest.mark.both_modes  # every test against the single node and cluster mode

VAGUE = "Too many orders right now, please try again later"
HOLD_TTL = 15 * 60
KEYS = ("code", "subject", "value", "auto", "degradable")


def auto_config(
    discount_cost: int | None = 1000, negative_margin: bool = False, **sections: Any
) -> dict[str, Any]:
    """S1 (cost 800) and S2 (no cost price), no fuses or limits; A1 with a large budget, A2 with 100."""
    rule: dict[str, Any] = {"negative_margin": negative_margin}
    if discount_cost is not None:
        rule["discount_cost"] = discount_cost
    doc = base_config(
        skus=[
            {"sku_id": "S1", "spu_id": "P1", "cost_price": 800, "original_price": 1000},
            {"sku_id": "S2", "spu_id": "P1", "original_price": 1000},
        ],
        activities=[{"activity_id": "A1", "budget": 1_000_000}, {"activity_id": "A2", "budget": 100}],
        auto_blacklist=rule,
    )
    doc.update(sections)
    return doc


def off(amount: int, unit_price: int = 5000, quantity: int = 1, **kw: Any) -> dict[str, Any]:
    """One S1 item with a counted platform discount of `amount` from A1."""
    return order(item("S1", quantity, unit_price, discount(amount, "A1")), **kw)


def auto_reason(user: str = "u1") -> dict[str, Any]:
    return {"code": "BLACKLISTED", "subject": "user", "value": user, "auto": True, "degradable": False}


def located(reasons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: r.get(k) for k in KEYS} for r in reasons]


async def bought(gw: Gateway, body: dict[str, Any]) -> None:
    """Checked (allowed) and confirmed."""
    res = await gw.check(body)
    assert res["decision"] == "allow", res
    assert (await gw.confirm(body["order_id"]))["state"] == "confirmed"


async def totals(gw: Gateway, user: str = "u1") -> tuple[int, int]:
    t = (await gw.user(user))["auto_blacklist"]
    return t["discount_total"], t["margin_total"]


async def status(gw: Gateway, user: str = "u1") -> tuple[bool, bool, bool]:
    """(blacklisted, auto, listed) as GET /v1/admin/users/{id} shows them."""
    view = await gw.user(user)
    return view["blacklisted"], view["auto"], view["listed"]


async def refused_as_auto(gw: Gateway, user: str = "u1", **kw: Any) -> dict[str, Any]:
    body = order(user=user, **kw)
    before = (await gw.user(user))["counters"]
    res: dict[str, Any] = await gw.check(body)
    assert res["decision"] == "deny", res
    assert located(res["reasons"]) == [auto_reason(user)]
    assert res["message"] == VAGUE and res["hold"] is None and res["payable"] is None
    assert (await gw.get(body["order_id"]))["state"] == "denied"
    assert (await gw.user(user))["counters"] == before
    return res


async def passes(gw: Gateway, user: str = "u1") -> None:
    res = await gw.check(order(user=user))
    assert res["decision"] == "allow", res
    assert res["reasons"] == []


# -- discount_cost -------------------------------------------------------------------------------


async def test_counted_discount_reaching_discount_cost_blacklists_the_user(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000))
    await bought(gw, off(600))
    assert await totals(gw) == (600, 5000 - 600 - 800)
    await bought(gw, off(399))
    assert await totals(gw) == (999, 3600 + 3801)
    assert await status(gw) == (False, False, False)
    await passes(gw)
    await bought(gw, off(1))
    assert await totals(gw) == (1000, 3600 + 3801 + 4199)
    assert await status(gw) == (True, True, False)
    await refused_as_auto(gw)
    # Non-degradable: degrade mode is refused the same way.
    res = await gw.check(off(100, on_refusal="degrade"))
    assert res["decision"] == "deny" and located(res["reasons"]) == [auto_reason()]
    # Only that user: another user, even on the same device, passes.
    await passes(gw, "u2")


async def test_discounts_of_several_items_and_orders_sum(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000))
    await bought(
        gw,
        order(
            item("S1", 2, 5000, discount(300, "A1"), discount(100, None, ident="SHOP")),
            item("S1", 1, 5000, discount(200, "A1")),
        ),
    )
    assert await totals(gw) == (600, 15000 - 600 - 3 * 800)
    await bought(gw, off(400))
    assert await totals(gw) == (1000, 12000 + 3800)
    await refused_as_auto(gw)


async def test_partner_funded_and_whitelisted_discounts_are_not_counted(gw_factory: MakeGateway) -> None:
    cfg = auto_config(discount_cost=1000, negative_margin=True)
    cfg["lists"] = {"whitelist": {"discount": ["618-SUPER"]}}
    gw = await gw_factory(cfg)
    # A partner-funded discount, with or without an activity, is not the platform's loss.
    await bought(gw, order(item("S1", 1, 5000, discount(4500, "A1", funded_by="partner"))))
    await bought(gw, order(item("S1", 1, 5000, discount(4500, None, ident="BEANS", funded_by="partner"))))
    # Nor is a whitelisted discount id.
    await bought(gw, order(item("S1", 1, 5000, discount(4500, "A1", ident="618-SUPER"))))
    # Each paid 5000 as far as the rule is concerned.
    assert await totals(gw) == (0, 3 * (5000 - 800))
    assert await status(gw) == (False, False, False)
    # A platform discount without an activity is counted.
    await bought(gw, order(item("S1", 1, 5000, discount(1000, None, ident="SHOP"))))
    assert await totals(gw) == (1000, 3 * 4200 + 3200)
    await refused_as_auto(gw)


async def test_discount_id_whitelisted_at_run_time_is_not_counted_from_then_on(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000))
    await bought(gw, order(item("S1", 1, 5000, discount(600, "A1", ident="618-SUPER"))))
    await gw.admin("PUT", "lists/whitelist/discount/618-SUPER")
    await bought(gw, order(item("S1", 1, 5000, discount(600, "A1", ident="618-SUPER"))))
    assert await totals(gw) == (600, 3600 + 4200)
    await passes(gw)


async def test_stripped_discounts_of_a_degraded_order_are_not_counted(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000, negative_margin=True))
    body = order(item("S1", 1, 1000, discount(500, "A2")), on_refusal="degrade")
    res = await gw.check(body)
    assert res["decision"] == "degrade", res
    assert res["stripped"] == ["A2"] and res["payable"] == 1000
    await gw.confirm(body["order_id"])
    assert await totals(gw) == (0, 1000 - 800)
    assert await status(gw) == (False, False, False)


# -- negative_margin -----------------------------------------------------------------------------


async def test_summed_margin_below_zero_blacklists_the_user(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=None, negative_margin=True))
    await bought(gw, order(item("S1", 1, 1000, discount(50, None, ident="SHOP"))))  # +150
    await bought(gw, order(item("S1", 3, 1000, discount(700, None, ident="SHOP"))))  # 2300 - 2400 = -100
    assert await totals(gw) == (750, 50)
    await bought(gw, order(item("S1", 1, 1000, discount(250, None, ident="SHOP"))))  # -50
    # Exactly zero is not below zero.
    assert await totals(gw) == (1000, 0)
    assert await status(gw) == (False, False, False)
    await passes(gw)
    await bought(gw, order(item("S1", 1, 1000, discount(201, None, ident="SHOP"))))  # -1
    assert await totals(gw) == (1201, -1)
    assert await status(gw) == (True, True, False)
    await refused_as_auto(gw)


async def test_negative_margin_off_does_not_blacklist(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=100_000, negative_margin=False))
    await bought(gw, order(item("S1", 1, 1000, discount(900, None, ident="SHOP"))))
    assert await totals(gw) == (900, -700)
    assert await status(gw) == (False, False, False)
    await passes(gw)


async def test_sku_without_cost_price_adds_no_margin(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=None, negative_margin=True))
    await bought(gw, order(item("S2", 1, 1000, discount(990, None, ident="SHOP"))))
    assert await totals(gw) == (990, 0)
    assert await status(gw) == (False, False, False)
    await passes(gw)


async def test_either_condition_blacklists(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000, negative_margin=True))
    await bought(gw, order(item("S1", 1, 1000, discount(300, None, ident="SHOP")), user="loss"))
    await bought(gw, off(1000, user="farmer"))
    assert await totals(gw, "loss") == (300, -100)
    assert await totals(gw, "farmer") == (1000, 3200)
    assert await status(gw, "loss") == (True, True, False)
    assert await status(gw, "farmer") == (True, True, False)
    await refused_as_auto(gw, "loss")
    await refused_as_auto(gw, "farmer")


# -- only confirmed orders count --------------------------------------------------------------------


async def test_held_orders_do_not_count_until_confirmed(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000, negative_margin=True))
    held = off(4000)
    assert (await gw.check(held))["decision"] == "allow"
    loss = order(item("S1", 1, 1000, discount(900, None, ident="SHOP")))
    assert (await gw.check(loss))["decision"] == "allow"
    assert await totals(gw) == (0, 0)
    assert await status(gw) == (False, False, False)
    await passes(gw)
    await gw.confirm(held["order_id"])
    assert await totals(gw) == (4000, 200)
    await refused_as_auto(gw)


async def test_cancelled_and_expired_holds_never_count(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000, negative_margin=True))
    cancelled, expired = off(4000), order(item("S1", 1, 1000, discount(900, None, ident="SHOP")))
    assert (await gw.check(cancelled))["decision"] == "allow"
    assert (await gw.check(expired))["decision"] == "allow"
    await gw.cancel(cancelled["order_id"])
    await gw.advance(HOLD_TTL)
    await gw.confirm(expired["order_id"], status=410)
    await gw.confirm(cancelled["order_id"], status=409)
    assert await totals(gw) == (0, 0)
    await passes(gw)


async def test_repeated_confirm_counts_once(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000))
    body = off(600)
    await bought(gw, body)
    assert (await gw.confirm(body["order_id"]))["state"] == "confirmed"
    assert await totals(gw) == (600, 3600)
    await passes(gw)


# -- cancelling a confirmed order ------------------------------------------------------------------


async def test_cancelling_a_confirmed_order_takes_its_amounts_back(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000))
    first, second = off(600), off(500)
    await bought(gw, first)
    await bought(gw, second)
    assert await totals(gw) == (1100, 3600 + 3700)
    assert await status(gw) == (True, True, False)
    await refused_as_auto(gw)
    assert (await gw.cancel(second["order_id"]))["state"] == "cancelled"
    assert await totals(gw) == (600, 3600)
    assert await status(gw) == (False, False, False)
    await passes(gw)
    # A repeated cancel takes nothing more.
    await gw.cancel(second["order_id"])
    assert await totals(gw) == (600, 3600)


async def test_cancelling_the_loss_making_order_lifts_the_blacklisting(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=None, negative_margin=True))
    loss = order(item("S1", 1, 1000, discount(300, None, ident="SHOP")))
    await bought(gw, loss)
    await refused_as_auto(gw)
    await gw.cancel(loss["order_id"])
    assert await totals(gw) == (0, 0)
    assert await status(gw) == (False, False, False)
    await passes(gw)


async def test_cancel_takes_amounts_back_without_release_on_cancel(gw_factory: MakeGateway) -> None:
    cfg = auto_config(discount_cost=1000)
    cfg["settings"]["release_on_cancel"] = False
    gw = await gw_factory(cfg)
    body = off(1000)
    await bought(gw, body)
    await refused_as_auto(gw)
    await gw.cancel(body["order_id"])
    # Quotas and budget stay used, but a cancelled order is not a farmed one.
    assert await totals(gw) == (0, 0)
    assert (await gw.activity("A1"))["spent"] == 1000
    await passes(gw)


# -- blacklisted: what follows ----------------------------------------------------------------------


async def test_auto_blacklisted_user_cannot_claim_a_coupon(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000, coupons=[{"coupon_id": "C1", "activity_id": "A1"}]))
    await bought(gw, off(1000))
    res = await gw.claim({"user_id": "u1", "coupon_id": "C1"})
    assert res["decision"] == "deny"
    assert located(res["reasons"]) == [auto_reason()]
    assert (await gw.user("u1"))["counters"]["coupon"] == {}


async def test_whitelisted_user_is_never_auto_blacklisted_out(gw_factory: MakeGateway) -> None:
    cfg = auto_config(discount_cost=1000)
    cfg["lists"] = {"whitelist": {"user": ["staff-1"]}}
    gw = await gw_factory(cfg)
    await bought(gw, off(2000, user="staff-1"))
    assert await totals(gw, "staff-1") == (2000, 2200)
    res = await gw.check(order(user="staff-1"))
    assert res["decision"] == "allow"
    assert [r["code"] for r in res["reasons"]] == ["WHITELISTED"]
    assert [w["code"] for w in res["warnings"]] == ["BLACKLISTED"]


async def test_listed_and_auto_blacklisted_user_shows_both(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000))
    await bought(gw, off(1000))
    await gw.admin("PUT", "lists/blacklist/user/u1")
    assert await status(gw) == (True, True, True)
    res = await gw.check(order())
    assert res["decision"] == "deny"
    # One reason for the user, the listing first.
    assert [(r["code"], r["subject"], r["value"]) for r in res["reasons"]] == [("BLACKLISTED", "user", "u1")]


async def test_lowering_discount_cost_applies_at_the_next_check(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000))
    await bought(gw, off(600))
    await passes(gw)
    doc = await gw.admin("GET", "config")
    doc["auto_blacklist"] = {"discount_cost": 600, "negative_margin": False}
    await gw.admin("PUT", "config", doc)
    assert await status(gw) == (True, True, False)
    await refused_as_auto(gw)
    doc["auto_blacklist"] = {"discount_cost": 601, "negative_margin": False}
    await gw.admin("PUT", "config", doc)
    assert await status(gw) == (False, False, False)
    await passes(gw)


# -- pardon ----------------------------------------------------------------------------------------


async def test_pardon_lifts_the_blacklisting_and_restarts_the_totals(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000, negative_margin=True))
    await bought(gw, off(1200))
    await refused_as_auto(gw)
    res = await gw.admin("DELETE", "lists/blacklist/user/u1")
    assert res == {"list": "blacklist", "kind": "user", "value": "u1", "present": False}
    view = await gw.user("u1")
    assert view["auto_blacklist"] == {"discount_total": 0, "margin_total": 0}
    assert (view["blacklisted"], view["auto"], view["listed"]) == (False, False, False)
    # Lifetime counters are untouched: only the auto-blacklist totals restart.
    assert view["counters"]["sku"] == {"S1": 1}
    await passes(gw)
    # The old totals are forgiven: 600 more is below the threshold ...
    await bought(gw, off(600))
    assert await totals(gw) == (600, 3600)
    assert await status(gw) == (False, False, False)
    # ... and reaching it again blacklists again.
    await bought(gw, off(400))
    assert await status(gw) == (True, True, False)
    await refused_as_auto(gw)


async def test_pardon_of_a_listed_and_auto_blacklisted_user(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000))
    await bought(gw, off(1000))
    await gw.admin("PUT", "lists/blacklist/user/u1")
    await gw.admin("DELETE", "lists/blacklist/user/u1")
    assert await status(gw) == (False, False, False)
    assert await totals(gw) == (0, 0)
    assert (await gw.admin("GET", "lists"))["blacklist"].get("user", []) == []
    await passes(gw)


async def test_pardon_of_a_user_not_blacklisted_is_404_and_keeps_the_totals(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(auto_config(discount_cost=1000))
    await bought(gw, off(600))
    err = await gw.admin("DELETE", "lists/blacklist/user/u1", status=404)
    assert set(err) == {"error"} and err["error"]["code"] == "not_listed"
    assert await totals(gw) == (600, 3600)
    await bought(gw, off(400))
    assert await status(gw) == (True, True, False)
    assert (await gw.admin("DELETE", "lists/blacklist/user/nobody", status=404))["error"]["code"] == "not_listed"


async def test_cancelling_an_order_confirmed_before_the_pardon_gives_no_credit(gw_factory: MakeGateway) -> None:
    # Operator's view (the SPEC is silent): the pardon forgave the totals that order was part of;
    # taking it out again must not push the fresh totals below zero.
    gw = await gw_factory(auto_config(discount_cost=1000, negative_margin=True))
    first, second = off(600), off(500)
    await bought(gw, first)
    await bought(gw, second)
    await refused_as_auto(gw)
    await gw.admin("DELETE", "lists/blacklist/user/u1")
    assert await totals(gw) == (0, 0)
    await gw.cancel(second["order_id"])
    assert await totals(gw) == (0, 0)
    assert await status(gw) == (False, False, False)
    await passes(gw)
