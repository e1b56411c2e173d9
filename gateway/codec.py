"""Bodies in and out: JSON or MessagePack, size-limited, validated into schema types.

A client may send `application/msgpack` and ask for it with `Accept`; any other body is read as
JSON (so a bare `curl -d` works).
Decoding errors become 400s that say where the problem is; nothing is decoded twice.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

import msgpack
import msgspec
from aiohttp import web

from domain.errors import BadRequest, TooLarge

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack", "application/vnd.msgpack"})
CHECK_BODY_LIMIT = 64 * 1024
ADMIN_BODY_LIMIT = 64 * 1024 * 1024

T = TypeVar("T")

_json_encoder = msgspec.json.Encoder()
_digest_encoder = msgspec.msgpack.Encoder(order="deterministic")


async def read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge("body_too_large", f"the body is {request.content_length} bytes; the limit is {limit}")
    content = request.content
    if content.is_eof():  # the whole body came with the headers (a check's does): take it as is
        body = content.read_nowait()
        if len(body) > limit:
            raise TooLarge("body_too_large", f"the body is over the limit of {limit} bytes")
        return body
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        body = b"\0" * (limit + 1)
    if len(body) > limit:
        raise TooLarge("body_too_large", f"the body is over the limit of {limit} bytes")
    return body


# msgpack's text for these is empty (a reserved byte, deep nesting) or names its own internals
# ("unpack(b) received extra data."); its other errors say what is wrong ("incomplete input").
_MSGPACK_ERRORS: dict[type[Exception], str] = {
    msgpack.FormatError: "the body is not valid MessagePack: it holds a byte that starts no value (such as the reserved 0xc1)",
    msgpack.ExtraData: "the body is not valid MessagePack: more bytes follow its value",
    msgpack.StackError: "the body is nested too deeply",
}


def _loads(body: bytes, content_type: str) -> Any:
    """Parse without validating: for bodies that are validated elsewhere (the config document)."""
    if content_type in MSGPACK_TYPES:
        try:
            return msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception as e:  # msgpack raises several unrelated types for bad input
            message = _MSGPACK_ERRORS.get(type(e)) or f"the body is not valid MessagePack: {str(e) or type(e).__name__}"
            raise BadRequest("malformed_body", message) from None
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError as e:
        raise BadRequest("malformed_body", f"the body is not valid JSON: {e}") from None
    except RecursionError:  # about a thousand levels of arrays or objects
        raise BadRequest("malformed_body", "the body is nested too deeply") from None


async def parse(request: web.Request, limit: int = ADMIN_BODY_LIMIT) -> Any:
    body = await read_body(request, limit)
    if not body:
        raise BadRequest("malformed_body", "the body is empty")
    return _loads(body, request.content_type)


async def decode(request: web.Request, kind: type[T], limit: int = CHECK_BODY_LIMIT) -> T:
    """The body validated as `kind`; a 400 names the field that is wrong."""
    return decode_body(await read_body(request, limit), request.content_type, kind)


def decode_body(body: bytes, content_type: str, kind: type[T]) -> T:
    if not body:
        raise BadRequest("malformed_body", "the body is empty")
    try:
        if content_type in MSGPACK_TYPES:
            return msgspec.convert(_loads(body, content_type), kind)
        return msgspec.json.decode(body, type=kind)
    except msgspec.ValidationError as e:
        raise BadRequest("invalid_body", str(e)) from None
    except msgspec.DecodeError as e:
        raise BadRequest("malformed_body", f"the body is not valid JSON: {e}") from None


def digest(value: msgspec.Struct) -> bytes:
    """A fingerprint of a decoded request: the same content in JSON or msgpack, any key order, matches."""
    return hashlib.blake2b(_digest_encoder.encode(value), digest_size=16).digest()


def wants_msgpack(request: web.Request) -> bool:
    """msgpack when `Accept` names it; JSON when it names JSON; otherwise the request's own type."""
    accept = request.headers.get("Accept", "")
    if "msgpack" in accept and any(t in accept for t in MSGPACK_TYPES):  # the cheap test first: every answer asks
        return True
    if JSON in accept:
        return False
    return request.content_type in MSGPACK_TYPES


def respond(request: web.Request, value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    if wants_msgpack(request):
        return web.Response(
            body=msgpack.packb(msgspec.to_builtins(value), use_bin_type=True),
            status=status,
            content_type=MSGPACK,
            headers=headers,
        )
    return web.Response(body=_json_encoder.encode(value), status=status, content_type=JSON, headers=headers)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message}}
