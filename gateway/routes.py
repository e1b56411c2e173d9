"""The checkout-facing endpoints (SPEC sections 3-4): check, confirm, cancel, look up, claim.

Each handler decodes its body, awaits one call of the service (which answers only once the change
is durable: the journal's commit, or Redis), logs the decision and answers.
"""

from __future__ import annotations

import time

from aiohttp import web

from domain.schema import CheckRequest, ClaimRequest
from gateway.codec import CHECK_BODY_LIMIT, MSGPACK_TYPES, decode, decode_body, digest, read_body, respond
from gateway.keys import DECISIONS, SERVICE, STATS

routes = web.RouteTableDef()


@routes.post("/v1/orders/check")
async def check(request: web.Request) -> web.Response:
    start = time.perf_counter()
    body = await read_body(request, CHECK_BODY_LIMIT)
    content_type = request.content_type
    req = decode_body(body, content_type, CheckRequest)
    service = request.app[SERVICE]
    response, repeated, lsn, now = await service.check(req, digest(req))
    if repeated:  # a checkout retry: decided, counted and logged the first time
        request.app[STATS].repeats += 1
        return respond(request, response)
    one_line = content_type not in MSGPACK_TYPES and b"\n" not in body and b"\r" not in body
    request.app[DECISIONS].check(
        req, response, service.config.version, now, lsn, time.perf_counter() - start, body if one_line else None
    )
    return respond(request, response)


@routes.route("*", "/v1/orders/check")
async def check_wrong_method(request: web.Request) -> web.Response:
    """Any other method on the check's path is a 405 naming POST. Without this route a GET would
    fall to `GET /v1/orders/{order_id}` (404 "no order 'check'") and another method's Allow would
    list that route's GET."""
    raise web.HTTPMethodNotAllowed(request.method, ["POST"])


@routes.post("/v1/orders/{order_id}/confirm")
async def confirm(request: web.Request) -> web.Response:
    view, lsn = await request.app[SERVICE].confirm(request.match_info["order_id"])
    request.app[DECISIONS].transition("confirm", view, view.updated_at, lsn)
    return respond(request, view)


@routes.post("/v1/orders/{order_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    view, lsn = await request.app[SERVICE].cancel(request.match_info["order_id"])
    request.app[DECISIONS].transition("cancel", view, view.updated_at, lsn)
    return respond(request, view)


@routes.get("/v1/orders/{order_id}")
async def get_order(request: web.Request) -> web.Response:
    return respond(request, await request.app[SERVICE].view(request.match_info["order_id"]))


@routes.post("/v1/coupons/claim-check")
async def claim_check(request: web.Request) -> web.Response:
    req = await decode(request, ClaimRequest)
    service = request.app[SERVICE]
    response, lsn, now = await service.claim(req)
    request.app[DECISIONS].claim(req, response, service.config.version, now, lsn)
    return respond(request, response)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    await service.ping()  # cluster mode: one call to Redis, whose failure is the 503 a balancer acts on
    return respond(request, {"status": "ok", "now": await service.now()})
