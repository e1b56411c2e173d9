"""The cluster coordinator: the single node's checks, over state that lives in Redis.

A check reads first, decides in Python with the shared rules, and applies guarded:
1. One round: claim the order id in its bucket (`fg_begin`: new, a repeat, or busy on another
   gateway) and read every actor the order can touch (`fg_read`, one call per slot).
2. `decide` over a ledger of those actors. A denial is committed to the order record and answered.
3. One round: record the attempt's reservations on the order (`fg_attempt`) and reserve in every
   slot (`fg_reserve`: applied only if each guard still holds, under a lease of `LEASE` seconds).
   A refused guard means another check took the room since the read: give back what was reserved,
   read again and decide again (at most `ROUNDS` times; each is counted as contention).
4. One round: every reservation becomes a hold until the order's expiry (`fg_hold`), then the
   order record commits the decision (`fg_commit`), and only then is the answer sent.
A gateway that dies in the middle leaves leased reservations, which end by themselves when the
lease runs out, and a pending order, which any gateway's sweeper gives back and drops then. A
confirm or cancel is leased the same way, so a crashed one is finished by the sweeper.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from actors.ledger import Ledger
from actors.orders import Order
from cluster.config_store import ConfigStore
from cluster.connection import Call, Redis
from cluster.keys import BUCKETS, CLOCK_KEY, activity_tag, holds_key, inflight_key, order_keys, slot_keys
from cluster.partition import (
    Read,
    SlotOps,
    auto_guards,
    budget_rooms,
    buckets,
    fields,
    order_activities,
    partition,
    reads,
    short_budgets,
    view,
)
from rules.changes import pardoned
from domain.clock import Clock, ClockError
from domain.config import Config
from rules.decide import Verdict, decide, decide_claim, decode_response, order_view
from domain.errors import ApiError, Conflict, Gone, NotFound, Unavailable
from domain.schema import CheckRequest, CheckResponse, ClaimRequest, OrderView
from rules.subjects import order_subjects, user_key
from domain.types import SEP, Decision, OrderState, Record, SubjectKey, counter_key

log = logging.getLogger("flashguard.cluster")

LEASE = 10  # seconds an attempt (a check, a confirm, a cancel) may take before another takes it over
ROUNDS = 5  # reserve rounds before a check under contention gives up with 503
SWEEP_BUCKETS = 8  # order buckets a sweep round visits: a full round every BUCKETS / 8 sweeps
BUSY_POLL = 0.005  # seconds between looks at an order another gateway is deciding

_encode = msgspec.msgpack.encode
_order_decoder = msgspec.msgpack.Decoder(Order)
_attempt_decoder = msgspec.msgpack.Decoder(tuple[str, list[str]])
_tags_decoder = msgspec.msgpack.Decoder(list[str])


@dataclass(slots=True)
class ClusterStats:
    contention: int = 0  # reserve rounds refused by a guard and given back (brief false refusals)
    takeovers: int = 0  # orders whose gateway died mid-way, given back or finished by another
    round_trips: int = 0  # batches sent to Redis (one pipeline per primary, in parallel)
    calls: int = 0  # Function calls in them
    expired: int = 0  # holds this gateway's sweeper counted out


def _ok(answer: Any) -> bool:
    return bool(answer) and answer[0] == b"ok"


def _contended() -> Unavailable:
    return Unavailable("contention", "the order's counters are changing too fast; retry", {"Retry-After": "1"})


class ClusterCoordinator:
    def __init__(self, redis: Redis, configs: ConfigStore, clock: Clock, manual_clock: bool = False) -> None:
        self.redis = redis
        self.configs = configs
        self.clock = clock
        self.manual_clock = manual_clock
        self.stats = ClusterStats()
        self._sweep_from = random.randrange(BUCKETS)

    @property
    def config(self) -> Config:
        return self.configs.config

    async def _batch(self, calls: list[Call]) -> list[Any]:
        self.stats.round_trips += 1
        self.stats.calls += len(calls)
        return await self.redis.batch(calls)

    async def _call(self, fn: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return (await self._batch([(fn, keys, args)]))[0]

    # -- time -----------------------------------------------------------------------------

    async def now(self) -> int:
        """The gateway's clock, or with `--manual-clock` the one clock in Redis that every gateway reads."""
        if not self.manual_clock:
            return self.clock.now()
        return await self._move_clock(0, None)

    async def _move_clock(self, advance: int, to: int | None) -> int:
        answer = await self._call("fg_clock", [CLOCK_KEY], (self.clock.now(), advance, "" if to is None else to))
        if answer[0] != b"ok":
            raise ClockError(f"the clock cannot move backwards (now {int(answer[1])}, asked {to})")
        return int(answer[1])

    async def move_clock(self, advance: int, to: int | None) -> tuple[int, int]:
        """Move the one clock; returns the new time and the holds that ran out by it. With a
        manual clock only this counts holds out (the sweepers leave them), so the answer is exact."""
        if advance < 0:
            raise ClockError("advance must be zero or more seconds")
        now = await self._move_clock(advance, to)
        return now, await self.expire_holds(now)

    # -- checks ---------------------------------------------------------------------------

    async def check(self, req: CheckRequest, digest: bytes) -> tuple[CheckResponse, bool]:
        """An order's answer, and whether it repeats the first one (SPEC section 3), whichever
        gateways the order id reaches: the first to claim it decides, the others answer its answer."""
        oid = req.order_id
        okeys = order_keys(oid)
        cfg = self.config
        subj = order_subjects(req)
        activities = order_activities(req)
        wanted = reads(cfg, subj, activities, oid)
        deadline = asyncio.get_running_loop().time() + LEASE
        now = await self.now()
        answers = await self._batch([("fg_begin", okeys, (now, oid, digest, now + LEASE)), *_read_calls(wanted, now)])
        begin = answers[0]
        while begin[0] == b"busy":  # another gateway decides it: ask for the order alone until it answers
            if begin[1] != digest:
                raise Conflict("order_id_reused", f"order {oid!r} is being checked with a different body")
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable("order_in_flight", f"order {oid!r} is still being decided elsewhere; retry", {"Retry-After": "1"})
            await asyncio.sleep(BUSY_POLL)
            now = await self.now()
            begin = await self._call("fg_begin", okeys, (now, oid, digest, now + LEASE))
            answers = []
        if begin[0] == b"done":
            if begin[1] != digest:
                raise Conflict("order_id_reused", f"order {oid!r} was already checked with a different body")
            return decode_response(_order_decoder.decode(begin[2]).response), True
        if not answers:  # claimed after a wait: read now
            answers = [begin, *await self._batch(_read_calls(wanted, now))]
        attempt = int(begin[1])
        if begin[0] == b"takeover":
            self.stats.takeovers += 1
            await self._give_back(begin[2], now)
        scan: set[str] = set()
        round_ = 0
        while round_ < ROUNDS:
            answers = answers[1:]
            verdict = decide(req, subj, cfg, view(wanted, answers, cfg), now)
            short = short_budgets(verdict.response, cfg, wanted)
            if short:  # a bucketed budget read in part: read all of it before refusing
                scan |= short
                wanted = reads(cfg, subj, activities, oid, scan)
            else:
                rooms = budget_rooms(wanted, answers, cfg)
                response = await self._settle(req, cfg, verdict, rooms, digest, now, attempt, f"{oid}#{attempt}.{round_}")
                if response is not None:
                    return response, False
                self.stats.contention += 1
                round_ += 1
            answers = [None, *await self._batch(_read_calls(wanted, now))]
        await self._call("fg_abandon", okeys, (now, oid, attempt, "1"))
        raise _contended()

    async def _settle(
        self,
        req: CheckRequest,
        cfg: Config,
        verdict: Verdict,
        rooms: dict[str, list[tuple[int, int]]],
        digest: bytes,
        now: int,
        attempt: int,
        rid: str,
    ) -> CheckResponse | None:
        """Make `verdict` (decided under `cfg`) stand; None when a guard refused (read and try again)."""
        response = verdict.response
        okeys = order_keys(req.order_id)
        order = verdict.order(req, digest, now)
        if verdict.footprint is None:
            await self._commit(order, now, attempt, "", [])
            return response
        slots = partition(verdict.footprint, cfg, now, not verdict.whitelisted, req.order_id, rooms)
        tags = list(slots)
        reserved = await self._batch(
            [
                ("fg_attempt", okeys, (attempt, _encode((rid, tags)))),
                *(("fg_reserve", slot_keys(t), (now, rid, now + LEASE, _encode(ops.wire()))) for t, ops in slots.items()),
            ]
        )
        if not _ok(reserved[0]):
            await self._release(rid, tags, now)
            raise _taken_over(req.order_id)
        if not all(_ok(a) for a in reserved[1:]):
            await self._release(rid, tags, now)
            return None
        assert order.expires_at is not None
        held = await self._batch([("fg_hold", slot_keys(t), (now, rid, order.expires_at)) for t in tags])
        if not all(_ok(a) for a in held):  # the lease ran out on the way (a stall of LEASE seconds)
            await self._release(rid, tags, now)
            raise _taken_over(req.order_id)
        await self._commit(order, now, attempt, rid, tags)
        return response

    async def _commit(self, order: Order, now: int, attempt: int, rid: str, tags: list[str]) -> None:
        state = order.state.value
        args = (now, order.order_id, attempt, state, _encode(order), order.expires_at or 0, rid, _encode(tags))
        if not _ok(await self._call("fg_commit", order_keys(order.order_id), args)):
            if rid:
                await self._release(rid, tags, now)
            raise _taken_over(order.order_id)

    async def _release(self, rid: str, tags: list[str], now: int, release: bool = True) -> list[Any]:
        return await self._batch([("fg_release", slot_keys(t), (now, rid, "1" if release else "0")) for t in tags])

    async def _give_back(self, attempt_blob: bytes, now: int) -> None:
        """Give back what a dead gateway's attempt reserved (ids never reserved are tombstoned)."""
        if attempt_blob:
            rid, tags = _attempt_decoder.decode(attempt_blob)
            await self._release(rid, tags, now)

    async def claim(self, req: ClaimRequest) -> CheckResponse:
        """Coupon claim pre-check; an allowed claim counts at once, guarded like a check's reservation."""
        tag = user_key(req.user_id)
        wanted = [Read(tag)]
        for _ in range(ROUNDS):
            now = await self.now()
            cfg = self.config
            ledger = view(wanted, [await self._call("fg_read", slot_keys(tag), (now,))], cfg)
            response, white = decide_claim(req, cfg, ledger)
            if response.decision is not Decision.ALLOW:
                return response
            coupon = cfg.coupons.get(req.coupon_id)
            limit = coupon.per_user_limit if coupon is not None and not white else None
            ops = SlotOps(
                counters=[(counter_key("coupon", req.coupon_id), 1, -1 if limit is None else limit)],
                guards=[] if white else auto_guards(cfg),
            )
            if _ok(await self._call("fg_reserve", slot_keys(tag), (now, "", 0, _encode(ops.wire())))):
                return response
            self.stats.contention += 1
        raise _contended()

    # -- after the check ------------------------------------------------------------------

    async def view(self, order_id: str) -> OrderView:
        st, blob, move, *_ = await self._call("fg_order", order_keys(order_id), ())
        if st is None or st == b"pending":
            raise NotFound("unknown_order", f"no order {order_id!r}")
        return order_view(_order_decoder.decode(blob), await self.now())

    async def confirm(self, order_id: str) -> OrderView:
        return await self._move(order_id, "confirm")

    async def cancel(self, order_id: str) -> OrderView:
        return await self._move(order_id, "cancel")

    async def _move(self, order_id: str, move: str) -> OrderView:
        okeys = order_keys(order_id)
        deadline = asyncio.get_running_loop().time() + LEASE
        while True:
            now = await self.now()
            answer = await self._call("fg_begin_move", okeys, (now, order_id, move, now + LEASE))
            verdict = answer[0].decode()
            if verdict != "busy":
                break
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable("order_in_flight", f"order {order_id!r} is being changed elsewhere; retry", {"Retry-After": "1"})
            await asyncio.sleep(BUSY_POLL)
        if verdict == "none":
            raise NotFound("unknown_order", f"no order {order_id!r}")
        order = _order_decoder.decode(answer[1])
        if verdict in ("go", "resume"):
            if verdict == "resume":
                self.stats.takeovers += 1
            order = await self._finish(order, answer[2].decode(), _tags_decoder.decode(answer[4]), answer[3].decode(), now)
        elif verdict == "expired" and move == "confirm":
            raise Gone("hold_expired", f"the hold of order {order_id!r} expired at {order.expires_at}")
        elif move == "confirm" and verdict != "confirmed":
            raise Conflict("order_not_held", f"order {order_id!r} is {verdict} and cannot be confirmed")
        if order.state is OrderState.EXPIRED and move == "confirm":
            raise Gone("hold_expired", f"the hold of order {order_id!r} expired at {order.expires_at}")
        return order_view(order, now)

    async def _finish(self, order: Order, rid: str, tags: list[str], move: str, now: int) -> Order:
        """Carry a leased confirm or cancel through every slot, then record where the order ends.
        A confirm that finds a slot's hold already ended (its expiry came first there) is undone
        everywhere: the order expired."""
        action, _, before = move.partition(":")
        if action == "confirm":
            answers = await self._batch([("fg_confirm", slot_keys(t), (now, rid)) for t in tags])
            if all(_ok(a) for a in answers):
                order.state = OrderState.CONFIRMED
                order.pardons = int(answers[0][1]) if tags else 0
            else:
                await self._release(rid, tags, now)
                order.state, order.footprint = OrderState.EXPIRED, None
        else:
            release = before == "held" or self.config.settings.release_on_cancel
            await self._release(rid, tags, now, release)
            order.state = OrderState.CANCELLED
            if release:
                order.footprint = None
        order.updated_at = now
        await self._call("fg_end_move", order_keys(order.order_id), (order.order_id, order.state.value, _encode(order)))
        return order

    # -- what any gateway sweeps ------------------------------------------------------------

    async def sweep(self) -> int:
        """Give back or finish the orders whose gateway died mid-way, and count out the holds that
        ran out (with a system clock), in the next `SWEEP_BUCKETS` order buckets: every gateway
        goes round all of them in BUCKETS / SWEEP_BUCKETS rounds, from its own starting point, so
        the sweepers of a large fleet do not each call every bucket every second. Returns how many
        orders were recovered."""
        now = await self.now()
        start, self._sweep_from = self._sweep_from, (self._sweep_from + SWEEP_BUCKETS) % BUCKETS
        buckets = [(start + i) % BUCKETS for i in range(SWEEP_BUCKETS)]
        if not self.manual_clock:
            self.stats.expired += await self.expire_holds(now, buckets)
        stale = await self._batch([("fg_stale", [inflight_key(b)], (now, 100)) for b in buckets])
        done = 0
        for oids in stale:
            for raw in oids:
                try:
                    await self._recover(raw.decode(), now)
                except ApiError as e:  # its move ended otherwise (expired, taken by another): next one
                    log.info("sweep: order %s: %s", raw.decode(), e.message)
                done += 1
        return done

    async def expire_holds(self, now: int, buckets: Sequence[int] = range(BUCKETS)) -> int:
        """Holds of `buckets` that ran out by `now`, each counted by one gateway (their quotas are
        back already: every slot ends its own holds at their time)."""
        return sum(await self._batch([("fg_expire", [holds_key(b)], (now,)) for b in buckets]))

    async def ping(self) -> None:
        """One call into the configuration's slot: Redis answers, with our library."""
        await self._call("fg_version", [CLOCK_KEY], ())

    async def live_holds(self) -> int:
        now = await self.now()
        return sum(await self._batch([("fg_holds", [holds_key(b)], (now,)) for b in range(BUCKETS)]))

    async def _recover(self, order_id: str, now: int) -> None:
        okeys = order_keys(order_id)
        st, blob, move, attempt, attempt_blob, rid, lease = await self._call("fg_order", okeys, ())
        if st is None:  # gone: drop its entry from the bucket's set of orders in flight
            await self._call("fg_abandon", okeys, (now, order_id, b"", "0"))
            return
        if st not in (b"moving", b"pending") or int(lease or 0) > now:
            return  # finished meanwhile, or its gateway is still on it
        if st == b"moving":
            await self._move(order_id, move.decode().partition(":")[0])
            return
        await self._give_back(attempt_blob or b"", now)
        self.stats.takeovers += 1
        await self._call("fg_abandon", okeys, (now, order_id, attempt or b"", "0"))

    # -- admin ----------------------------------------------------------------------------

    async def change(self, record: Record) -> None:
        await self.configs.change(record)
        user_id = pardoned(record)
        if user_id is not None:
            await self._call("fg_pardon", slot_keys(user_key(user_id)), (await self.now(),))

    async def user_ledger(self, user_id: str) -> Ledger:
        return await self.subject_ledger(user_key(user_id))

    async def subject_ledger(self, subject: SubjectKey) -> Ledger:
        """The subject's actor as Redis holds it now, with every window it holds (a window key
        ends with its length), as the single node's actor keeps them."""
        flat, listed = await self._call("fg_read", slot_keys(subject), (await self.now(), "*"))
        totals = fields(listed)
        windows = tuple((w, int(w.rsplit(SEP, 1)[1])) for w in totals)
        return view([Read(subject, windows)], [(flat, list(totals.values()))], self.config)

    async def activity_ledger(self, activity_ids: list[str]) -> Ledger:
        """The activities' budgets as Redis holds them now (every bucket of a split one, summed)."""
        cfg = self.config
        wanted = [Read(activity_tag(a, b)) for a in activity_ids for b in range(buckets(cfg.activities.get(a)))]
        now = await self.now()
        return view(wanted, await self._batch([("fg_read", slot_keys(r.tag), (now,)) for r in wanted]), cfg)


def _read_calls(wanted: list[Read], now: int) -> list[Call]:
    return [("fg_read", slot_keys(r.tag), (now, *(w for w, _ in r.windows))) for r in wanted]


def _taken_over(order_id: str) -> Unavailable:
    return Unavailable("order_in_flight", f"order {order_id!r} took too long here and was taken over; retry", {"Retry-After": "1"})
