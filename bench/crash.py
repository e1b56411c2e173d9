"""Crash test of flashguard's durability, in the Jepsen style (SPEC section 7, issue 4).

Each round starts the real server (`python -m gateway.cli serve`) on one data directory, checks
what it restored against everything the harness knows, drives concurrent checks, confirms,
cancels, coupon claims and snapshot requests at it, and SIGKILLs it at a random moment. The data
directory carries over from round to round.

The checker is exact. For every order the harness keeps the state its last acknowledged call left
it in, plus at most one call whose answer never arrived (calls on one order are serialised, and a
call goes unanswered only when the kill lands). At restart:

1. every order must be in a state its history allows: the acknowledged one, or the one the
   unanswered call would have made; an acknowledged check keeps its decision, stripped discounts
   and hold expiry; a known-absent order stays absent;
2. every counter (each user's SKU, SPU, activity, activity-SKU and coupon counters, each
   activity's held, spent and held+spent budget) lies between the sum of the acknowledged
   contributions and the sum of the attempted ones, and equals exactly what the restored orders
   hold (so counters and orders were restored from one consistent state);
3. no limit or budget is passed.

What the restart revealed (whether an unanswered call took effect) becomes an acknowledged fact
for later rounds. After the last round the server is restarted once more, verified, stopped with
SIGTERM (the final snapshot), and verified again.

    python -m bench.crash --rounds 50 [--seed N] [--workers 32] [--data DIR]

prints one JSON line: rounds, operations, attempted / acknowledged / unknown counts per call kind,
what the unknown calls turned out to be, decisions, violations. Exit status 1 on a violation.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
TOKEN = "crash-test-admin-token"

# The catalogue: tight limits, so that they matter within a few hundred orders.
SKUS: dict[str, str | None] = {"S1": "P1", "S2": "P1", "S3": "P2", "S4": "P2", "S5": None}
SKU_USER_LIMIT = 3
SPU_USER_LIMIT = 4
UNIT_PRICE = 10_000
ACTIVITY_BUDGET = {"A1": 30_000, "A2": 250_000}  # A1 fills up after a dozen orders
ACTIVITY_USER_LIMIT = {"A1": 3, "A2": 5}
ACTIVITY_SKU_LIMITS: dict[str, dict[str, int]] = {"A1": {"S1": 1}, "A2": {}}
COUPON = "C1"
COUPON_LIMIT = 2
USERS = 30  # buyers at the start; each round brings NEW_USERS more, so that new buyers keep the
NEW_USERS = 5  # limits in play once the first ones have bought all they may

LIVE = ("held", "confirmed")  # the states in which an order's footprint counts
Key = tuple[str, ...]
KillMode = Literal["group", "parent"]
SnapshotKill = Literal["in_flight", "answered"]


def config_doc() -> dict[str, Any]:
    """The configuration the server is seeded with (written to a JSON file)."""
    return {
        "settings": {"hold_ttl": "24h", "locale": "en", "release_on_cancel": True, "unknown": "allow"},
        "skus": [
            {
                "sku_id": sku,
                **({"spu_id": spu} if spu is not None else {}),
                "category": "phone",
                "brand": "acme",
                "cost_price": UNIT_PRICE // 2,
                "original_price": UNIT_PRICE,
                "limits": {"user": SKU_USER_LIMIT},
            }
            for sku, spu in SKUS.items()
        ],
        "spus": [{"spu_id": spu, "limits": {"user": SPU_USER_LIMIT}} for spu in sorted({s for s in SKUS.values() if s})],
        "activities": [
            {
                "activity_id": aid,
                "budget": ACTIVITY_BUDGET[aid],
                "user_limit": ACTIVITY_USER_LIMIT[aid],
                "sku_limits": ACTIVITY_SKU_LIMITS[aid],
                "disclose_limits": True,
            }
            for aid in ACTIVITY_BUDGET
        ],
        "coupons": [{"coupon_id": COUPON, "activity_id": "A1", "per_user_limit": COUPON_LIMIT}],
        "auto_blacklist": {"negative_margin": False},
    }


def limit_of(key: Key) -> int | None:
    """The limit or budget a counter must never pass (None: unlimited)."""
    if key[0] == "activity":
        return ACTIVITY_BUDGET[key[1]] if key[2] == "used" else None
    kind, ident = key[2], key[3]
    if kind == "sku":
        return SKU_USER_LIMIT
    if kind == "spu":
        return SPU_USER_LIMIT
    if kind == "activity":
        return ACTIVITY_USER_LIMIT[ident]
    if kind == "activity_sku":
        aid, sku = ident.split("/", 1)
        return ACTIVITY_SKU_LIMITS[aid].get(sku)
    if kind == "coupon":
        return COUPON_LIMIT
    return None


# -- the model ---------------------------------------------------------------------------


@dataclass(slots=True)
class Order:
    """What the harness knows of one order."""

    order_id: str
    user: str
    body: dict[str, Any]
    state: str = "absent"  # after the last acknowledged call (or as the last restart showed it)
    decision: str | None = None
    stripped: tuple[str, ...] = ()
    expires_at: int | None = None
    pending: str | None = None  # a call attempted whose answer never arrived
    busy: bool = False
    history: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One state an order may be found in at restart. `decisions` None: the known decision must
    stand (with its stripped discounts and expiry); `stripped` None: not known (bounded by the
    unstripped body)."""

    state: str
    decisions: frozenset[str] | None = None
    stripped: tuple[str, ...] | None = ()


