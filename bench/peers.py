"""The two peers flashguard is measured against in `bench.flash_sale`, on the same bodies and load.

- `ceiling`: a bare aiohttp server that reads the check body, decodes it with the very decoder
  flashguard uses (msgspec.json into `domain.schema.CheckRequest`, validation included) and answers
  a fixed `allow` of the same shape. No rule is evaluated, nothing is stored: what a Python aiohttp
  server can do at best with this body, the ceiling any rule engine behind it stays under.
- `redis`: what a team would build instead: aiohttp + redis.asyncio, one EVALSHA per check of a Lua
  script that atomically checks and takes the per-user per-SKU limits (the SKUs' `limits.user`) and
  the activity budgets (HINCRBY/INCRBY), stores the order, and answers allow/deny; confirm and
  cancel endpoints (cancel gives the quotas and budget back). It covers two of flashguard's rule
  kinds: no SPU, device, receiver or activity-user limits, no risk rules, lists or price fuse.

Both answer `POST /v1/orders/check`, `POST /v1/orders/{id}/confirm|cancel` and `GET /healthz`, run on
uvloop like flashguard, and print `listening on http://HOST:PORT` once they accept requests.

    python -m bench.peers ceiling --port 8081
    python -m bench.peers redis --port 8082 --config cfg.json --redis unix:///tmp/r.sock

The redis peer needs a running redis-server (`apt-get install redis-server`); `bench.flash_sale`
starts one for it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import importlib
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from domain.schema import CheckRequest, CheckResponse, Hold, OrderView
from domain.types import Code, Decision, OrderState, Reason, reason

HOLD_TTL = 900
CHECK_BODY_LIMIT = 64 * 1024

_encoder = msgspec.json.Encoder()
JSON = "application/json"


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=_encoder.encode(value), status=status, content_type=JSON)


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status)


async def _decode(request: web.Request) -> tuple[CheckRequest, bytes] | web.Response:
    body = await request.read()
    if len(body) > CHECK_BODY_LIMIT:
        return _error(413, "body_too_large", "the body is over the limit")
    try:
        return msgspec.json.decode(body, type=CheckRequest), body
    except msgspec.ValidationError as e:
        return _error(400, "invalid_body", str(e))
    except msgspec.DecodeError as e:
        return _error(400, "malformed_body", f"the body is not valid JSON: {e}")


def _payable(req: CheckRequest) -> int:
    return sum(i.unit_price * i.quantity - sum(d.amount for d in i.discounts) for i in req.items)


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


# -- the ceiling -------------------------------------------------------------------------------


async def ceiling_check(request: web.Request) -> web.Response:
    decoded = await _decode(request)
    if isinstance(decoded, web.Response):
        return decoded
    req = decoded[0]
    now = int(time.time())
    return _json(
        CheckResponse(
            order_id=req.order_id,
            decision=Decision.ALLOW,
            reasons=[],
            shadow=[],
            warnings=[],
            message=None,
            hold=Hold(now + HOLD_TTL),
            payable=_payable(req),
            stripped=[],
        )
    )


def _fixed_view(order_id: str, state: OrderState) -> OrderView:
    now = int(time.time())
    return OrderView(
        order_id=order_id,
        state=state,
        decision=Decision.ALLOW,
        user_id="",
        created_at=now,
        updated_at=now,
        expires_at=None,
        payable=None,
        stripped=[],
        reasons=[],
    )


async def ceiling_confirm(request: web.Request) -> web.Response:
    return _json(_fixed_view(request.match_info["order_id"], OrderState.CONFIRMED))


async def ceiling_cancel(request: web.Request) -> web.Response:
    return _json(_fixed_view(request.match_info["order_id"], OrderState.CANCELLED))


def ceiling_app() -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/orders/check", ceiling_check)
    app.router.add_post("/v1/orders/{order_id}/confirm", ceiling_confirm)
    app.router.add_post("/v1/orders/{order_id}/cancel", ceiling_cancel)
    app.router.add_get("/healthz", healthz)
    return app


# -- the Redis + Lua peer ----------------------------------------------------------------------

# KEYS: order, user, then one key per activity (budget used).
# ARGV: hold expiry, number of SKUs n, then n x (sku, quantity, user limit or -1),
#       number of activities m, then m x (activity, amount, budget or -1).
# Returns {"allow"} or {"deny", reason, ...}; a known order returns its stored answer with a
# leading "replay" and its digest, so the caller can tell a replay from a reused id.
CHECK_LUA = """
local okey, ukey = KEYS[1], KEYS[2]
local stored = redis.call('HMGET', okey, 'answer', 'digest')
if stored[1] then
  return {'replay', stored[2], stored[1]}
