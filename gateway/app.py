"""The aiohttp application: middlewares (errors, load shedding, admin auth), routes, lifecycle.

`make_app` wires a coordinator to HTTP. Its one cleanup context starts the expiry sweeper, yields
while the server runs, and stops the sweeper on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web

from gateway import admin, metrics, routes
from gateway.clock import Clock, ManualClock
from gateway.codec import ADMIN_BODY_LIMIT, error_body, respond
from gateway.coordinator import Coordinator, NoJournal, RecordSink
from gateway.errors import ApiError, Overloaded, Unauthorized
from gateway.keys import ADMIN_TOKEN, CLOCK, COORDINATOR, JOURNAL, LOAD, MANUAL_CLOCK, STATS, Load
from gateway.stats import Stats

log = logging.getLogger("flashguard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SWEEP_INTERVAL = 1.0
DEFAULT_MAX_INFLIGHT = 1024


def _error(request: web.Request, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return respond(request, error_body(code, message), status=status, headers=headers)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves in the SPEC's shape; a bug is a logged 500, never a dead server."""
    try:
        return await handler(request)
    except ApiError as e:
        return _error(request, e.status, e.code, e.message, e.headers)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(e.status, "http_error")
        return _error(request, e.status, code, e.reason, {k: v for k, v in e.headers.items() if k == "Allow"})
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(request, 500, "internal", "internal error; the request was not applied")


@web.middleware
async def shed_load(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Past the in-flight bound, answer 429 at once rather than queue without end."""
    if request.path.startswith("/v1/admin/") or request.path in ("/healthz", "/metrics"):
        return await handler(request)
    load = request.app[LOAD]
    if load.inflight >= load.limit:
        load.shed += 1
        raise Overloaded("overloaded", "too many requests in flight; retry shortly", {"Retry-After": "1"})
    load.inflight += 1
    try:
        return await handler(request)
    finally:
        load.inflight -= 1


@web.middleware
async def admin_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/v1/admin/"):
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        expected = request.app[ADMIN_TOKEN]
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise Unauthorized(
                "unauthorized", "admin calls need 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )
    return await handler(request)


async def sweep(coordinator: Coordinator, journal: RecordSink) -> None:
    """The one task that drains the expiry heap between requests."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        try:
            if coordinator.expire_due(coordinator.clock.now()):
                await journal.commit()
        except Exception:  # keep sweeping; the failure is logged and the next round retries
            log.exception("expiry sweep failed")


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(sweep(app[COORDINATOR], app[JOURNAL]), name="flashguard-sweeper")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def make_app(
    coordinator: Coordinator,
    *,
    admin_token: str,
    journal: RecordSink | None = None,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
) -> web.Application:
    app = web.Application(middlewares=[errors, shed_load, admin_auth], client_max_size=ADMIN_BODY_LIMIT)
    clock: Clock = coordinator.clock
    app[COORDINATOR] = coordinator
    app[JOURNAL] = journal or coordinator.journal or NoJournal()
    app[CLOCK] = clock
    if isinstance(clock, ManualClock):
        app[MANUAL_CLOCK] = clock
    app[ADMIN_TOKEN] = admin_token
    app[LOAD] = Load(max_inflight)
    app[STATS] = Stats()
    app.add_routes(routes.routes)
    app.add_routes(admin.routes)
    app.add_routes(metrics.routes)
    app.cleanup_ctx.append(_lifecycle)
    return app