def outcomes(o: Order) -> list[Outcome]:
    if o.pending == "check":  # only ever attempted on an order known absent
        return [
            Outcome("absent", frozenset({"none"})),
            Outcome("denied", frozenset({"deny"})),
            Outcome("held", frozenset({"allow", "degrade"}), None),
        ]
    if o.pending == "confirm" and o.state == "held":
        return [Outcome("held", None, o.stripped), Outcome("confirmed", None, o.stripped)]
    if o.pending == "cancel" and o.state in LIVE:
        return [Outcome(o.state, None, o.stripped), Outcome("cancelled", None, o.stripped)]
    return [Outcome(o.state, None, o.stripped)]


def contribution(o: Order, state: str, stripped: tuple[str, ...] | None) -> Counter[Key]:
    """The counters an order in `state` adds to (stripped None: the unstripped body, an upper bound)."""
    c: Counter[Key] = Counter()
    if state not in LIVE:
        return c
    strip = set(stripped or ())
    user = o.user
    for item in o.body["items"]:
        sku, q = item["sku_id"], item["quantity"]
        c[("user", user, "sku", sku)] += q
        spu = SKUS[sku]
        if spu is not None:
            c[("user", user, "spu", spu)] += q
        acts: list[str] = []
        for d in item["discounts"]:
            aid = d.get("activity_id")
            if d["id"] in strip or aid is None:
                continue
            c[("activity", aid, state)] += d["amount"]
            c[("activity", aid, "used")] += d["amount"]
            if aid not in acts:
                acts.append(aid)
        for aid in acts:
            c[("user", user, "activity", aid)] += q
            c[("user", user, "activity_sku", f"{aid}/{sku}")] += q
    return c


class Pool:
    """A set with O(1) add, discard and random choice."""

    def __init__(self) -> None:
        self._items: list[str] = []
        self._index: dict[str, int] = {}

    def add(self, item: str) -> None:
        if item not in self._index:
            self._index[item] = len(self._items)
            self._items.append(item)

    def discard(self, item: str) -> None:
        i = self._index.pop(item, None)
        if i is None:
            return
        last = self._items.pop()
        if i < len(self._items):
            self._items[i] = last
            self._index[last] = i

    def choice(self, rng: random.Random) -> str | None:
        return self._items[rng.randrange(len(self._items))] if self._items else None


@dataclass(slots=True)
class Claims:
    """One user's coupon claims: the count the last restart showed, and the calls since."""

    base: int = 0
    acked: int = 0
    unknown: int = 0
    inflight: int = 0


