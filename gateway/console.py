"""The operators' web console (issue 6): static files under `/console`, and the one admin call
that feeds its dashboard, `GET /v1/admin/overview`.

The page itself holds no data, so it loads without a token; everything it shows comes from
`/v1/admin/*` calls made with the token the operator types in (the `guard` middleware checks
them, this one included). The files are plain HTML, CSS and JavaScript: no build step, nothing
fetched from elsewhere, and a Content-Security-Policy that allows only this origin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from gateway.codec import respond
from domain.errors import BadRequest, NotFound
from gateway.keys import DECISIONS, SERVICE, STATS

routes = web.RouteTableDef()

CONSOLE_DIR = Path(__file__).parent / "console"
FILES = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
DEFAULT_TOP = 10
MAX_TOP = 100


def _file(name: str) -> web.Response:
    content_type = FILES.get(name)
    path = CONSOLE_DIR / name
    if content_type is None:
        raise NotFound("not_found", f"no console file {name!r}")
    if not path.is_file():
        raise NotFound("console_missing", f"the console file {name!r} is not installed (package data gateway/console/*)")
    return web.Response(body=path.read_bytes(), content_type=content_type, charset="utf-8", headers=HEADERS)


@routes.get("/console")
@routes.get("/console/")
async def console_index(request: web.Request) -> web.Response:
    return _file("index.html")


@routes.get("/console/{name}")
async def console_file(request: web.Request) -> web.Response:
    return _file(request.match_info["name"])


@routes.get("/v1/admin/overview")
async def overview(request: web.Request) -> web.Response:
    """Everything the dashboard shows in one read: counters, budgets, rules, lists, settings.

    Read-only: it expires nothing and journals nothing (the sweeper expires due holds every
    second), so it answers even while the journal cannot write."""
    try:
        top = int(request.query.get("top", DEFAULT_TOP))
    except ValueError:
        raise BadRequest("invalid_query", "top must be a whole number") from None
    if not 1 <= top <= MAX_TOP:
        raise BadRequest("invalid_query", f"top must be between 1 and {MAX_TOP}")
    request.app[DECISIONS].drain()  # the checks of this tick, counted
    service = request.app[SERVICE]
    stats = request.app[STATS]
    cfg = service.config
    now = await service.now()
    ledger = await service.activity_ledger(sorted(cfg.activities))

    activities: list[dict[str, Any]] = []
    for aid, activity in sorted(cfg.activities.items()):
        actor = ledger.activities.get(aid)
        spent, held = (actor.spent, actor.held) if actor is not None else (0, 0)
        budget = activity.budget
        activities.append(
            {
                "activity_id": aid,
                "budget": budget,
                "spent": spent,
                "held": held,
                "remaining": None if budget is None else max(budget - spent - held, 0),
                "fused": budget is not None and spent + held >= budget,
                "active": activity.active(now),
                "starts_at": activity.starts_at,
                "ends_at": activity.ends_at,
            }
        )

    multiplier = cfg.settings.multiplier
    rules = [
        {
            "rule_id": rid,
            "subject": rule.subject.value,
            "scope": msgspec.to_builtins(rule.scope),
            "window": rule.window,
            "window_seconds": rule.window_seconds,
            "max_quantity": rule.max_quantity,
            "limit": rule.limit(multiplier),
            "mode": rule.mode,
            "shadow_hits": stats.shadow.get(rid, 0),
        }
        for rid, rule in sorted(cfg.rules.items())
    ]

    users, addresses = stats.top_refused(top)
    settings = msgspec.to_builtins(msgspec.structs.replace(cfg.settings, admin_token=None))
    settings.pop("admin_token", None)
    return respond(
        request,
        {
            "now": now,
            "decisions": dict(stats.decisions),
            "reasons": dict(stats.reasons),
            "shadow_hits": dict(stats.shadow),
            "activities": activities,
            "top_refused_users": [{"user_id": u, "refused": n} for u, n in users],
            "top_refused_addresses": [{"address": a, "refused": n} for a, n in addresses],
            "rules": rules,
            "lists": {"blacklist": cfg.blacklist.to_doc(), "whitelist": cfg.whitelist.to_doc()},
            "settings": settings,
        },
    )
