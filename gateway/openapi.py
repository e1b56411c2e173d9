"""`GET /v1/openapi.json`: the OpenAPI 3.1 document of the whole HTTP API (SPEC sections 3-5).

Body schemas come from the msgspec types the handlers decode and answer with
(`msgspec.json.schema_components`), so they cannot drift from the code. The few answers a handler
builds as a plain dict are described by a Struct below; tests/test_openapi.py keeps those true by
fuzzing every operation against the app and validating each answer against this document, and
checks that the paths here are exactly the routes the app registers.
"""

from __future__ import annotations

import functools
import types
from typing import Any, Literal, get_args

import msgspec
from aiohttp import web

from gateway.codec import JSON, MSGPACK
from domain.config import SECTIONS, SINGLES, AutoBlacklist, Settings
from domain.lists import LIST_KINDS, ListKind, ListName, ListsDoc
from domain.values import Id
from domain.schema import CheckRequest, CheckResponse, ClaimRequest, ClockRequest, OrderView

routes = web.RouteTableDef()


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class Error(msgspec.Struct):
    """Every error answer, whatever its status."""

    error: ErrorDetail


class Health(msgspec.Struct):
    status: Literal["ok"]
    now: int  # in cluster mode Redis was asked: a 503 says it cannot be reached


class Deleted(msgspec.Struct):
    deleted: str


class ListChange(msgspec.Struct):
    list: ListName
    kind: ListKind
    value: str
    present: bool


class ActivityStatus(msgspec.Struct):
    activity_id: str
    configured: bool
    budget: int | None
    spent: int
    held: int
    remaining: int | None
    fused: bool
    active: bool


class Window(msgspec.Struct):
    scope: dict[str, str]
    window: int
    quantity: int


class AutoBlacklistTotals(msgspec.Struct):
    discount_total: int
    margin_total: int


class UserStatus(msgspec.Struct):
    user_id: str
    counters: dict[str, dict[str, int]]
    windows: list[Window]
    auto_blacklist: AutoBlacklistTotals
    blacklisted: bool
    auto: bool
    listed: bool
    whitelisted: bool


class ClockMoved(msgspec.Struct):
    now: int
    expired: int


class SnapshotTaken(msgspec.Struct):
    path: str
    bytes: int
    seconds: float
    unchanged: bool  # nothing changed since the last snapshot: `path` is that one, not rewritten


class DecisionsFound(msgspec.Struct):
    decisions: list[dict[str, Any]]
    count: int


class Overview(msgspec.Struct):
    now: int
    decisions: dict[str, int]
    reasons: dict[str, int]
    shadow_hits: dict[str, int]
    activities: list[dict[str, Any]]
    top_refused_users: list[dict[str, Any]]
    top_refused_addresses: list[dict[str, Any]]
    rules: list[dict[str, Any]]
    lists: ListsDoc
    settings: dict[str, Any]


# The whole configuration document (`GET|PUT /v1/admin/config`), built from the sections
# `build_config` reads, so a new section shows up here by itself.
ConfigDocument = msgspec.defstruct(
    "ConfigDocument",
    [(name, kind, msgspec.field(default_factory=kind)) for name, kind in SINGLES.items()]
    + [(name, types.GenericAlias(list, (kind,)), msgspec.field(default_factory=list)) for name, (kind, _) in SECTIONS.items()],
    forbid_unknown_fields=True,
    kw_only=True,
)

BODY_TYPES: list[Any] = [CheckRequest, CheckResponse, ClaimRequest, ClockRequest, OrderView, Settings, ListsDoc, AutoBlacklist]
BODY_TYPES += [kind for kind, _ in SECTIONS.values()]
BODY_TYPES += [Error, Health, Deleted, ListChange, ActivityStatus, UserStatus, ClockMoved, SnapshotTaken, DecisionsFound]
BODY_TYPES += [Overview, ConfigDocument]