# -- the server process ----------------------------------------------------------------------


class ServerFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


class Server:
    """One `flashguard serve` process, in its own process group (with its snapshot children)."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.base = f"http://{HOST}:{port}"
        self.gone = False  # the process and every child it forked are dead and reaped

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def kill(self, mode: KillMode = "group") -> None:
        """SIGKILL: the whole process group at once, or the server alone (a snapshot child it
        forked may then finish its file, as it would after a real `kill -9`); in both cases
        nothing of the group is left running when this returns."""
        if self.gone:
            return
        if mode == "parent":
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and self._group_alive():
                time.sleep(0.01)
        self.kill_group()

    def kill_group(self) -> None:
        if self.gone:
            return  # never signal a process group id that may have been reused
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and self._group_alive():
            time.sleep(0.01)
        self.gone = not self._group_alive()

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM and wait; the exit status, or None if it did not stop in time (then killed)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            return None


async def start_server(
    data: Path, config: Path, log: Path, fsync: str, snapshot_every: float, timeout: float = 30.0
) -> Server:
    """Start the server and wait for its `listening on` line; ServerFailed if it does not come."""
    env = {**os.environ, "FLASHGUARD_ADMIN_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    for _ in range(5):
        port = free_port()
        argv = [
            sys.executable, "-m", "gateway.cli", "serve", "--host", HOST, "--port", str(port),
            "--data", str(data), "--config", str(config), "--fsync", fsync,
            "--snapshot-every", str(snapshot_every),
        ]  # fmt: skip
        with open(log, "ab") as out:
            out.write(f"--- {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True)
        server = Server(proc, port, log)
        try:
            deadline = time.monotonic() + timeout
            marker = f"listening on http://{HOST}:{port}"
            while True:
                text = log.read_text(errors="replace")
                if marker in text.rsplit("--- ", 1)[-1]:
                    return server
                if proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    raise ServerFailed(f"no 'listening on' line after {timeout}s:\n{server.log_tail()}")
                await asyncio.sleep(0.02)
        except BaseException:
            server.kill_group()
            raise
        server.kill_group()
        if "address already in use" not in server.log_tail().lower():
            raise ServerFailed(f"the server exited with status {proc.returncode} before listening:\n{server.log_tail()}")
    raise ServerFailed("no free port after 5 attempts")


# -- the harness ---------------------------------------------------------------------------


@dataclass(slots=True)
class RoundPlan:
    """How one round ends: after `delay` seconds (random when None); `snapshot_kill` sends a
    snapshot request first and kills while it runs or right after its answer."""

    delay: float | None = None
    snapshot_kill: SnapshotKill | None = None
    kill_mode: KillMode | None = None
    fsync: str | None = None


@dataclass(slots=True)
class Result:
    seed: int
    rounds: int = 0
    attempted: Counter[str] = field(default_factory=Counter)
    acknowledged: Counter[str] = field(default_factory=Counter)
    unknown: Counter[str] = field(default_factory=Counter)
    unknown_applied: int = 0  # unanswered calls the restart showed to have taken effect
    unknown_lost: int = 0  # ... and not
    decisions: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    statuses: Counter[str] = field(default_factory=Counter)
    snapshot_kills: Counter[str] = field(default_factory=Counter)
    kill_modes: Counter[str] = field(default_factory=Counter)
    fsync_modes: Counter[str] = field(default_factory=Counter)
    restarts: int = 0
    verified_orders: int = 0
    verified_counters: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    data_dir: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "bench": "crash",
            "seed": self.seed,
            "rounds": self.rounds,
            "operations": sum(self.attempted.values()),
            "attempted": dict(self.attempted),
            "acknowledged": dict(self.acknowledged),
            "unknown": dict(self.unknown),
            "unknown_applied": self.unknown_applied,
            "unknown_lost": self.unknown_lost,
            "decisions": dict(self.decisions),
            "refusal_reasons": dict(self.refusals),
            "statuses": dict(self.statuses),
            "restarts": self.restarts,
            "verified_orders": self.verified_orders,
            "verified_counters": self.verified_counters,
            "kill_modes": dict(self.kill_modes),
            "fsync_modes": dict(self.fsync_modes),
            "snapshot_kills": dict(self.snapshot_kills),
            "violations": len(self.violations),
            "violation_details": self.violations[:20],
            "data_dir": self.data_dir,  # to look into after a violation (kept with --data)
            "seconds": round(self.seconds, 1),
        }


class CrashHarness:
    def __init__(self, workdir: Path, seed: int, workers: int = 32, verbose: bool = False) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.config = workdir / "config.json"
        self.logs = workdir / "logs"
        self.rng = random.Random(seed)
        self.workers = workers
        self.verbose = verbose
        self.result = Result(seed, data_dir=str(self.data))
        self.orders: dict[str, Order] = {}
        self.idle: dict[str, Pool] = {}
        self.users: list[str] = []
        self.claims: dict[str, Claims] = {}
        self._add_users(USERS)
        self.round = 0
        self.stopping = False
        self.round_acks = 0
        self.snapshot_busy = False
        self._next_id = 0
        self._starts = 0
        self.auth = {"Authorization": f"Bearer {TOKEN}"}

    def _add_users(self, n: int) -> None:
        for _ in range(n):
            user = f"u{len(self.users):04d}"
            self.users.append(user)
            self.claims[user] = Claims()

    # -- running ------------------------------------------------------------------------

    async def run(self, rounds: int, plans: Iterable[RoundPlan] = ()) -> Result:
        """`rounds` rounds, the last ones as `plans` says and the others with random kills, then a
        final verified restart, a clean stop and one more verified restart."""
        start = time.monotonic()
        self.data.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(config_doc(), indent=1))
        try:
            tail = list(plans)[:rounds]
            for plan in [RoundPlan() for _ in range(rounds - len(tail))] + tail:
                self.round += 1
                await self._round(plan)
                self.result.rounds += 1
                self._log(f"round {self.round}: {len(self.result.violations)} violations so far")
            self.round += 1
            await self._final()
        except ServerFailed as e:
            self._violation(f"the server failed: {e}")
        except Exception as e:
            e.add_note(f"crash harness seed {self.result.seed}, round {self.round}, work directory {self.workdir}")
            raise
        finally:
            self.result.seconds = time.monotonic() - start
        return self.result

    async def _start(self, fsync: str | None = None) -> Server:
        self._starts += 1
        fsync = fsync or self.rng.choice(["batch", "batch", "always", "off"])
        every = self.rng.choice([0.0, 0.2, 0.5, 60.0])
        self.result.fsync_modes[fsync] += 1
        log = self.logs / f"server-{self._starts:03d}.log"
        server = await start_server(self.data, self.config, log, fsync, every)
        self.result.restarts += 1
        return server

    def _session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.workers * 2), timeout=aiohttp.ClientTimeout(total=30)
        )

    async def _round(self, plan: RoundPlan) -> None:
        server = await self._start(plan.fsync)
        try:
            async with self._session() as session:
                await self._verify(session, server)
                self._add_users(NEW_USERS)
                self.stopping = False
                self.round_acks = 0
                tasks = [asyncio.create_task(self._worker(session, server)) for _ in range(self.workers)]
                try:
                    await self._kill_when_due(session, server, plan)
                finally:
                    self.stopping = True
                    server.kill_group()
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            server.kill_group()

    async def _kill_when_due(self, session: aiohttp.ClientSession, server: Server, plan: RoundPlan) -> None:
        delay = plan.delay if plan.delay is not None else self.rng.uniform(0.05, 1.0)
        modes: list[KillMode] = ["group", "parent"]
        mode: KillMode = plan.kill_mode if plan.kill_mode is not None else self.rng.choice(modes)
        call: asyncio.Task[None] | None = None
        await asyncio.sleep(delay)
        deadline = time.monotonic() + 20.0
        while self.round_acks == 0:  # every round gets at least one answer before it is cut
            if time.monotonic() > deadline:
                self._violation("no call was answered within 20 s")
                break
            await asyncio.sleep(0.01)
        if plan.snapshot_kill is not None:
            call = asyncio.create_task(self._snapshot(session, server, force=True))
            if plan.snapshot_kill == "in_flight":
                await asyncio.sleep(self.rng.uniform(0.0, 0.01))
            else:
                await call
            self.result.snapshot_kills[plan.snapshot_kill] += 1
        self.stopping = True
        server.kill(mode)
        self.result.kill_modes[mode] += 1
        if call is not None:
            await asyncio.gather(call, return_exceptions=True)

    async def _final(self) -> None:
        """Restart and verify; stop cleanly (final snapshot); restart and verify once more."""
        server = await self._start()
        try:
            async with self._session() as session:
                await self._verify(session, server)
            status = server.stop()
            if status != 0:
                self._violation(f"SIGTERM: the server exited with status {status}:\n{server.log_tail()}")
        finally:
            server.kill_group()
        server = await self._start()
        try:
            async with self._session() as session:
                await self._verify(session, server)
        finally:
            server.kill_group()

    # -- calls -------------------------------------------------------------------------

    async def _call(
        self, session: aiohttp.ClientSession, server: Server, method: str, path: str, body: Any = None, admin: bool = False
    ) -> tuple[int, Any] | None:
        """(status, body), or None when no answer arrived."""
        try:
            async with session.request(
                method, server.base + path, json=body, headers=self.auth if admin else None
            ) as resp:
                data = await resp.json(content_type=None)
                self.result.statuses[str(resp.status)] += 1
                return resp.status, data
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            if not self.stopping:
                self._violation(f"{method} {path} failed while the server was up: {e!r}\n{server.log_tail()}")
            return None

    def _attempt(self, kind: str) -> None:
        self.result.attempted[kind] += 1

    def _ack(self, kind: str) -> None:
        self.result.acknowledged[kind] += 1
        self.round_acks += 1

    def _unknown(self, kind: str) -> None:
        self.result.unknown[kind] += 1

    async def _worker(self, session: aiohttp.ClientSession, server: Server) -> None:
        rng = self.rng
        while not self.stopping:
            r = rng.random()
            if r < 0.45:
                await self._check(session, server, None)
            elif r < 0.65:
                await self._confirm(session, server, self._pick(["held"] if rng.random() < 0.9 else None))
            elif r < 0.82:
                await self._cancel(session, server, self._pick(["held", "confirmed"] if rng.random() < 0.9 else None))
            elif r < 0.90:
                await self._check(session, server, self._pick(None, absent=True))
            elif r < 0.99:
                await self._claim(session, server)
            else:
                await self._snapshot(session, server)
            await asyncio.sleep(0)  # a pick that found nothing must not starve the loop

    def _pick(self, states: list[str] | None, absent: bool = False) -> Order | None:
        """An idle order in one of `states` (None: any state; known-absent ones only if `absent`)."""
        wanted = states if states is not None else [s for s in self.idle if absent or s != "absent"]
        candidates = [s for s in wanted if s in self.idle]
        if not candidates:
            return None
        pool = self.idle[self.rng.choice(candidates)]
        ident = pool.choice(self.rng)
        return self.orders[ident] if ident is not None else None

    def _take(self, o: Order) -> None:
        o.busy = True
        self.idle.get(o.state, Pool()).discard(o.order_id)

    def _release(self, o: Order) -> None:
        o.busy = False
        self.idle.setdefault(o.state, Pool()).add(o.order_id)

    def _new_order(self) -> Order:
        rng = self.rng
        self._next_id += 1
        user = rng.choice(self.users)
        items = []
        for _ in range(1 if rng.random() < 0.7 else 2):
            q = 1 if rng.random() < 0.75 else 2
            discounts: list[dict[str, Any]] = []
            if rng.random() < 0.5:
                discounts.append({"id": "A1", "kind": "activity", "activity_id": "A1", "amount": rng.randrange(500, 3001)})
            if rng.random() < 0.2:
                discounts.append({"id": "C1", "kind": "coupon", "activity_id": "A1", "amount": rng.randrange(200, 1001)})
            if rng.random() < 0.4:
                discounts.append({"id": "A2", "kind": "activity", "activity_id": "A2", "amount": rng.randrange(500, 3001)})
            if rng.random() < 0.1:
                discounts.append(
                    {"id": "A2-P", "kind": "points", "activity_id": "A2", "amount": rng.randrange(100, 501), "funded_by": "partner"}
                )
            if rng.random() < 0.15:
                discounts.append({"id": "BEANS", "kind": "points", "amount": rng.randrange(10, 101), "funded_by": "partner"})
            items.append({"sku_id": rng.choice(list(SKUS)), "quantity": q, "unit_price": UNIT_PRICE, "discounts": discounts})
        ident = f"o{self._next_id}"
        body: dict[str, Any] = {"order_id": ident, "user_id": user, "items": items}
        if rng.random() < 0.5:
            body["on_refusal"] = "degrade"
        order = Order(ident, user, body)
        self.orders[ident] = order
        return order

    async def _check(self, session: aiohttp.ClientSession, server: Server, o: Order | None) -> None:
        """A new order's check, or a repeated check of a known one (same body)."""
        if o is None:
            o = self._new_order()
        self._take(o)
        fresh = o.state == "absent"
        kind = "check" if fresh else "recheck"
        self._attempt(kind)
        res = await self._call(session, server, "POST", "/v1/orders/check", o.body)
        if res is None:
            self._unknown(kind)
            o.pending = "check" if fresh else None  # a repeat cannot change anything
            o.history.append(f"r{self.round} {kind} ?")
            return
        status, data = res
        o.history.append(f"r{self.round} {kind} -> {status} {data.get('decision') if isinstance(data, dict) else data}")
        if status != 200:
            self._violation(f"{kind} of {o.order_id}: status {status} {data}")
            if status >= 500:
                o.pending = "check" if fresh else None
                return
            self._release(o)
            return
        self._ack(kind)
        decision, stripped = data["decision"], tuple(data["stripped"])
        expires = data["hold"]["expires_at"] if data.get("hold") else None
        if fresh:
            self.result.decisions[decision] += 1
            for reason in data["reasons"]:
                self.result.refusals[reason["code"]] += 1
            o.state = "denied" if decision == "deny" else "held"
            o.decision, o.stripped, o.expires_at = decision, stripped, expires
        elif (decision, stripped, expires) != (o.decision, o.stripped, o.expires_at):
            self._violation(
                f"repeated check of {o.order_id} answered {(decision, stripped, expires)}, "
                f"first answer {(o.decision, o.stripped, o.expires_at)}"
            )
        self._release(o)

    async def _transition(self, session: aiohttp.ClientSession, server: Server, o: Order | None, op: str) -> None:
        if o is None:
            return
        self._take(o)
        self._attempt(op)
        expected: tuple[int, str]
        if op == "confirm":
            expected = {
                "held": (200, "confirmed"),
                "confirmed": (200, "confirmed"),
                "cancelled": (409, "cancelled"),
                "denied": (409, "denied"),
                "expired": (410, "expired"),
            }[o.state]
        else:
            expected = (200, "denied") if o.state == "denied" else (200, "expired" if o.state == "expired" else "cancelled")
        res = await self._call(session, server, "POST", f"/v1/orders/{o.order_id}/{op}")
        if res is None:
            self._unknown(op)
            o.pending = op
            o.history.append(f"r{self.round} {op} ?")
            return
        status, data = res
        state = str(data.get("state")) if status == 200 and isinstance(data, dict) else o.state
        o.history.append(f"r{self.round} {op} -> {status} {state}")
        if (status, state) != expected:
            self._violation(f"{op} of {o.order_id} ({o.state}) answered {status} {data}, expected {expected}")
            o.pending = op  # whatever happened, the next restart shows it
            return
        self._ack(op)
        o.state = state
        self._release(o)

    async def _confirm(self, session: aiohttp.ClientSession, server: Server, o: Order | None) -> None:
        await self._transition(session, server, o, "confirm")

    async def _cancel(self, session: aiohttp.ClientSession, server: Server, o: Order | None) -> None:
        await self._transition(session, server, o, "cancel")

    async def _claim(self, session: aiohttp.ClientSession, server: Server) -> None:
        user = self.rng.choice(self.users)
        c = self.claims[user]
        self._attempt("claim")
        c.inflight += 1
        try:
            res = await self._call(session, server, "POST", "/v1/coupons/claim-check", {"user_id": user, "coupon_id": COUPON})
        finally:
            c.inflight -= 1
        if res is None:
            c.unknown += 1
            self._unknown("claim")
            return
        status, data = res
        if status != 200:
            self._violation(f"claim by {user}: status {status} {data}")
            c.unknown += 1
            return
        self._ack("claim")
        if data["decision"] == "allow":
            c.acked += 1
        elif c.base + c.acked + c.unknown + c.inflight < COUPON_LIMIT:
            self._violation(f"claim by {user} refused below its limit ({c}): {data}")

    async def _snapshot(self, session: aiohttp.ClientSession, server: Server, force: bool = False) -> None:
        if self.snapshot_busy and not force:
            return
        self.snapshot_busy = True
        try:
            self._attempt("snapshot")
            res = await self._call(session, server, "POST", "/v1/admin/snapshot", admin=True)
            if res is None:
                self._unknown("snapshot")
            elif res[0] != 200:
                self._violation(f"snapshot request answered {res[0]} {res[1]}")
            else:
                self._ack("snapshot")
        finally:
            self.snapshot_busy = False

    # -- the checker ------------------------------------------------------------------------

    async def _verify(self, session: aiohttp.ClientSession, server: Server) -> None:
        """Compare what the restarted server holds with what the harness knows; then take what it
        holds as the known state for the next round."""
        self.stopping = False
        orders = list(self.orders.values())
        views: dict[str, dict[str, Any] | None] = {}
        queue = iter(orders)

        async def fetch() -> None:
            for o in queue:
                res = await self._call(session, server, "GET", f"/v1/orders/{o.order_id}")
                if res is None:
                    raise ServerFailed(f"GET /v1/orders/{o.order_id} got no answer:\n{server.log_tail()}")
                status, data = res
                if status == 404:
                    views[o.order_id] = None
                elif status == 200:
                    views[o.order_id] = data
                else:
                    raise ServerFailed(f"GET /v1/orders/{o.order_id}: status {status} {data}")

        await asyncio.gather(*(fetch() for _ in range(self.workers)))

        lower: Counter[Key] = Counter()
        upper: Counter[Key] = Counter()
        exact: Counter[Key] = Counter()
        for o in orders:
            view = views[o.order_id]
            possible = outcomes(o)
            contribs = [contribution(o, out.state, out.stripped) for out in possible]
            touched: set[Key] = set()
            for contrib in contribs:
                touched.update(contrib)
            for key in touched:
                values = [contrib.get(key, 0) for contrib in contribs]
                lower[key] += min(values)
                upper[key] += max(values)
            state = "absent" if view is None else view["state"]
            decision = "none" if view is None else view["decision"]
            stripped = () if view is None else tuple(view["stripped"])
            expires = None if view is None else view["expires_at"]
            if not any(self._matches(o, out, state, decision, stripped, expires) for out in possible):
                self._violation(
                    f"order {o.order_id} restored as {state}/{decision} stripped={list(stripped)} expires={expires}; "
                    f"expected one of {[(out.state, sorted(out.decisions or [o.decision or 'none'])) for out in possible]} "
                    f"(known {o.state}/{o.decision} stripped={list(o.stripped)} expires={o.expires_at}, "
                    f"pending {o.pending}); history: {o.history}"
                )
            exact.update(contribution(o, state, stripped))
            if o.pending is not None:
                changed = state != o.state
                self.result.unknown_applied += changed
                self.result.unknown_lost += not changed
            o.state, o.decision, o.stripped, o.expires_at = state, (None if view is None else decision), stripped, expires
            o.pending, o.busy = None, False
        self.result.verified_orders += len(orders)

        restored: dict[Key, int] = {}
        for user in self.users:
            res = await self._call(session, server, "GET", f"/v1/admin/users/{user}", admin=True)
            if res is None or res[0] != 200:
                raise ServerFailed(f"GET /v1/admin/users/{user}: {res}")
            for kind, counters in res[1]["counters"].items():
                for ident, value in counters.items():
                    restored[("user", user, kind, ident)] = value
            c = self.claims[user]
            key = ("user", user, "coupon", COUPON)
            lower[key] += c.base + c.acked
            upper[key] += c.base + c.acked + c.unknown
        for aid in ACTIVITY_BUDGET:
            res = await self._call(session, server, "GET", f"/v1/admin/activities/{aid}", admin=True)
            if res is None or res[0] != 200:
                raise ServerFailed(f"GET /v1/admin/activities/{aid}: {res}")
            a = res[1]
            restored[("activity", aid, "held")] = a["held"]
            restored[("activity", aid, "confirmed")] = a["spent"]
            restored[("activity", aid, "used")] = a["held"] + a["spent"]
            if a["budget"] != ACTIVITY_BUDGET[aid]:
                self._violation(f"activity {aid}: budget restored as {a['budget']}, configured {ACTIVITY_BUDGET[aid]}")

        keys = set(lower) | set(upper) | set(exact) | set(restored)
        for key in sorted(keys):
            value = restored.get(key, 0)
            lo, hi = lower.get(key, 0), upper.get(key, 0)
            if not lo <= value <= hi:
                self._violation(f"counter {'/'.join(key)} restored as {value}: acknowledged {lo}, attempted {hi}")
            if key[2] != "coupon" and value != exact.get(key, 0):
                self._violation(
                    f"counter {'/'.join(key)} restored as {value}, but the restored orders hold {exact.get(key, 0)}"
                )
            limit = limit_of(key)
            if limit is not None and value > limit:
                self._violation(f"counter {'/'.join(key)} is {value}, past its limit {limit}")
        self.result.verified_counters += len(keys)
        for user, c in self.claims.items():
            c.base, c.acked, c.unknown = restored.get(("user", user, "coupon", COUPON), 0), 0, 0
        self.idle = {}
        for o in orders:
            self._release(o)

    @staticmethod
    def _matches(
        o: Order, out: Outcome, state: str, decision: str, stripped: tuple[str, ...], expires: int | None
    ) -> bool:
        if state != out.state:
            return False
        if out.decisions is not None:
            return decision in out.decisions
        return (decision, stripped, expires) == (o.decision or "none", o.stripped, o.expires_at)

    def _violation(self, text: str) -> None:
        self.result.violations.append(f"round {self.round}: {text}")
        self._log("VIOLATION " + self.result.violations[-1])

    def _log(self, text: str) -> None:
        if self.verbose:
            print(text, file=sys.stderr, flush=True)


async def run_crash(
    workdir: Path, rounds: int, seed: int, plans: Iterable[RoundPlan] = (), workers: int = 32, verbose: bool = False
) -> Result:
    return await CrashHarness(workdir, seed, workers, verbose).run(rounds, plans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--workers", type=int, default=32, help="concurrent clients")
    parser.add_argument("--snapshot-kills", type=int, default=2, help="of the rounds, how many end at a snapshot request")
    parser.add_argument("--data", type=Path, default=None, help="work directory to keep (default: a temporary one)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    plans = [RoundPlan(snapshot_kill="in_flight" if i % 2 == 0 else "answered") for i in range(args.snapshot_kills)]
    with contextlib.ExitStack() as stack:
        workdir = args.data or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flashguard-crash-")))
        result = asyncio.run(run_crash(workdir, args.rounds, seed, plans, args.workers, args.verbose))
    print(json.dumps(result.summary()))
    sys.exit(1 if result.violations else 0)


if __name__ == "__main__":
    main()
