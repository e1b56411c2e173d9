#!lua name=flashguard
-- flashguard's Redis Functions library: every change of cluster-mode state, one slot per call.
--
-- A slot holds one actor (a subject, an activity, a SKU) in five keys sharing its hash tag:
--   KEYS[1] c   hash   counter -> quantity ('#discount', '#margin', '#pardons' for a user)
--   KEYS[2] w   hash   window key -> running total, and 'window key \x1e second' -> quantity
--   KEYS[3] wz  zset   'window key \x1e second', scored by when that second leaves its window
--   KEYS[4] r   hash   reservation id -> {state, counters, window events, confirm increments, pardons}
--   KEYS[5] d   zset   reservation id, scored by its deadline (a lease, a hold's expiry, a tombstone's end)
-- Reservation states: L leased (a check is deciding), H held, C confirmed, K confirmed and kept by a
-- cancel without release, X released (a tombstone: a late reserve of the same id cannot apply).
-- Every call first ends what is due in its slot (`settle`), so no gateway in particular needs to be
-- alive for a hold to expire at its time: the next call into the slot sees it gone.
--
-- An order's record lives in its own bucket slot: KEYS[1] the order hash, KEYS[2] the bucket's
-- zset of orders in flight (pending checks, confirms and cancels), scored by their lease, KEYS[3]
-- the bucket's zset of held orders, scored by their expiry (to count holds as they run out).

local VERSION = '3'
local TOMBSTONE = 3600   -- seconds a released reservation id is remembered
local SEP = '\30'        -- between a window key and its second

local function num(v)
  return tonumber(v) or 0
end

local function incr(key, field, by)
  if by ~= 0 then
    if redis.call('HINCRBY', key, field, by) == 0 then
      redis.call('HDEL', key, field)
    end
  end
end

local function window_add(keys, wkey, t, seconds, qty)
  local member = wkey .. SEP .. t
  redis.call('HINCRBY', keys[2], member, qty)
  redis.call('HINCRBY', keys[2], wkey, qty)
  redis.call('ZADD', keys[3], t + seconds, member)
end

local function window_remove(keys, wkey, t, qty)
  -- only if that second is still inside the window (a pruned second took its quantity with it)
  local member = wkey .. SEP .. t
  local left = redis.call('HGET', keys[2], member)
  if not left then return end
  if num(left) > qty then
    redis.call('HINCRBY', keys[2], member, -qty)
  else
    redis.call('HDEL', keys[2], member)
    redis.call('ZREM', keys[3], member)
  end
  incr(keys[2], wkey, -qty)
end

-- Auto-blacklist totals ('#...') are taken back only if the user was not pardoned since the
-- order was confirmed (the pardon zeroed them already).
local function undo_confirm(keys, res)
  local pardoned = num(redis.call('HGET', keys[1], '#pardons')) ~= num(res[5])
  for _, k in ipairs(res[4]) do
    if not (pardoned and string.sub(k[1], 1, 1) == '#') then
      incr(keys[1], k[1], -k[2])
    end
  end
end

local function undo_hold(keys, res)
  for _, c in ipairs(res[2]) do incr(keys[1], c[1], -c[2]) end
  for _, w in ipairs(res[3]) do window_remove(keys, w[1], w[2], w[4]) end
end

local function tombstone(keys, id, now)
  redis.call('HSET', keys[4], id, cmsgpack.pack({'X', {}, {}, {}, 0}))
  redis.call('ZADD', keys[5], now + TOMBSTONE, id)
end

local function reservation(keys, id)
  local raw = redis.call('HGET', keys[4], id)
  return raw and cmsgpack.unpack(raw)
end

