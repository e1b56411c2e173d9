"""The checkout-facing endpoints (SPEC sections 3-4): check, confirm, cancel, look up, claim.

Each handler decodes its body, calls one synchronous coordinator method, awaits the journal's
commit (so nothing is acknowledged before it is durable) and answers.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway.codec import decode, digest, respond
from gateway.keys import COORDINATOR, DECISIONS, STATS
from domain.schema import CheckRequest, ClaimRequest

routes = web.RouteTableDef()


@routes.post("/v1/orders/check")
async def check(request: web.Request) -> web.Response:
    start = time.perf_counter()
    req = await decode(request, CheckRequest)
    coordinator = request.app[COORDINATOR]
    (response, repeated), lsn = request.app[DECISIONS].journaled(coordinator.check, req, digest(req))
    await coordinator.journal.commit()  # a repeat too: its first answer may still be on its way to disk
    if repeated:  # a checkout retry: decided, counted and logged the first time
        request.app[STATS].repeats += 1
        return respond(request, response)
    request.app[STATS].observe_check(response, time.perf_counter() - start, req)
    request.app[DECISIONS].check(req, response, coordinator.config.version, coordinator.clock.now(), lsn)
    return respond(request, response)


@routes.route("*", "/v1/orders/check")
async def check_wrong_method(request: web.Request) -> web.Response:
    """Any other method on the check's path is a 405 naming POST. Without this route a GET would
    fall to `GET /v1/orders/{order_id}` (404 "no order 'check'") and another method's Allow would
    list that route's GET."""
    raise web.HTTPMethodNotAllowed(request.method, ["POST"])


@routes.post("/v1/orders/{order_id}/confirm")
async def confirm(request: web.Request) -> web.Response:
    view, lsn = request.app[DECISIONS].journaled(request.app[COORDINATOR].confirm, request.match_info["order_id"])
    await request.app[COORDINATOR].journal.commit()
    request.app[DECISIONS].transition("confirm", view, view.updated_at, lsn)
    return respond(request, view)


@routes.post("/v1/orders/{order_id}/cancel")
async def cancel(request: web.Request) -> web.Response:
    view, lsn = request.app[DECISIONS].journaled(request.app[COORDINATOR].cancel, request.match_info["order_id"])
    await request.app[COORDINATOR].journal.commit()
    request.app[DECISIONS].transition("cancel", view, view.updated_at, lsn)
    return respond(request, view)


@routes.get("/v1/orders/{order_id}")
async def get_order(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    return respond(request, coordinator.view(coordinator.order(request.match_info["order_id"])))


@routes.post("/v1/coupons/claim-check")
async def claim_check(request: web.Request) -> web.Response:
    req = await decode(request, ClaimRequest)
    coordinator = request.app[COORDINATOR]
    response, lsn = request.app[DECISIONS].journaled(coordinator.claim, req)
    await coordinator.journal.commit()
    request.app[DECISIONS].claim(req, response, coordinator.config.version, coordinator.clock.now(), lsn)
    return respond(request, response)


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    coordinator = request.app[COORDINATOR]
    return respond(request, {"status": "ok", "now": coordinator.clock.now(), "orders": len(coordinator.orders)})
