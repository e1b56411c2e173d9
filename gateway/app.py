"""The aiohttp application: middlewares (errors, load shedding, admin auth, disk guard), routes,
and the lifecycle.

`make_app` wires a coordinator to HTTP. Its one cleanup context restores the state from the data
directory (when there is one), settles the admin token, starts the background tasks (expiry
sweeper, periodic snapshots), yields while the server runs, then writes the final snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec
from aiohttp import web

from gateway import admin, console, metrics, openapi, routes
from domain.clock import Clock, ManualClock
from gateway.codec import ADMIN_BODY_LIMIT, error_body, respond
from domain.config import Config
from node.coordinator import Coordinator
from gateway.decisions import DecisionLog
from domain.errors import ApiError, Overloaded, Unauthorized, Unavailable
from gateway.keys import AUTH, CLOCK, COORDINATOR, DECISIONS, LOAD, MANUAL_CLOCK, RELOAD, SEED, SNAPSHOT_EVERY, STATS, STORE, Auth, Load
from gateway.stats import Stats
from snapshots.journal import DiskError
from snapshots.store import Store

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
    except DiskError as e:
        return _error(request, 503, "disk_unavailable", f"the change could not be made durable and was not acknowledged: {e}")
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
        expected = request.app[AUTH].token(request.app[COORDINATOR].config) or ""
        if scheme.lower() != "bearer" or not expected or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise Unauthorized(
                "unauthorized", "admin calls need 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"}
            )
    return await handler(request)


@web.middleware
async def disk_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """While the journal cannot write, refuse changes up front (503), so none is made in memory
    that could not be persisted; each refused call first retries the pending write."""
    journal = request.app[COORDINATOR].journal
    if request.method not in ("GET", "HEAD") and not journal.writable() and not await journal.retry():
        raise Unavailable("disk_unavailable", "the journal cannot write; no change is accepted until it can", {"Retry-After": "1"})
    return await handler(request)


async def sweep(coordinator: Coordinator, decisions: DecisionLog) -> None:
    """The one task that drains the expiry heap between requests (and flushes the decision log)."""
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        try:
            decisions.flush()
            if coordinator.journal.writable() or await coordinator.journal.retry():
                if coordinator.expire_due(coordinator.clock.now()):
                    await coordinator.journal.commit()
        except Exception:  # keep sweeping; the failure is logged and the next round retries
            log.exception("expiry sweep failed")


async def settle_token(auth: Auth, coordinator: Coordinator) -> None:
    """FLASHGUARD_ADMIN_TOKEN, else the configuration's, else a new one, printed at start and kept
    in the configuration (journaled), so a restart does not change it under the operators."""
    auth.fixed = auth.fixed or os.environ.get("FLASHGUARD_ADMIN_TOKEN")
    if not auth.token(coordinator.config):
        token = secrets.token_urlsafe(24)
        settings = msgspec.to_builtins(coordinator.config.settings)
        coordinator.change(("settings", {**settings, "admin_token": token}))
        await coordinator.journal.commit()
        print(f"admin token (set FLASHGUARD_ADMIN_TOKEN to choose one): {token}", flush=True)
    elif not auth.fixed:
        log.info("admin token: settings.admin_token of the configuration (set there, or made and printed at an earlier start)")


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    coordinator = app[COORDINATOR]
    store = app.get(STORE)
    tasks = [asyncio.create_task(sweep(coordinator, app[DECISIONS]), name="flashguard-sweeper")]
    if store is not None:
        report = store.restore(coordinator, app[SEED], app[RELOAD])
        log.info(
            "restored: snapshot %s, %d journal records replayed%s%s",
            report.snapshot.name if report.snapshot else "none",
            report.replayed,
            f", torn tail dropped ({report.torn})" if report.torn else "",
            ", data directory seeded with the configuration" if report.seeded else "",
        )
        await coordinator.journal.commit()
        app[DECISIONS].restore(coordinator, app[STATS])  # the figures, and the log lines a crash lost
        if app[SNAPSHOT_EVERY] > 0:
            tasks.append(asyncio.create_task(store.periodic(coordinator, app[SNAPSHOT_EVERY]), name="flashguard-snapshots"))
    await settle_token(app[AUTH], coordinator)
    gc.collect()
    gc.freeze()  # what restore built lives for the whole run: keep it out of every collection
    yield
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    app[DECISIONS].flush()
    if store is not None:
        await store.close(coordinator)


def make_app(
    coordinator: Coordinator,
    *,
    admin_token: str | None = None,
    store: Store | None = None,
    seed: Config | None = None,
    reload_config: bool = False,
    snapshot_every: float = 60.0,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
) -> web.Application:
    app = web.Application(middlewares=[errors, shed_load, admin_auth, disk_guard], client_max_size=ADMIN_BODY_LIMIT)
    clock: Clock = coordinator.clock
    app[COORDINATOR] = coordinator
    if store is not None:
        app[STORE] = store
    app[SEED] = seed or coordinator.config
    app[RELOAD] = reload_config
    app[SNAPSHOT_EVERY] = snapshot_every
    app[CLOCK] = clock
    if isinstance(clock, ManualClock):
        app[MANUAL_CLOCK] = clock
    app[AUTH] = Auth(admin_token)
    app[LOAD] = Load(max_inflight)
    app[STATS] = Stats()
    app[DECISIONS] = DecisionLog(store.directory / "decisions" if store is not None else None)
    app.add_routes(routes.routes)
    app.add_routes(admin.routes)
    app.add_routes(metrics.routes)
    app.add_routes(console.routes)
    app.add_routes(openapi.routes)
    app.cleanup_ctx.append(_lifecycle)
    return app
