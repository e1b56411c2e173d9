"""Bad input (SPEC section 1): a 4xx in the shape {"error": {"code", "message"}}, and no state change.

Each test first holds one good order, so that the counters it compares are not trivially zero, then
sends the bad input and reads everything back: the activity's held/spent, the user's counters and
the number of orders the coordinator knows.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest
from aiohttp import ClientResponse

from tests.conftest import Gateway, MakeGateway, base_config, discount, item, order

JSON_HEADERS = {"Content-Type": "application/json"}
MSGPACK_HEADERS = {"Content-Type": "application/msgpack"}
LIMIT = 64 * 1024


def assert_error_shape(data: Any) -> None:
    assert isinstance(data, dict) and set(data) == {"error"}, data
    err = data["error"]
    assert set(err) == {"code", "message"}, err
    assert isinstance(err["code"], str) and err["code"]
    assert isinstance(err["message"], str) and err["message"]


async def state(gw: Gateway) -> Any:
    act = await gw.activity("A1")
    user = await gw.user("u1")
    return (act["held"], act["spent"], user["counters"], user["windows"], len(gw.coordinator.orders))


async def seeded(gw: Gateway) -> tuple[dict[str, Any], Any]:
    """One held order for u1 with an A1 discount; returns it and the state after it."""
    body = order(item("S1", 1, 1000, discount(100)), order_id="seed")
    assert (await gw.check(body))["decision"] == "allow"
    before = await state(gw)
    assert before[0] == 100 and before[2]["sku"] == {"S1": 1}
    return body, before


async def post_raw(gw: Gateway, data: bytes, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await gw.client.post("/v1/orders/check", data=data, headers=headers or JSON_HEADERS)
    return resp.status, await decoded(resp)


async def decoded(resp: ClientResponse) -> Any:
    raw = await resp.read()
    if resp.content_type == "application/msgpack":
        return msgpack.unpackb(raw)
    assert resp.content_type == "application/json", resp.content_type
    return json.loads(raw)


def good() -> dict[str, Any]:
    return order(item("S1", 1, 1000, discount(100)), user="u1", order_id="bad-1")


def with_item(**changes: Any) -> dict[str, Any]:
    body = good()
    body["items"][0].update(changes)
    return body


def with_discount(**changes: Any) -> dict[str, Any]:
    body = good()
    body["items"][0]["discounts"][0].update(changes)
    return body


def with_top(**changes: Any) -> dict[str, Any]:
    body = good()
    body.update(changes)
    return body


def without(key: str) -> dict[str, Any]:
    body = good()
    del body[key]
    return body


BAD_BODIES: dict[str, Any] = {
    # wrong types
    "user_id int": with_top(user_id=123),
    "order_id null": with_top(order_id=None),
    "items object": with_top(items={"sku_id": "S1"}),
    "item is a string": with_top(items=["S1"]),
    "quantity string": with_item(quantity="1"),
    "unit_price string": with_item(unit_price="1000"),
    "discounts object": with_item(discounts={"id": "A1", "amount": 1}),
    "on_refusal unknown": with_top(on_refusal="maybe"),
    "funded_by unknown": with_discount(funded_by="nobody"),
    "receiver string": with_top(receiver="Zhang San"),
    "body is a list": [good()],
    "body is a string": "order",
    # floats for money and quantities
    "unit_price 1.0": with_item(unit_price=1.0),
    "unit_price 1000.0": with_item(unit_price=1000.0),
    "amount 5.5": with_discount(amount=5.5),
    "amount 100.0": with_discount(amount=100.0),
    "quantity 1.0": with_item(quantity=1.0),
    "quantity 1.5": with_item(quantity=1.5),
    # booleans for ints
    "quantity true": with_item(quantity=True),
    "unit_price true": with_item(unit_price=True),
    "amount false": with_discount(amount=False),
    # quantities and money out of range
    "quantity 0": with_item(quantity=0),
    "quantity -1": with_item(quantity=-1),
    "unit_price -1": with_item(unit_price=-1),
    "amount -5": with_discount(amount=-5),
    # empty and missing
    "items empty": with_top(items=[]),
    "order_id missing": without("order_id"),
    "user_id missing": without("user_id"),
    "items missing": without("items"),
    "sku_id missing": {**good(), "items": [{"quantity": 1, "unit_price": 1000}]},
    # ids
    "order_id 129 chars": with_top(order_id="o" * 129),
    "user_id 129 chars": with_top(user_id="u" * 129),
    "sku_id 129 chars": with_item(sku_id="S" * 129),
    "device_id 129 chars": with_top(device_id="d" * 129),
    "discount id 129 chars": with_discount(id="D" * 129),
    "activity_id 129 chars": with_discount(activity_id="A" * 129),
    "order_id empty": with_top(order_id=""),
    "user_id empty": with_top(user_id=""),
    "sku_id empty": with_item(sku_id=""),
    "device_id empty": with_top(device_id=""),
    "discount id empty": with_discount(id=""),
    # control characters (actor keys join ids with \x1f)
    "user_id with a unit separator": with_top(user_id="u\x1f1"),
    "order_id ending in a newline": with_top(order_id="o1\n"),
    "device_id with a NUL": with_top(device_id="d\x001"),
    "sku_id with a tab": with_item(sku_id="S\t1"),
    "discount id with a DEL": with_discount(id="D\x7f"),
    "activity_id with a newline": with_discount(activity_id="A\n1"),
    "non-ASCII user_id with a control character": with_top(user_id="用户\x1f1"),
    # unknown fields
    "item field quantty": {**good(), "items": [{"sku_id": "S1", "quantty": 1, "quantity": 1, "unit_price": 1000}]},
    "unknown top-level key": with_top(coupon="C1"),
    "unknown discount key": with_discount(amout=1),
    "unknown receiver key": with_top(receiver={"nmae": "Zhang San"}),
    "unknown address key": with_top(receiver={"address": {"provence": "Zhejiang"}}),
    # discounts exceeding the item's price
    "one discount over the price": with_item(unit_price=1000, discounts=[discount(1001)]),
    "discounts together over the price": with_item(unit_price=1000, discounts=[discount(600), discount(401, activity=None, ident="C")]),
    "over the price times quantity": with_item(quantity=2, unit_price=500, discounts=[discount(1001)]),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
async def test_bad_json_body_is_400_and_changes_nothing(gw: Gateway, name: str) -> None:
    _, before = await seeded(gw)
    status, data = await post_raw(gw, json.dumps(BAD_BODIES[name]).encode())
    assert status == 400, (name, data)
    assert_error_shape(data)
    assert await state(gw) == before
    assert "bad-1" not in gw.coordinator.orders


@pytest.mark.parametrize("name", list(BAD_BODIES))
async def test_bad_msgpack_body_is_400_and_changes_nothing(gw: Gateway, name: str) -> None:
    _, before = await seeded(gw)
    status, data = await post_raw(gw, msgpack.packb(BAD_BODIES[name]), MSGPACK_HEADERS)
    assert status == 400, (name, data)
    assert_error_shape(data)
    assert await state(gw) == before


@pytest.mark.parametrize(
    "raw",
    [
        b'{"order_id": "o-1", ',
        b"{'order_id': 'o-1'}",
        b'{"order_id": "o-1"} trailing',
        b"not json at all",
        b"\xff\xfe\x00",
        b"",
        b"   ",
        b"null",
        b"NaN",
    ],
)
async def test_malformed_json_is_400_and_changes_nothing(gw: Gateway, raw: bytes) -> None:
    _, before = await seeded(gw)
    status, data = await post_raw(gw, raw)
    assert status == 400, data
    assert_error_shape(data)
    assert await state(gw) == before


async def test_discounts_equal_to_the_price_are_accepted(gw: Gateway) -> None:
    # The boundary of "discounts exceeding the item price": exactly the price is fine.
    res = await gw.check(order(item("S1", 2, 500, discount(1000))))
    assert res["decision"] == "allow"
    assert res["payable"] == 0


async def test_id_of_exactly_128_characters_is_accepted(gw: Gateway) -> None:
    res = await gw.check(order(item("S1", 1, 1000), order_id="o" * 128, user="u" * 128))
    assert res["decision"] == "allow"
    assert res["order_id"] == "o" * 128


async def test_bad_body_reusing_an_existing_order_id_is_400_and_leaves_the_order(gw: Gateway) -> None:
    seed, before = await seeded(gw)
    bad = {**seed, "items": [{**seed["items"][0], "unit_price": 1000.0}]}
    status, data = await post_raw(gw, json.dumps(bad).encode())
    assert status == 400
    assert_error_shape(data)
    assert await state(gw) == before
    assert (await gw.get("seed"))["state"] == "held"


async def test_oversized_body_is_413_and_changes_nothing(gw: Gateway) -> None:
    _, before = await seeded(gw)
    text = json.dumps(good()).encode()
    padded = text + b" " * (LIMIT + 1 - len(text))
    assert len(padded) == LIMIT + 1
    status, data = await post_raw(gw, padded)
    assert status == 413, data
    assert_error_shape(data)
    assert await state(gw) == before


async def test_body_of_exactly_64_kib_is_accepted(gw: Gateway) -> None:
    text = json.dumps(good()).encode()
    padded = text + b" " * (LIMIT - len(text))
    assert len(padded) == LIMIT
    status, data = await post_raw(gw, padded)
    assert status == 200, data
    assert data["decision"] == "allow"


async def test_oversized_chunked_body_is_413_and_changes_nothing(gw: Gateway) -> None:
    _, before = await seeded(gw)

    async def chunks() -> AsyncIterator[bytes]:
        yield json.dumps(good()).encode()
        for _ in range(10):
            yield b" " * 8192

    resp = await gw.client.post("/v1/orders/check", data=chunks(), headers=JSON_HEADERS)
    assert resp.status == 413
    assert_error_shape(await decoded(resp))
    assert await state(gw) == before


async def test_large_body_is_413_even_when_huge(gw: Gateway) -> None:
    _, before = await seeded(gw)
    body = good()
    body["items"] = [item("S1", 1, 1000) for _ in range(5000)]
    status, data = await post_raw(gw, json.dumps(body).encode())
    assert status == 413, data
    assert_error_shape(data)
    assert await state(gw) == before


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc1",  # a byte msgpack never uses
        b"\x82\xa8order_id",  # a map cut short
        msgpack.packb(good())[:-3],  # truncated
        msgpack.packb(good()) + b"\x01",  # trailing data
        msgpack.packb({1: "x"}),  # a non-string key
        msgpack.packb([1, 2, 3]),
        msgpack.packb(None),
        json.dumps(good()).encode(),  # JSON sent as msgpack
        b"\x91" * 2000 + b"\x01",  # arrays nested past msgpack's depth limit
    ],
)
async def test_malformed_msgpack_is_400_and_changes_nothing(gw: Gateway, raw: bytes) -> None:
    _, before = await seeded(gw)
    status, data = await post_raw(gw, raw, MSGPACK_HEADERS)
    assert status == 400, data
    assert_error_shape(data)
    assert not data["error"]["message"].endswith(": "), data  # the decoder's text is empty for some
    assert await state(gw) == before


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param(b"\xc1", "the body is not valid MessagePack: it holds a byte that starts no value (such as the reserved 0xc1)", id="reserved"),
        pytest.param(msgpack.packb(good()) + b"\x01", "the body is not valid MessagePack: more bytes follow its value", id="trailing"),
        pytest.param(b"\x91" * 2000 + b"\x01", "the body is nested too deeply", id="deep"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/orders/check"),
        ("POST", "/v1/coupons/claim-check"),
        ("PUT", "/v1/admin/config"),
        ("PUT", "/v1/admin/skus/S9"),
        ("PATCH", "/v1/admin/settings"),
        ("POST", "/v1/admin/clock"),
    ],
)
async def test_malformed_msgpack_is_explained_on_every_endpoint(gw: Gateway, method: str, path: str, raw: bytes, message: str) -> None:
    # msgpack's own text is empty for a reserved byte and for deep nesting (it was "...MessagePack: ").
    resp = await gw.client.request(method, path, data=raw, headers={**MSGPACK_HEADERS, **gw.auth})
    assert resp.status == 400
    assert (await decoded(resp))["error"] == {"code": "malformed_body", "message": message}


async def test_bin_strings_in_msgpack_are_refused(gw: Gateway) -> None:
    _, before = await seeded(gw)
    body = good()
    body["user_id"] = b"u1"
    status, data = await post_raw(gw, msgpack.packb(body, use_bin_type=True), MSGPACK_HEADERS)
    assert status == 400, data
    assert_error_shape(data)
    assert await state(gw) == before


async def test_good_msgpack_body_is_accepted(gw: Gateway) -> None:
    status, data = await post_raw(gw, msgpack.packb(good()), {**MSGPACK_HEADERS, "Accept": "application/msgpack"})
    assert status == 200, data
    assert data["decision"] == "allow" and data["payable"] == 900
    assert (await gw.activity("A1"))["held"] == 100


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/nope"),
        ("GET", "/"),
        ("POST", "/v1/orders/check/extra"),
        ("POST", "/v1/orders/o-1/refund"),
        ("GET", "/v2/orders/check"),
    ],
)
async def test_unknown_route_is_404_in_the_error_shape(gw: Gateway, method: str, path: str) -> None:
    _, before = await seeded(gw)
    resp = await gw.client.request(method, path, json=good())
    assert resp.status == 404
    assert_error_shape(await decoded(resp))
    assert await state(gw) == before


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/orders/check", "POST"),  # not the order named 'check'
        ("DELETE", "/v1/orders/check", "POST"),  # not the methods of /v1/orders/{order_id} too
        ("PATCH", "/v1/orders/check", "POST"),
        ("PUT", "/v1/orders/check", "POST"),
        ("DELETE", "/v1/orders/seed", "GET,HEAD"),
        ("GET", "/v1/orders/seed/confirm", "POST"),
        ("GET", "/v1/orders/seed/cancel", "POST"),
        ("GET", "/v1/coupons/claim-check", "POST"),
        ("POST", "/healthz", "GET,HEAD"),
    ],
)
async def test_wrong_method_is_405_in_the_error_shape(gw: Gateway, method: str, path: str, allow: str) -> None:
    _, before = await seeded(gw)
    resp = await gw.client.request(method, path)
    assert resp.status == 405
    assert_error_shape(await decoded(resp))
    assert set(resp.headers["Allow"].split(",")) == set(allow.split(","))
    assert await state(gw) == before
    assert (await gw.get("seed"))["state"] == "held"


async def test_msgpack_response_when_accept_asks_for_it(gw: Gateway) -> None:
    body = good()
    resp = await gw.client.post("/v1/orders/check", json=body, headers={"Accept": "application/msgpack"})
    assert resp.status == 200
    assert resp.content_type == "application/msgpack"
    data = msgpack.unpackb(await resp.read())
    assert data["decision"] == "allow"
    assert data["hold"] == {"expires_at": gw.clock.now() + 900}
    # The same order, read back as JSON, says the same thing.
    assert await gw.check(body) == data
    resp = await gw.client.get("/v1/orders/bad-1", headers={"Accept": "application/msgpack"})
    assert resp.content_type == "application/msgpack"
    assert msgpack.unpackb(await resp.read())["state"] == "held"


async def test_errors_are_msgpack_when_accept_asks_for_it(gw: Gateway) -> None:
    resp = await gw.client.post("/v1/orders/check", data=b"{", headers={**JSON_HEADERS, "Accept": "application/msgpack"})
    assert resp.status == 400
    assert resp.content_type == "application/msgpack"
    assert_error_shape(msgpack.unpackb(await resp.read()))
    resp = await gw.client.get("/v1/orders/nope", headers={"Accept": "application/msgpack"})
    assert resp.status == 404
    assert_error_shape(msgpack.unpackb(await resp.read()))


async def test_json_response_by_default(gw: Gateway) -> None:
    resp = await gw.client.post("/v1/orders/check", json=good())
    assert resp.content_type == "application/json"
    assert (await resp.json())["decision"] == "allow"


async def test_server_keeps_working_after_bad_input(gw: Gateway) -> None:
    for raw in (b"{", b"\xc1", json.dumps(with_item(quantity=0)).encode()):
        await post_raw(gw, raw)
    assert (await gw.check(order())).get("decision") == "allow"
    resp = await gw.client.get("/healthz")
    assert resp.status == 200


# -- load shedding -------------------------------------------------------------------------


async def test_overloaded_check_is_429_with_retry_after(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(base_config(), max_inflight=0)
    resp = await gw.client.post("/v1/orders/check", json=good())
    assert resp.status == 429
    assert "Retry-After" in resp.headers
    assert int(resp.headers["Retry-After"]) >= 1
    assert_error_shape(await decoded(resp))
    assert len(gw.coordinator.orders) == 0
    act = await gw.activity("A1")  # admin calls are not shed
    assert (act["held"], act["spent"]) == (0, 0)
    assert (await gw.user("u1"))["counters"]["sku"] == {}


async def test_overloaded_gateway_still_answers_healthz(gw_factory: MakeGateway) -> None:
    gw = await gw_factory(base_config(), max_inflight=0)
    for _ in range(3):
        resp = await gw.client.post("/v1/orders/check", json=order())
        assert resp.status == 429
    health = await gw.client.get("/healthz")
    assert health.status == 200
    assert (await health.json())["status"] == "ok"


async def test_an_id_with_a_control_character_is_named_in_the_error(gw: Gateway) -> None:
    status, data = await post_raw(gw, json.dumps(BAD_BODIES["sku_id with a tab"]).encode())
    assert status == 400
    assert data["error"]["message"].startswith("items[0].sku_id may not contain control characters ('S\\t1')"), data


async def test_non_ascii_ids_are_accepted(gw: Gateway) -> None:
    res = await gw.check(order(item("S1", 1, 1000), user="用户一号"))
    assert res["decision"] == "allow", res


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("unit_price 1.0", "unit_price"),
        ("amount 5.5", "amount"),
        ("quantity true", "quantity"),
        ("quantity 0", "quantity"),
        ("order_id 129 chars", "order_id"),
        ("item field quantty", "quantty"),
        ("unknown top-level key", "coupon"),
        ("one discount over the price", "items[0]"),
    ],
)
async def test_error_message_names_the_field(gw: Gateway, name: str, field: str) -> None:
    status, data = await post_raw(gw, json.dumps(BAD_BODIES[name]).encode())
    assert status == 400
    assert field in data["error"]["message"], data
