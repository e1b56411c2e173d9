"""The admin API (SPEC section 5): the configuration, lists, settings, counters, and the clock.

Every change is built as a record (see `rules.changes`) and applied through the service (journaled
by the single node, stored in Redis in cluster mode); the change is in force for the next check. The bearer token is checked by the
middleware in `app`, not here.
"""

from __future__ import annotations

from typing import Any, get_args

import msgspec
from aiohttp import web

from rules.changes import validate_entry
from domain.clock import ClockError
from gateway.codec import decode, parse, respond
from domain.config import SECTIONS, Settings
from domain.document import ConfigError, convert_entry, read_config
from domain.errors import BadRequest, Conflict, NotFound, Unavailable
from gateway.keys import COORDINATOR, DECISIONS, SERVICE, STORE
from domain.lists import LIST_KINDS, LIST_VALUE, ListKind, ListName, normalize_list_value
from domain.schema import ClockRequest
from rules.subjects import auto_blacklisted
from domain.types import SEP, Record, key
from snapshots.store import SnapshotFailed

routes = web.RouteTableDef()

_SECTION_PATTERN = "{section:" + "|".join(SECTIONS) + "}"
_LIST_PATTERN = "/v1/admin/lists/{name}/{kind}/{value:.+}"
_LIST_NAMES: tuple[ListName, ...] = get_args(ListName)


async def _change(request: web.Request, record: Record) -> None:
    try:
        await request.app[SERVICE].change(record)
    except ConfigError as e:
        raise BadRequest("invalid_config", "; ".join(e.errors)) from None


@routes.get("/v1/admin/config")
async def get_config(request: web.Request) -> web.Response:
    return respond(request, request.app[SERVICE].config.to_doc())


@routes.put("/v1/admin/config")
async def put_config(request: web.Request) -> web.Response:
    doc = await parse(request)
    try:
        read_config(doc)  # validate (references included) before anything is journaled
    except ConfigError as e:
        raise BadRequest("invalid_config", "; ".join(e.errors)) from None
    await _change(request, ("config", doc))
    return respond(request, request.app[SERVICE].config.to_doc())


@routes.put("/v1/admin/" + _SECTION_PATTERN + "/{ident}")
async def put_entry(request: web.Request) -> web.Response:
    section, ident = request.match_info["section"], request.match_info["ident"]
    raw = await parse(request)
    try:
        entry = validate_entry(section, ident, raw)
    except ConfigError as e:
        raise BadRequest("invalid_config", "; ".join(e.errors)) from None
    builtins = msgspec.to_builtins(entry)
    await _change(request, ("put", section, ident, builtins))
    return respond(request, builtins)


@routes.delete("/v1/admin/" + _SECTION_PATTERN + "/{ident}")
async def delete_entry(request: web.Request) -> web.Response:
    section, ident = request.match_info["section"], request.match_info["ident"]
    if ident not in request.app[SERVICE].config.section(section):
        raise NotFound("unknown_entry", f"no {section} entry {ident!r}")
    await _change(request, ("delete", section, ident))
    return respond(request, {"deleted": ident})


@routes.get("/v1/admin/lists")
async def get_lists(request: web.Request) -> web.Response:
    cfg = request.app[SERVICE].config
    return respond(request, {"blacklist": cfg.blacklist.to_doc(), "whitelist": cfg.whitelist.to_doc()})


def _list_entry(request: web.Request) -> tuple[ListName, ListKind, str]:
    """The list, kind and value a list call names. The route takes any name and kind so that a
    wrong one is answered with the valid ones, not with a bare 404."""
    name, kind, value = request.match_info["name"], request.match_info["kind"], request.match_info["value"]
    if name not in _LIST_NAMES:
        raise NotFound("unknown_list", f"no list {name!r}; lists are {', '.join(_LIST_NAMES)}")
    if kind not in LIST_KINDS:
        raise NotFound("unknown_list_kind", f"no list kind {kind!r}; kinds are {', '.join(LIST_KINDS)}")
    return name, kind, value


@routes.put(_LIST_PATTERN)
async def put_list_entry(request: web.Request) -> web.Response:
    name, kind, value = _list_entry(request)
    try:
        msgspec.convert(value, LIST_VALUE[kind])
    except msgspec.ValidationError as e:
        raise BadRequest("invalid_value", f"{value!r} is not a valid {kind} entry: {e}") from None
    if not normalize_list_value(kind, value):
        raise BadRequest("invalid_value", f"{value!r} is not a usable {kind} entry")
    await _change(request, ("list", name, kind, value, True))
    return respond(request, {"list": name, "kind": kind, "value": value, "present": True})


@routes.delete(_LIST_PATTERN)
async def delete_list_entry(request: web.Request) -> web.Response:
    name, kind, value = _list_entry(request)
    service = request.app[SERVICE]
    cfg = service.config
    listed = cfg.list_set(name).has(kind, normalize_list_value(kind, value))
    user = (await service.user_ledger(value)).find(key("user", value)) if name == "blacklist" and kind == "user" else None
    auto = user is not None and auto_blacklisted(cfg, user)
    if not listed and not auto:
        raise NotFound("not_listed", f"{value!r} is not on the {name} as a {kind}")
    await _change(request, ("list", name, kind, value, False))
    return respond(request, {"list": name, "kind": kind, "value": value, "present": False})


