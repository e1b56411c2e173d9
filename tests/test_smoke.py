"""The SPEC's example order goes through the whole path: check, hold, confirm, look up."""

from __future__ import annotations

from tests.conftest import ADDRESS, Gateway, MakeGateway, base_config, discount, item, order


async def test_allow_holds_and_confirm_makes_it_permanent(gw: Gateway) -> None:
    body = order(item("S1", 1, 1000, discount(100)), device="d1", name="Zhang San", phone="13900000000", address=ADDRESS)
    res = await gw.check(body)
    assert res["decision"] == "allow"
    assert res["reasons"] == [] and res["message"] is None
    assert res["hold"] == {"expires_at": gw.clock.now() + 900}
    assert res["payable"] == 900
    assert (await gw.activity("A1"))["held"] == 100
    view = await gw.confirm(body["order_id"])
    assert view["state"] == "confirmed"
    act = await gw.activity("A1")
    assert (act["held"], act["spent"]) == (0, 100)
    assert (await gw.get(body["order_id"]))["state"] == "confirmed"


async def test_spec_example_body_is_accepted(gw_factory: MakeGateway) -> None:
    cfg = base_config(
        skus=[{"sku_id": "S1", "spu_id": "P1", "cost_price": 500000, "original_price": 599900,
               "price_fuse": {"base": "cost", "ratio": "0.8"}, "limits": {"user": 2}}],
        coupons=[{"coupon_id": "C1", "activity_id": "A1", "per_user_limit": 1}],
    )
    gw = await gw_factory(cfg)
    body = {
        "order_id": "o-1", "user_id": "u1", "device_id": "d1", "ip": "10.0.0.1",
        "receiver": {"name": "Zhang San", "phone": "13900000000", "address": ADDRESS},
        "items": [{"sku_id": "S1", "quantity": 1, "unit_price": 599900,
                   "discounts": [{"id": "A1", "kind": "activity", "activity_id": "A1", "amount": 100000},
                                 {"id": "C1", "kind": "coupon", "activity_id": "A1", "amount": 50000},
                                 {"id": "BEANS", "kind": "points", "amount": 1000, "funded_by": "partner"}]}],
        "on_refusal": "deny",
    }
    res = await gw.check(body)
    assert res["decision"] == "allow", res
    assert res["payable"] == 599900 - 151000
    assert (await gw.activity("A1"))["held"] == 150000