ERRORS = {
    400: "Malformed or invalid body, path value or query",
    401: "Missing or wrong admin token",
    404: "Not found: an unknown id, list or list kind, or a path no route matches",
    409: "Conflict",
    410: "The hold expired",
    413: "Body too large",
    429: "Overloaded; retry after `Retry-After` seconds",
    503: "Unavailable: the journal cannot write (the change was not acknowledged), or a snapshot failed",
}
ERROR = {"$ref": "#/components/schemas/Error"}
HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"const": "Bearer"}, "required": True}},
    429: {"Retry-After": {"schema": {"type": "integer"}, "required": True, "description": "Seconds to wait"}},
    503: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait, when the journal is known down"}},
}


def _both(schema: dict[str, Any]) -> dict[str, Any]:
    """A body in JSON or MessagePack: the same structure either way."""
    return {JSON: {"schema": schema}, MSGPACK: {"schema": schema}}


def _text(*media_types: str) -> dict[str, Any]:
    return {t: {"schema": {"type": "string"}} for t in media_types}


def _path(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema} | ({"description": description} if description else {})


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def _op(
    summary: str, ok: dict[str, Any] | None, errors: tuple[int, ...] = (), *, content: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None, params: list[dict[str, Any]] | None = None, admin: bool = False, tag: str = "checkout",
) -> dict[str, Any]:
    """One operation: `ok` is the schema of its 200 body (JSON or msgpack), else `content` is."""
    statuses = set(errors) | ({400, 413} if body is not None else set()) | ({401, 503} if admin else set())
    responses: dict[str, Any] = {"200": {"description": "OK", "content": _both(ok) if ok is not None else content}}
    for status in sorted(statuses):
        responses[str(status)] = {"description": ERRORS[status], "content": _both(ERROR)}
        if status in HEADERS:
            responses[str(status)]["headers"] = HEADERS[status]
    op: dict[str, Any] = {"summary": summary, "tags": ["admin" if admin else tag], "responses": responses}
    if params:
        op["parameters"] = params
    if body is not None:
        op["requestBody"] = {"required": True, "content": _both(body)}
    if admin:
        op["security"] = [{"bearerAuth": []}]
    return op