local function settle(keys, now)
  local due = redis.call('ZRANGE', keys[5], '-inf', now, 'BYSCORE')
  for _, id in ipairs(due) do
    local res = reservation(keys, id)
    if res and (res[1] == 'L' or res[1] == 'H') then
      undo_hold(keys, res)
      tombstone(keys, id, now)
    else
      redis.call('HDEL', keys[4], id)
      redis.call('ZREM', keys[5], id)
    end
  end
  local gone = redis.call('ZRANGE', keys[3], '-inf', now, 'BYSCORE')
  for _, member in ipairs(gone) do
    local qty = num(redis.call('HGET', keys[2], member))
    local wkey = string.match(member, '^(.*)' .. SEP)
    redis.call('HDEL', keys[2], member)
    incr(keys[2], wkey, -qty)
  end
  if #gone > 0 then redis.call('ZREMRANGEBYSCORE', keys[3], '-inf', now) end
end

-- fg_read(slot keys; now, window key...): the slot's counters, as a flat list, and each window's
-- total, once everything due is settled. With the one window key '*': every window the slot
-- holds, as a flat list of window key and total (the admin's view of a subject).
local function fg_read(keys, args)
  settle(keys, tonumber(args[1]))
  local totals = {}
  if args[2] == '*' then
    local flat = redis.call('HGETALL', keys[2])
    for i = 1, #flat, 2 do
      if not string.find(flat[i], SEP, 1, true) then
        totals[#totals + 1] = flat[i]
        totals[#totals + 1] = flat[i + 1]
      end
    end
  else
    for i = 2, #args do totals[#totals + 1] = num(redis.call('HGET', keys[2], args[i])) end
  end
  return {redis.call('HGETALL', keys[1]), totals}
end

-- Guards, each as the check evaluated it: counters {field, qty, limit} (value + qty <= limit,
-- a negative limit: no guard), windows {key, t, seconds, qty, limit} (total + qty <= limit),
-- floors {field, lowest} (value >= lowest: a user's margin) and ceilings {field, highest}.
local function refused(keys, ops)
  for _, c in ipairs(ops[1]) do
    if c[3] >= 0 then
      local v = num(redis.call('HGET', keys[1], c[1]))
      if v + c[2] > c[3] then return {'refused', c[1], v} end
    end
  end
  for _, w in ipairs(ops[2]) do
    if w[5] >= 0 then
      local v = num(redis.call('HGET', keys[2], w[1]))
      if v + w[4] > w[5] then return {'refused', w[1], v} end
    end
  end
  for _, g in ipairs(ops[4]) do
    local v = num(redis.call('HGET', keys[1], g[1]))
    if (g[3] == 'floor' and v < g[2]) or (g[3] == 'ceiling' and v > g[2]) then return {'refused', g[1], v} end
  end
  return nil
end

-- fg_reserve(slot keys; now, id, lease until, ops): apply the order's increments in this slot if
-- every guard still holds, and record them under `id` until the lease ends (0: permanent, no
-- record, as a coupon claim). ops = {counters, windows, confirm increments, guards}.
local function fg_reserve(keys, args)
  local now, id, lease = tonumber(args[1]), args[2], tonumber(args[3])
  settle(keys, now)
  if lease > 0 then
    if lease <= now then return {'late'} end
    if redis.call('HEXISTS', keys[4], id) == 1 then return {'dup'} end
  end
  local ops = cmsgpack.unpack(args[4])
  local no = refused(keys, ops)
  if no then return no end
  local counters, windows = {}, {}
  for _, c in ipairs(ops[1]) do
    incr(keys[1], c[1], c[2])
    counters[#counters + 1] = {c[1], c[2]}
  end
  for _, w in ipairs(ops[2]) do
    window_add(keys, w[1], w[2], w[3], w[4])
    windows[#windows + 1] = {w[1], w[2], w[3], w[4]}
  end
  if lease > 0 then
    redis.call('HSET', keys[4], id, cmsgpack.pack({'L', counters, windows, ops[3], 0}))
    redis.call('ZADD', keys[5], lease, id)
  end
  return {'ok'}
end

-- fg_hold(slot keys; now, id, expires at): a leased reservation becomes a hold until its expiry.
local function fg_hold(keys, args)
  local now, id = tonumber(args[1]), args[2]
  settle(keys, now)
  local res = reservation(keys, id)
  if not res or (res[1] ~= 'L' and res[1] ~= 'H') then return {'gone'} end
  res[1] = 'H'
  redis.call('HSET', keys[4], id, cmsgpack.pack(res))
  redis.call('ZADD', keys[5], tonumber(args[3]), id)
  return {'ok'}
end

-- fg_confirm(slot keys; now, id): a hold becomes permanent and adds its confirm increments
-- (budget spent, units confirmed, auto-blacklist totals); answers the user's pardon count.
local function fg_confirm(keys, args)
  local now, id = tonumber(args[1]), args[2]
  settle(keys, now)
  local res = reservation(keys, id)
  if not res or res[1] == 'X' or res[1] == 'L' then return {'gone'} end
  if res[1] == 'H' then
    for _, k in ipairs(res[4]) do incr(keys[1], k[1], k[2]) end
    res[1] = 'C'
    res[5] = num(redis.call('HGET', keys[1], '#pardons'))
    redis.call('HSET', keys[4], id, cmsgpack.pack(res))
    redis.call('ZREM', keys[5], id)
  end
  return {'ok', res[5]}
end

-- fg_release(slot keys; now, id, release): give a reservation back. A lease or hold is undone; a
-- confirmed one is undone with its confirm increments when `release` is 1 (release_on_cancel),
-- else keeps its quotas and takes back only its auto-blacklist totals. An id never reserved
-- here is remembered as released, so a reserve that arrives late cannot apply.
local function fg_release(keys, args)
  local now, id, release = tonumber(args[1]), args[2], args[3] == '1'
  settle(keys, now)
  local res = reservation(keys, id)
  if not res then
    tombstone(keys, id, now)
    return {'ok'}
  end
  local state = res[1]
  if state == 'L' or state == 'H' then
    undo_hold(keys, res)
    tombstone(keys, id, now)
  elseif state == 'C' and release then
    undo_hold(keys, res)
    undo_confirm(keys, res)
    tombstone(keys, id, now)
  elseif state == 'C' then
    local totals = {}
    for _, k in ipairs(res[4]) do
      if string.sub(k[1], 1, 1) == '#' then totals[#totals + 1] = k end
    end
    undo_confirm(keys, {res[1], res[2], res[3], totals, res[5]})
    res[1] = 'K'
    redis.call('HSET', keys[4], id, cmsgpack.pack(res))
  end
  return {'ok'}
end

-- fg_pardon(slot keys; now): an operator took the user off the blacklist: totals restart at zero.
local function fg_pardon(keys, args)
  settle(keys, tonumber(args[1]))
  if redis.call('EXISTS', keys[1]) == 1 then
    redis.call('HDEL', keys[1], '#discount', '#margin')
    redis.call('HINCRBY', keys[1], '#pardons', 1)
  end
  return {'ok'}
end

-- Orders. The record's fields: st (state), dg (request digest), at (attempt), ls (lease until),
-- o (the order, msgpack, once decided), fp (the attempt's reservations, while it decides or
-- moves: so whoever takes over a crashed attempt knows what to give back).

-- fg_begin(order keys; now, order id, digest, lease until): claim the order id for a check.
-- 'new' (decide it), 'busy' (another gateway is deciding it), 'takeover' (its gateway's lease
-- ran out: give back what it reserved, then decide), or 'done' with the first answer.
local function fg_begin(keys, args)
  local now, oid, digest, lease = tonumber(args[1]), args[2], args[3], args[4]
  local st = redis.call('HGET', keys[1], 'st')
  if not st then
    redis.call('HSET', keys[1], 'st', 'pending', 'dg', digest, 'at', 1, 'ls', lease)
    redis.call('ZADD', keys[2], lease, oid)
    return {'new', 1}
  end
  local f = redis.call('HMGET', keys[1], 'dg', 'at', 'ls', 'o', 'fp')
  if st ~= 'pending' then return {'done', f[1], f[4] or ''} end
  if num(f[3]) > now then return {'busy', f[1]} end
  local attempt = num(f[2]) + 1
  redis.call('HSET', keys[1], 'dg', digest, 'at', attempt, 'ls', lease)
  redis.call('HDEL', keys[1], 'fp')
  redis.call('ZADD', keys[2], lease, oid)
  return {'takeover', attempt, f[5] or '', num(f[2])}
end

-- fg_attempt(order keys; attempt, reservations): what this attempt is about to reserve.
local function fg_attempt(keys, args)
  if redis.call('HGET', keys[1], 'at') ~= args[1] then return {'lost'} end
  redis.call('HSET', keys[1], 'fp', args[2])
  return {'ok'}
end

-- fg_commit(order keys; now, order id, attempt, state, order, expires at, reservation id, tags):
-- the decision stands; `tags` (the slots holding the reservation) go with it for its confirm or cancel.
-- Refused ('lost') when the attempt's lease ran out or another attempt took the order over.
local function fg_commit(keys, args)
  local now, oid = tonumber(args[1]), args[2]
  local f = redis.call('HMGET', keys[1], 'st', 'at', 'ls')
  if f[1] ~= 'pending' or f[2] ~= args[3] or num(f[3]) <= now then return {'lost'} end
  redis.call('HSET', keys[1], 'st', args[4], 'o', args[5], 'ex', args[6], 'rid', args[7], 'tg', args[8])
  redis.call('HDEL', keys[1], 'fp', 'ls')
  redis.call('ZREM', keys[2], oid)
  if args[4] == 'held' then redis.call('ZADD', keys[3], args[6], oid) end
  return {'ok'}
end

-- fg_begin_move(order keys; now, order id, move, lease until): start a confirm or cancel.
-- Answers {verdict, order, reservation id, move, tags}: 'go' (the move is leased, so a crashed gateway's move is
-- finished by whoever comes next: 'resume' with the move it was making), 'busy', 'expired' (a
-- hold past its time), 'none', or the state the order is in when the move does not apply.
local function fg_begin_move(keys, args)
  local now, oid, move, lease = tonumber(args[1]), args[2], args[3], args[4]
  local f = redis.call('HMGET', keys[1], 'st', 'o', 'ex', 'ls', 'mv', 'rid', 'tg')
  local st = f[1]
  if not st or st == 'pending' then return {'none'} end
  if st == 'moving' then
    if num(f[4]) > now then return {'busy'} end
    redis.call('HSET', keys[1], 'ls', lease)
    redis.call('ZADD', keys[2], lease, oid)
    return {'resume', f[2], f[6], f[5], f[7]}
  end
  if st == 'held' and num(f[3]) <= now then return {'expired', f[2], f[6]} end
  if (move == 'confirm' and st ~= 'held') or (move == 'cancel' and st ~= 'held' and st ~= 'confirmed') then
    return {st, f[2], f[6]}
  end
  redis.call('HSET', keys[1], 'st', 'moving', 'ls', lease, 'mv', move .. ':' .. st)
  redis.call('ZADD', keys[2], lease, oid)
  redis.call('ZREM', keys[3], oid)
  return {'go', f[2], f[6], move .. ':' .. st, f[7]}
end

-- fg_end_move(order keys; order id, state, order): the move is done; the order is in `state`.
local function fg_end_move(keys, args)
  redis.call('HSET', keys[1], 'st', args[2], 'o', args[3])
  redis.call('HDEL', keys[1], 'ls', 'mv')
  redis.call('ZREM', keys[2], args[1])
  return {'ok'}
end

-- fg_order(order keys): the order's record (GET /v1/orders/{id}, and recovery of a crashed move).
local function fg_order(keys, args)
  return redis.call('HMGET', keys[1], 'st', 'o', 'mv', 'at', 'fp', 'rid', 'ls')
end

-- fg_stale(order keys[2] only; now, limit): orders whose lease ran out: their gateway is gone.
local function fg_stale(keys, args)
  return redis.call('ZRANGE', keys[1], '-inf', tonumber(args[1]), 'BYSCORE', 'LIMIT', 0, tonumber(args[2]))
end

-- fg_expire(bucket keys: held zset only; now): the holds of the bucket that ran out by `now`,
-- counted once and dropped from the index. Their slots already ended them (see `settle`), and a
-- read shows such an order as expired, so nothing else needs to change.
local function fg_expire(keys, args)
  local n = redis.call('ZCOUNT', keys[1], '-inf', args[1])
  if n > 0 then redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', args[1]) end
  return n
end

-- fg_holds(bucket keys: held zset only; now): the bucket's holds still running at `now`.
local function fg_holds(keys, args)
  return redis.call('ZCOUNT', keys[1], '(' .. args[1], '+inf')
end

-- fg_abandon(order keys; now, order id, attempt, force): drop a pending check whose reservations
-- were given back: its gateway died (the lease ran out) or gave up (`force` 1, its own attempt),
-- so the order id can be checked again.
local function fg_abandon(keys, args)
  local f = redis.call('HMGET', keys[1], 'st', 'at', 'ls')
  if not f[1] then
    redis.call('ZREM', keys[2], args[2])
    return {'ok'}
  end
  if f[1] ~= 'pending' or f[2] ~= args[3] or (args[4] ~= '1' and num(f[3]) > tonumber(args[1])) then return {'kept'} end
  redis.call('DEL', keys[1])
  redis.call('ZREM', keys[2], args[2])
  return {'ok'}
end

-- fg_config_set(keys: document, version; expected version, document): compare and set, so two
-- admin changes through two gateways never overwrite each other.
local function fg_config_set(keys, args)
  if num(redis.call('GET', keys[2])) ~= tonumber(args[1]) then return {'stale'} end
  redis.call('SET', keys[1], args[2])
  return {'ok', redis.call('INCR', keys[2])}
end

-- fg_clock(keys: clock; start, advance, set): the manual clock every gateway reads (`--manual-clock`):
-- started at `start` the first time, moved forward only.
local function fg_clock(keys, args)
  local now = tonumber(redis.call('GET', keys[1]) or args[1])
  local target = now + tonumber(args[2])
  if args[3] ~= '' then target = tonumber(args[3]) end
  if target < now then return {'backwards', now} end
  redis.call('SET', keys[1], target)
  return {'ok', target}
end

local function fg_version()
  return VERSION
end

redis.register_function('fg_read', fg_read)
redis.register_function('fg_reserve', fg_reserve)
redis.register_function('fg_hold', fg_hold)
redis.register_function('fg_confirm', fg_confirm)
redis.register_function('fg_release', fg_release)
redis.register_function('fg_pardon', fg_pardon)
redis.register_function('fg_begin', fg_begin)
redis.register_function('fg_attempt', fg_attempt)
redis.register_function('fg_commit', fg_commit)
redis.register_function('fg_begin_move', fg_begin_move)
redis.register_function('fg_end_move', fg_end_move)
redis.register_function('fg_stale', fg_stale)
redis.register_function('fg_abandon', fg_abandon)
redis.register_function('fg_expire', fg_expire)
redis.register_function('fg_config_set', fg_config_set)
redis.register_function('fg_clock', fg_clock)
redis.register_function{function_name = 'fg_order', callback = fg_order, flags = {'no-writes'}}
redis.register_function{function_name = 'fg_holds', callback = fg_holds, flags = {'no-writes'}}
redis.register_function{function_name = 'fg_version', callback = fg_version, flags = {'no-writes'}}