@routes.patch("/v1/admin/settings")
async def patch_settings(request: web.Request) -> web.Response:
    patch = await parse(request)
    if not isinstance(patch, dict):
        raise BadRequest("invalid_config", "settings: expected an object of settings to change")
    current = msgspec.to_builtins(request.app[SERVICE].config.settings)
    merged = {**current, **patch}
    if isinstance(patch.get("messages"), dict):  # one message changed keeps the other overrides
        merged["messages"] = {**current.get("messages", {}), **patch["messages"]}
    try:
        convert_entry(merged, Settings, "settings")
    except ConfigError as e:
        raise BadRequest("invalid_config", "; ".join(e.errors)) from None
    await _change(request, ("settings", merged))
    return respond(request, request.app[SERVICE].config.to_doc()["settings"])


@routes.get("/v1/admin/activities/{ident}")
async def get_activity(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    ident = request.match_info["ident"]
    activity = service.config.activities.get(ident)
    actor = (await service.activity_ledger([ident])).activities.get(ident)
    if activity is None and actor is None:
        raise NotFound("unknown_activity", f"no activity {ident!r}")
    held = actor.held if actor is not None else 0
    spent = actor.spent if actor is not None else 0
    budget = activity.budget if activity is not None else None
    out: dict[str, Any] = {
        "activity_id": ident,
        "configured": activity is not None,
        "budget": budget,
        "spent": spent,
        "held": held,
        "remaining": None if budget is None else max(budget - spent - held, 0),
        "fused": budget is not None and spent + held >= budget,
        "active": activity is not None and activity.active(await service.now()),
    }
    return respond(request, out)


@routes.get("/v1/admin/users/{ident}")
async def get_user(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    ident = request.match_info["ident"]
    cfg = service.config
    now = await service.now()
    actor = (await service.user_ledger(ident)).find(key("user", ident))
    counters: dict[str, dict[str, int]] = {"sku": {}, "spu": {}, "activity": {}, "activity_sku": {}, "coupon": {}}
    windows: list[dict[str, Any]] = []
    if actor is not None:
        names = {"sku": "sku", "spu": "spu", "act": "activity", "actsku": "activity_sku", "coupon": "coupon"}
        for counter, qty in sorted(actor.counts.items()):
            kind, *ids = counter.split(SEP)
            counters[names[kind]]["/".join(ids)] = qty
        for wkey, window in sorted(actor.windows.items()):
            field, value, _ = wkey.split(SEP)
            windows.append({"scope": {field: value} if field else {}, "window": window.seconds, "quantity": window.count(now)})
    auto = actor is not None and auto_blacklisted(cfg, actor)
    return respond(
        request,
        {
            "user_id": ident,
            "counters": counters,
            "windows": windows,
            "auto_blacklist": {
                "discount_total": actor.discount_total if actor is not None else 0,
                "margin_total": actor.margin_total if actor is not None else 0,
            },
            "blacklisted": cfg.blacklist.has("user", ident) or auto,
            "auto": auto,
            "listed": cfg.blacklist.has("user", ident),
            "whitelisted": cfg.whitelist.has("user", ident),
        },
    )


@routes.post("/v1/admin/clock")
async def move_clock(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    if not service.manual_clock:
        raise NotFound("not_found", "the clock can be moved only when the server runs with --manual-clock")
    req = await decode(request, ClockRequest)
    try:
        now, expired = await service.move_clock(req.advance or 0, req.set)
    except ClockError as e:
        raise BadRequest("invalid_clock", str(e)) from None
    return respond(request, {"now": now, "expired": expired})


DECISION_FILTERS = frozenset({"user_id", "order_id", "code", "since", "limit"})


@routes.get("/v1/admin/decisions")
async def decisions(request: web.Request) -> web.Response:
    """Why was this buyer refused? Filters: user_id, order_id, code, since (unix seconds), limit."""
    q = request.query
    unknown = sorted(set(q) - DECISION_FILTERS)
    if unknown:  # a typo would otherwise answer every decision, unfiltered
        raise BadRequest("invalid_query", f"unknown parameter {', '.join(unknown)} (use {', '.join(sorted(DECISION_FILTERS))})")
    try:
        since = float(q["since"]) if "since" in q else None
        limit = int(q.get("limit", "100"))
    except ValueError:
        raise BadRequest("invalid_query", "since is unix seconds, limit a whole number") from None
    if not 1 <= limit <= 10_000:
        raise BadRequest("invalid_query", "limit must be between 1 and 10000")
    found = request.app[DECISIONS].search(q.get("user_id"), q.get("order_id"), q.get("code"), since, limit)
    return respond(request, {"decisions": found, "count": len(found)})


@routes.post("/v1/admin/snapshot")
async def take_snapshot(request: web.Request) -> web.Response:
    store = request.app.get(STORE)
    if store is None:
        raise Conflict("no_data_directory", "this gateway runs without a data directory")
    path = store.unchanged()  # nothing changed since the last one: it is the snapshot of now
    unchanged = path is not None
    if path is None:
        try:
            path = await store.snapshot(request.app[COORDINATOR])
        except (SnapshotFailed, OSError) as e:
            raise Unavailable("snapshot_failed", f"the snapshot could not be written: {e}") from None
    seconds = 0.0 if unchanged else round(store.stats.last_seconds, 4)
    return respond(request, {"path": str(path), "bytes": path.stat().st_size, "seconds": seconds, "unchanged": unchanged})