def _paths(ref: dict[Any, dict[str, Any]], schemas: dict[str, Any]) -> dict[str, dict[str, Any]]:
    ident = msgspec.json.schema(Id)
    order, user = [_path("order_id", ident)], [_path("user_id", ident)]
    public = (429, 503)
    search = [_query(name, {"type": "string"}, f"Only entries of this {name}") for name in ("user_id", "order_id")]
    search += [_query("code", {"type": "string"}, "Only entries with a reason of this code")]
    search += [_query("since", {"type": "number"}, "Only entries at or after this unix time")]
    search += [_query("limit", {"type": "integer", "minimum": 1, "maximum": 10_000, "default": 100}, "At most this many")]
    top = [_query("top", {"type": "integer", "minimum": 1, "maximum": 100, "default": 10}, "How many top refused to list")]
    files, name = _text("text/html", "text/javascript", "text/css"), [_path("name", {"type": "string"})]
    paths: dict[str, dict[str, Any]] = {
        "/v1/orders/check": {"post": _op("Check an order and hold its quotas", ref[CheckResponse], (409, *public), body=ref[CheckRequest])},
        "/v1/orders/{order_id}/confirm": {"post": _op("Confirm a held order", ref[OrderView], (404, 409, 410, *public), params=order)},
        "/v1/orders/{order_id}/cancel": {"post": _op("Cancel an order", ref[OrderView], (404, *public), params=order)},
        "/v1/orders/{order_id}": {"get": _op("Look an order up", ref[OrderView], (404, *public), params=order)},
        "/v1/coupons/claim-check": {"post": _op("Check and count a coupon claim", ref[CheckResponse], public, body=ref[ClaimRequest])},
        "/healthz": {"get": _op("Liveness", ref[Health], tag="operations")},
        "/metrics": {"get": _op("Prometheus metrics", None, content=_text("text/plain"), tag="operations")},
        "/v1/openapi.json": {"get": _op("This document", None, (429,), content={JSON: {"schema": {"type": "object"}}}, tag="operations")},
        "/v1/admin/config": {
            "get": _op("The whole configuration (the admin token left out)", ref[ConfigDocument], admin=True),
            "put": _op("Replace the whole configuration", ref[ConfigDocument], body=ref[ConfigDocument], admin=True),
        },
        "/v1/admin/settings": {"patch": _op("Change some settings", ref[Settings], body=ref[Settings], admin=True)},
        "/v1/admin/lists": {"get": _op("The blacklist and the whitelist", ref[ListsDoc], admin=True)},
        "/v1/admin/lists/{name}/{kind}/{value}": {
            "parameters": [
                _path("name", {"enum": list(get_args(ListName))}),
                _path("kind", {"enum": list(LIST_KINDS)}),
                _path("value", {"type": "string", "minLength": 1, "maxLength": 512}, "URL-encoded; an address path contains `/`"),
            ],
            "put": _op("Add a value to a list", ref[ListChange], (400,), admin=True),
            "delete": _op("Remove a value from a list (or pardon an auto-blacklisted user)", ref[ListChange], (404,), admin=True),
        },
        "/v1/admin/users/{user_id}": {"get": _op("A user's counters and list status", ref[UserStatus], params=user, admin=True)},
        "/v1/admin/clock": {
            "post": _op("Move the manual clock (only with --manual-clock)", ref[ClockMoved], (404,), body=ref[ClockRequest], admin=True)
        },
        "/v1/admin/snapshot": {"post": _op("Write a snapshot now", ref[SnapshotTaken], (409,), admin=True)},
        "/v1/admin/decisions": {"get": _op("Search the decision log, newest first", ref[DecisionsFound], (400,), params=search, admin=True)},
        "/v1/admin/overview": {"get": _op("What the console's dashboard shows", ref[Overview], (400,), params=top, admin=True)},
        "/console/{name}": {"get": _op("A file of the console", None, (404,), content=files, params=name, tag="console")},
    }
    for section, (kind, id_field) in SECTIONS.items():
        entry = dict(schemas[kind.__name__])  # the id may be left out of the body: it is the path's
        entry["required"] = [f for f in entry.get("required", []) if f != id_field]
        ops = paths.setdefault(f"/v1/admin/{section}/{{{id_field}}}", {})
        ops["parameters"] = [_path(id_field, ident)]
        ops["put"] = _op(f"Add or replace one of {section}", ref[kind], body=entry, admin=True)
        ops["delete"] = _op(f"Delete one of {section}", ref[Deleted], (404,), admin=True)
    paths["/v1/admin/activities/{activity_id}"]["get"] = _op(
        "An activity's budget: spent, held, remaining, fused", ref[ActivityStatus], (404,), admin=True
    )
    for path in ("/console", "/console/"):
        paths[path] = {"get": _op("The operators' console", None, content=_text("text/html"), tag="console")}
    for path, item in paths.items():  # a path value the route does not match is a 404
        for op in item.values():
            if "{" in path and "responses" in op:
                op["responses"].setdefault("404", {"description": ERRORS[404], "content": _both(ERROR)})
    return paths


@functools.cache
def document() -> dict[str, Any]:
    """The document, built once (the types do not change while the process runs)."""
    refs, schemas = msgspec.json.schema_components(BODY_TYPES, ref_template="#/components/schemas/{name}")
    ref = dict(zip(BODY_TYPES, refs))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flashguard",
            "version": "1",
            "description": "Order anti-abuse gateway for flash sales. Every error is "
            '`{"error": {"code", "message"}}`. Every body may be JSON or MessagePack (`Accept` picks the '
            "answer's). Integers (money, quantities, seconds) are written as integers: `2.0` is refused.",
        },
        "paths": _paths(ref, schemas),
        "components": {"schemas": schemas, "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}}},
    }


@functools.cache
def _encoded() -> bytes:
    return msgspec.json.encode(document())


@routes.get("/v1/openapi.json")
async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=_encoded(), content_type=JSON)