end
local n = tonumber(ARGV[2])
local reasons = {}
local p = 3
for i = 1, n do
  local sku, q, limit = ARGV[p], tonumber(ARGV[p + 1]), tonumber(ARGV[p + 2])
  if limit >= 0 then
    local used = tonumber(redis.call('HGET', ukey, sku) or '0')
    if used + q > limit then
      reasons[#reasons + 1] = 'SKU_LIMIT|' .. sku .. '|' .. limit .. '|' .. used .. '|' .. q
    end
  end
  p = p + 3
end
local m = tonumber(ARGV[p])
local ap = p + 1
for j = 1, m do
  local act, amount, budget = ARGV[ap], tonumber(ARGV[ap + 1]), tonumber(ARGV[ap + 2])
  if budget >= 0 then
    local used = tonumber(redis.call('GET', KEYS[2 + j]) or '0')
    if used >= budget or used + amount > budget then
      reasons[#reasons + 1] = 'ACTIVITY_BUDGET_EXHAUSTED|' .. act .. '|' .. budget .. '|' .. used .. '|' .. amount
    end
  end
  ap = ap + 3
end
local answer
if #reasons == 0 then
  p = 3
  local fp = {}
  for i = 1, n do
    local sku, q = ARGV[p], tonumber(ARGV[p + 1])
    redis.call('HINCRBY', ukey, sku, q)
    fp[#fp + 1] = sku .. '=' .. q
    p = p + 3
  end
  ap = p + 1
  local spend = {}
  for j = 1, m do
    local amount = tonumber(ARGV[ap + 1])
    redis.call('INCRBY', KEYS[2 + j], amount)
    spend[#spend + 1] = amount
    ap = ap + 3
  end
  answer = 'allow'
  redis.call('HSET', okey, 'answer', answer, 'digest', ARGV[1], 'state', 'held', 'user', ukey,
             'fp', table.concat(fp, ','), 'acts', table.concat(KEYS, ',', 3), 'spend', table.concat(spend, ','))
  return {'allow'}
end
answer = 'deny;' .. table.concat(reasons, ';')
redis.call('HSET', okey, 'answer', answer, 'digest', ARGV[1], 'state', 'denied')
local out = {'deny'}
for k = 1, #reasons do out[#out + 1] = reasons[k] end
return out
"""

# KEYS: order. ARGV: "confirm" or "cancel". Returns the order's state after, or an error tag.
FOLLOW_LUA = """
local okey = KEYS[1]
local st = redis.call('HMGET', okey, 'state', 'user', 'fp', 'acts', 'spend')
local state = st[1]
if not state then return 'unknown' end
if ARGV[1] == 'confirm' then
  if state == 'held' then
    redis.call('HSET', okey, 'state', 'confirmed')
    return 'confirmed'
  elseif state == 'confirmed' then
    return 'confirmed'
  end
  return 'conflict:' .. state
end
if state == 'held' or state == 'confirmed' then
  for pair in string.gmatch(st[3], '[^,]+') do
    local eq = string.find(pair, '=', 1, true)
    redis.call('HINCRBY', st[2], string.sub(pair, 1, eq - 1), -tonumber(string.sub(pair, eq + 1)))
  end
  local amounts = {}
  for a in string.gmatch(st[5], '[^,]+') do amounts[#amounts + 1] = tonumber(a) end
  local k = 1
  for act in string.gmatch(st[4], '[^,]+') do
    redis.call('DECRBY', act, amounts[k])
    k = k + 1
  end
  redis.call('HSET', okey, 'state', 'cancelled')
  return 'cancelled'
end
return state
"""


class RedisPeer:
    """Limits from the same configuration document flashguard is given; state in Redis."""

    def __init__(self, config: dict[str, Any], redis_url: str, pool_size: int) -> None:
        # By name, so that mypy passes where redis (bench/requirements.txt) is not installed.
        aioredis: Any = importlib.import_module("redis.asyncio")

        self.user_limits: dict[str, int] = {}
        for sku in config.get("skus", []):
            limit = sku.get("limits", {}).get("user")
            if limit is not None:
                self.user_limits[sku["sku_id"]] = int(limit)
        self.budgets: dict[str, int] = {
            a["activity_id"]: int(a["budget"]) for a in config.get("activities", []) if a.get("budget") is not None
        }
        self.pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=pool_size, timeout=30)
        self.redis = aioredis.Redis(connection_pool=self.pool)
        self.check_sha = ""
        self.follow_sha = ""

    async def start(self, app: web.Application) -> None:
        self.check_sha = str(await self.redis.script_load(CHECK_LUA))
        self.follow_sha = str(await self.redis.script_load(FOLLOW_LUA))

    async def stop(self, app: web.Application) -> None:
        await self.redis.aclose()
        await self.pool.disconnect()

    async def check(self, request: web.Request) -> web.Response:
        decoded = await _decode(request)
        if isinstance(decoded, web.Response):
            return decoded
        req, body = decoded
        quantities: dict[str, int] = {}
        amounts: dict[str, int] = {}
        for item in req.items:
            quantities[item.sku_id] = quantities.get(item.sku_id, 0) + item.quantity
            for d in item.discounts:
                if d.activity_id is not None:
                    amounts[d.activity_id] = amounts.get(d.activity_id, 0) + d.amount
        digest = hashlib.blake2b(body, digest_size=12).hexdigest()
        args: list[str | int] = [digest, len(quantities)]
        for sku_id, q in quantities.items():
            args += [sku_id, q, self.user_limits.get(sku_id, -1)]
        args.append(len(amounts))
        keys = ["o:" + req.order_id, "u:" + req.user_id]
        for aid, amount in amounts.items():
            keys.append("a:" + aid)
            args += [aid, amount, self.budgets.get(aid, -1)]
        result = await self.redis.evalsha(self.check_sha, len(keys), *keys, *args)
        parts = [p.decode() if isinstance(p, bytes) else str(p) for p in result]
        if parts[0] == "replay":
            if parts[1] != digest:
                return _error(409, "order_id_reused", f"order {req.order_id!r} was already checked with a different body")
            parts = parts[2].split(";")
        reasons: list[Reason] = []
        for text in parts[1:]:
            code, ident, limit, used, requested = text.split("|")
            if code == "SKU_LIMIT":
                reasons.append(
                    reason(Code.SKU_LIMIT, sku_id=ident, subject="user", limit=int(limit), used=int(used), requested=int(requested))
                )
            else:
                reasons.append(
                    reason(Code.ACTIVITY_BUDGET_EXHAUSTED, activity_id=ident, limit=int(limit), used=int(used), requested=int(requested))
                )
        allowed = parts[0] == "allow"
        return _json(
            CheckResponse(
                order_id=req.order_id,
                decision=Decision.ALLOW if allowed else Decision.DENY,
                reasons=reasons,
                shadow=[],
                warnings=[],
                message=None if allowed else "Too many orders right now, please try again later",
                hold=Hold(int(time.time()) + HOLD_TTL) if allowed else None,
                payable=_payable(req) if allowed else None,
                stripped=[],
            )
        )

    async def _follow(self, request: web.Request, action: str) -> web.Response:
        order_id = request.match_info["order_id"]
        raw = await self.redis.evalsha(self.follow_sha, 1, "o:" + order_id, action)
        state = raw.decode() if isinstance(raw, bytes) else str(raw)
        if state == "unknown":
            return _error(404, "unknown_order", f"no order {order_id!r}")
        if state.startswith("conflict:"):
            return _error(409, "order_not_held", f"order {order_id!r} is {state[9:]} and cannot be confirmed")
        return _json(_fixed_view(order_id, OrderState(state)))

    async def confirm(self, request: web.Request) -> web.Response:
        return await self._follow(request, "confirm")

    async def cancel(self, request: web.Request) -> web.Response:
        return await self._follow(request, "cancel")


def redis_app(config: dict[str, Any], redis_url: str, pool_size: int) -> web.Application:
    peer = RedisPeer(config, redis_url, pool_size)
    app = web.Application()
    app.router.add_post("/v1/orders/check", peer.check)
    app.router.add_post("/v1/orders/{order_id}/confirm", peer.confirm)
    app.router.add_post("/v1/orders/{order_id}/cancel", peer.cancel)
    app.router.add_get("/healthz", healthz)
    app.on_startup.append(peer.start)
    app.on_cleanup.append(peer.stop)
    return app


# -- serving -----------------------------------------------------------------------------------


async def serve(app: web.Application, host: str, port: int) -> int:
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    gc.collect()
    gc.freeze()  # as flashguard does once it has started: what exists now is left out of collections
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    print(f"listening on http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["ceiling", "redis"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--config", type=Path, help="JSON configuration document (redis: SKU user limits, budgets)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="redis URL (redis: peer only)")
    parser.add_argument("--pool", type=int, default=128, help="redis connections (redis peer only)")
    args = parser.parse_args(argv)
    if args.kind == "ceiling":
        app = ceiling_app()
    else:
        config: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
        app = redis_app(config, args.redis, args.pool)
    try:
        import uvloop

        return uvloop.run(serve(app, args.host, args.port))
    except ImportError:
        return asyncio.run(serve(app, args.host, args.port))


if __name__ == "__main__":
    sys.exit(main())
