"""The aiohttp application: one middleware (errors, load shedding, admin auth, and on the single
node the disk guard), routes, and the lifecycle.

`make_app` wires either mode's state to HTTP through its `service`. Its one cleanup context lets
the service restore (single node: the data directory) or connect (cluster: seed the configuration
store), settles the admin token, runs the background tasks the service started (sweeper,
snapshots, configuration polling) while the server runs, then lets the service stop (single node:
the final snapshot).
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
from pathlib import Path

from aiohttp import web

from cluster.connection import RedisDown
from cluster.coordinator import ClusterCoordinator
from domain.config import Config
from domain.errors import ApiError, Overloaded, Unauthorized, Unavailable
from gateway import admin, console, metrics, openapi, routes
from gateway.codec import ADMIN_BODY_LIMIT, error_body, respond
from gateway.decisions import DecisionLog
from gateway.keys import AUTH, COORDINATOR, DECISIONS, LOAD, SERVICE, STATS, STORE, Auth, Load
from gateway.service import ClusterService, NodeService, Service
from gateway.stats import Stats
from node.coordinator import Coordinator
from snapshots.journal import DiskError
from snapshots.store import Store

log = logging.getLogger("flashguard")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEFAULT_MAX_INFLIGHT = 1024
# Middle-generation collections between two full ones (CPython's default: 10). What the state
# holds is untracked or frozen at start, so a full collection only rescans the connections and
# finds next to nothing (14 objects in 20 s of a spike), yet at the default it ran every second
# for 4-5 ms (up to 23): answers queued behind it made the p99. At 100: one every ten seconds or so.
FULL_COLLECTION_AFTER = 100


def _error(request: web.Request, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    if status >= 500:  # a check answered 503 is in no decision count: count it here
        request.app[STATS].failures[code] += 1
    return respond(request, error_body(code, message), status=status, headers=headers)


UNGUARDED = frozenset({"/healthz", "/metrics"})  # never shed: the balancer's and Prometheus' view


@web.middleware
async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one middleware, so that a check pays for one layer, not four: every error leaves in
    the SPEC's shape (a bug is a logged 500, never a dead server); past the in-flight bound the
    checkout calls get a 429 at once rather than queue without end; admin calls need the token;
    and on the single node, changes are refused while the journal cannot write."""
    load = request.app[LOAD]
    admitted = False
    try:
        path = request.path
        if path.startswith("/v1/admin/"):
            _authorize(request)
        elif path not in UNGUARDED:
            if load.inflight >= load.limit:
                load.shed += 1
                raise Overloaded("overloaded", "too many requests in flight; retry shortly", {"Retry-After": "1"})
            load.inflight += 1
            admitted = True
        if request.method not in ("GET", "HEAD"):
            await _writable(request)
        return await handler(request)
    except ApiError as e:
        return _error(request, e.status, e.code, e.message, e.headers)
    except DiskError as e:
        return _error(request, 503, "disk_unavailable", f"the change could not be made durable and was not acknowledged: {e}")
    except RedisDown as e:
        return _error(
            request, 503, "redis_unavailable", f"Redis cannot be reached; nothing was acknowledged, retry: {e}", {"Retry-After": "1"}
        )
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
    finally:
        if admitted:
            load.inflight -= 1


def _authorize(request: web.Request) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    expected = request.app[AUTH].token(request.app[SERVICE].config) or ""
    if scheme.lower() != "bearer" or not expected or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthorized("unauthorized", "admin calls need 'Authorization: Bearer <token>'", {"WWW-Authenticate": "Bearer"})


async def _writable(request: web.Request) -> None:
    """While the single node's journal cannot write, refuse changes up front (503), so none is
    made in memory that could not be persisted; each refused call first retries the pending write.
    (In cluster mode Redis refuses them itself.)"""
    coordinator = request.app.get(COORDINATOR)
    if coordinator is not None and not coordinator.journal.writable() and not await coordinator.journal.retry():
        raise Unavailable("disk_unavailable", "the journal cannot write; no change is accepted until it can", {"Retry-After": "1"})


async def settle_token(auth: Auth, service: Service) -> None:
    """FLASHGUARD_ADMIN_TOKEN, else the configuration's, else a new one, printed at start and kept
    in the configuration (journaled, or in Redis), so a restart does not change it under the operators."""
    auth.fixed = auth.fixed or os.environ.get("FLASHGUARD_ADMIN_TOKEN")
    if not auth.token(service.config):
        token = secrets.token_urlsafe(24)
        if await service.admin_token(token) == token:  # another gateway's may have stood first
            print(f"admin token (set FLASHGUARD_ADMIN_TOKEN to choose one): {token}", flush=True)
        else:
            log.info("admin token: the one another gateway made and printed at its start (settings.admin_token)")
    elif not auth.fixed:
        log.info("admin token: settings.admin_token of the configuration (set there, or made and printed at an earlier start)")


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    service = app[SERVICE]
    tasks = await service.start()
    await settle_token(app[AUTH], service)
    gc.collect()
    gc.freeze()  # what restore built lives for the whole run: keep it out of every collection
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_AFTER)
    yield
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    try:
        app[DECISIONS].flush()  # before the final snapshot prunes the journal that could write its lines again
        await service.stop()
    finally:
        app[DECISIONS].close()


def make_app(
    state: Coordinator | ClusterCoordinator,
    *,
    admin_token: str | None = None,
    store: Store | None = None,
    seed: Config | None = None,
    reload_config: bool = False,
    snapshot_every: float = 60.0,
    max_inflight: int = DEFAULT_MAX_INFLIGHT,
    log_dir: Path | None = None,
) -> web.Application:
    """The app over a single node's coordinator (with its `store`, if it has a data directory) or
    a cluster coordinator (whose decision log goes to `log_dir`)."""
    stats = Stats()
    decisions = DecisionLog(store.directory / "decisions" if store is not None else log_dir, stats)
    service: Service
    if isinstance(state, Coordinator):
        service = NodeService(state, decisions, store, seed or state.config, reload_config, snapshot_every)
    else:
        service = ClusterService(state, decisions, seed or Config(), reload_config)
    app = web.Application(middlewares=[guard], client_max_size=ADMIN_BODY_LIMIT)
    app[SERVICE] = service
    if isinstance(state, Coordinator):
        app[COORDINATOR] = state
        if store is not None:
            app[STORE] = store
    app[AUTH] = Auth(admin_token)
    app[LOAD] = Load(max_inflight)
    app[STATS] = stats
    app[DECISIONS] = decisions
    app.add_routes(routes.routes)
    app.add_routes(admin.routes)
    app.add_routes(metrics.routes)
    app.add_routes(console.routes)
    app.add_routes(openapi.routes)
    app.cleanup_ctx.append(_lifecycle)
    return app
