"""The HTTP load benchmark: a flash sale against flashguard and its two peers, then an audit.

Population: `--users` honest buyers and the scenario's scalper rings (many accounts sharing devices,
phones, names and one town address), Zipf-popular SKUs, an activity whose budget runs out during
the sale (see `bench.scenario`). For each system (`ceiling`, `flashguard`, `redis`; see
`bench.peers`), each on a fresh server pinned to one core (`taskset -c 0`) with the load on the
other (`taskset -c 1`):

1. saturation: a closed loop with `--concurrency` checks in flight (check-only), after a warm-up,
   gives the saturated throughput in checks/s;
2. the spike: an open loop at `--open-fraction` of the ceiling's saturated rate (or `--rate`): Poisson
   arrivals whose rate ramps from 0 to the peak in `--ramp` s, holds `--hold` s and decays to 0 in
   `--decay` s. Sends never wait for answers; each latency runs from the intended send time, so a
   stalled server cannot hide its queue. 70% of the held orders are confirmed and 10% cancelled
   after a simulated payment delay (0.3-2.3 s), as checkout would.

Then flashguard is audited: no limit or budget passed (recomputed from every held order and
checked against the server's own counters), every ring held to its limits, no honest buyer refused
by a rule meant for rings. Prints one JSON line per system, writes `bench/report.md` and
`bench/latency.png`.

    .venv/bin/python -m bench.flash_sale                       # the default run (~2.5 minutes)
    .venv/bin/python -m bench.flash_sale --systems flashguard --saturate
    .venv/bin/python -m bench.flash_sale --systems flashguard,redis --rate 3000

Load goes to 127.0.0.1 only; every process the bench starts is stopped by it (and dies with it).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import importlib
import json
import math
import multiprocessing as mp
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol, cast

import msgspec

from bench.scenario import Scenario

# The bench's own dependencies (bench/requirements.txt) are imported by name so that mypy passes
# where they are not installed (CI installs only the dev extra); hdrhistogram has no types anyway.
HdrHistogram: Any = importlib.import_module("hdrh.histogram").HdrHistogram

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
SYSTEMS = ("ceiling", "flashguard", "redis")
HOST = "127.0.0.1"
CHECK_PATH = b"/v1/orders/check"
CHUNK = 20_000  # bodies per generated chunk (each chunk is a Scenario seeded seed + chunk index)

# Latencies are recorded in microseconds, 1 us .. 120 s, 3 significant digits.
H_LOW, H_HIGH, H_DIGITS = 1, 120_000_000, 3

# Order outcomes (one byte per order) and follow-up outcomes.
NONE, ALLOW, DEGRADE, DENY, ERROR = 0, 1, 2, 3, 4
OUTCOME = {"allow": ALLOW, "degrade": DEGRADE, "deny": DENY}
F_NONE, F_CONFIRMED, F_CANCELLED, F_ERROR = 0, 1, 2, 3

# Targets of issue 5.
T_CEILING_RATIO = 0.75
T_REDIS_RATIO = 2.0
T_P99_MS = 5.0
T_P999_MS = 20.0


def new_hist() -> Any:
    return HdrHistogram(H_LOW, H_HIGH, H_DIGITS)


def record(hist: Any, seconds: float) -> None:
    hist.record_value(min(max(int(seconds * 1e6), H_LOW), H_HIGH))


def followup(k: int) -> bytes | None:
    """What checkout does with order k once it is held: 70% confirm, 10% cancel, 20% abandon."""
    r = k % 10
    return b"confirm" if r < 7 else b"cancel" if r == 7 else None


def payment_delay(k: int) -> float:
    """Seconds between the hold and the follow-up: spread evenly over 0.3-2.3 s."""
    return 0.3 + 2.0 * ((k * 0.6180339887) % 1.0)


def die_with_parent() -> None:
    """Linux: this process gets SIGTERM when the one that started it dies, so nothing outlives the bench."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def pin(core: int | None, nice: int = 0, own_session: bool = False) -> None:
    """This process on `core` only, at scheduling priority `nice` (negative: ahead of the rest of
    the machine; needs root). With Linux's autogroup scheduling a nice value only ranks processes
    of one session, so `own_session` moves the process to a session of its own first and gives
    that session's group the same nice."""
    if core is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    if not nice:
        return
    try:
        if own_session:
            os.setsid()
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError as e:
        print(f"cannot set nice {nice}: {e}", file=sys.stderr)
    if own_session:
        autogroup_nice(nice)


def realtime(priority: int) -> None:
    """SCHED_RR at `priority`: this process preempts every ordinary one on its core at once."""
    try:
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(priority))
    except (OSError, AttributeError) as e:
        print(f"cannot set SCHED_RR {priority}: {e}", file=sys.stderr)


def autogroup_nice(nice: int) -> None:
    """The nice of this process's autogroup (its session), where the kernel has autogroups."""
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass


# -- the scenario -------------------------------------------------------------------------------


@dataclass(slots=True)
class Bodies:
    """Check bodies, encoded once and shared (by fork) with the load processes."""

    users: int
    seed: int
    data: list[bytes] = field(default_factory=list)
    order_ids: list[str] = field(default_factory=list)
    ring: bytearray = field(default_factory=bytearray)  # 1 when the order comes from a scalper ring
    budget_spend: list[int] = field(default_factory=list)  # the order's A1 discounts

    def ensure(self, n: int, jobs: int = 2) -> None:
        chunks = range(len(self.data) // CHUNK, math.ceil(n / CHUNK))
        if not chunks:
            return
        args = [(self.users, self.seed, c) for c in chunks]
        made = _parallel_chunks(args, jobs) if jobs > 1 and len(args) > 1 else None
        if made is None:
            made = [_make_chunk(a) for a in args]
        for data, ids, ring, spend in made:
            self.data += data
            self.order_ids += ids
            self.ring += ring
            self.budget_spend += spend


Chunk = tuple[list[bytes], list[str], bytearray, list[int]]


def _chunk_worker(args: list[tuple[int, int, int]], conn: Connection) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()
    try:
        for a in args:
            conn.send(_make_chunk(a))
    finally:
        conn.close()


def _parallel_chunks(args: list[tuple[int, int, int]], jobs: int) -> list[Chunk] | None:
    """The chunks made by `jobs` forked processes; None (make them here instead) on any trouble."""
    ctx = mp.get_context("fork")
    procs, pipes, shares = [], [], [args[j::jobs] for j in range(jobs)]
    try:
        for share in shares:
            parent_end, child_end = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_chunk_worker, args=(share, child_end), daemon=True)
            proc.start()
            child_end.close()
            procs.append(proc)
            pipes.append(parent_end)
        got: dict[int, Chunk] = {}
        for share, pipe in zip(shares, pipes):
            for a in share:
                if not pipe.poll(120):
                    return None
                got[a[2]] = pipe.recv()
        return [got[a[2]] for a in args]
    except (OSError, EOFError):
        return None
    finally:
        for pipe in pipes:
            pipe.close()
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def _make_chunk(arg: tuple[int, int, int]) -> tuple[list[bytes], list[str], bytearray, list[int]]:
    users, seed, chunk = arg
    bodies = Scenario(users=users, seed=seed + chunk).bodies(CHUNK, prefix=f"c{chunk}")
    data, ids, ring, spend = [], [], bytearray(), []
    for j, body in enumerate(bodies):
        g = chunk * CHUNK + j
        is_ring = body["user_id"].startswith("ring")
        if not is_ring:  # honest buyers' IPs unique over the whole run, not just within a chunk
            body["ip"] = f"10.{(g >> 16) & 255}.{(g >> 8) & 255}.{g & 255}"
        data.append(msgspec.json.encode(body))
        ids.append(body["order_id"])
        ring.append(1 if is_ring else 0)
        spend.append(sum(d["amount"] for i in body["items"] for d in i["discounts"] if d.get("activity_id") == "A1"))
    return data, ids, ring, spend


def bench_config(users: int, budget: int | None) -> dict[str, Any]:
    """The scenario's configuration (every rule kind); activity A1 gets `budget` when given."""
    cfg = Scenario(users=users).config()
    if budget is not None:
        for activity in cfg["activities"]:
            if activity["activity_id"] == "A1":
                activity["budget"] = budget
    return cfg


# -- the spike ----------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class Spike:
    peak: float  # checks/s
    ramp: float
    hold: float
    decay: float

    @property
    def duration(self) -> float:
        return self.ramp + self.hold + self.decay

    def rate(self, t: float) -> float:
        if t < 0 or t >= self.duration:
            return 0.0
        if t < self.ramp:
            return self.peak * t / self.ramp
        if t < self.ramp + self.hold:
            return self.peak
        return self.peak * (1 - (t - self.ramp - self.hold) / self.decay)

    def expected(self) -> float:
        return self.peak * (self.ramp / 2 + self.hold + self.decay / 2)

    def _inverse(self, s: float) -> float:
        """The time by which `s` arrivals are expected (inverse of the cumulative rate)."""
        r = self.peak
        a = r * self.ramp / 2
        if s <= a and self.ramp > 0:
            return math.sqrt(2 * s * self.ramp / r)
        b = a + r * self.hold
        if s <= b:
            return self.ramp + (s - a) / r
        d = self.decay
        x = max(0.0, 1 - 2 * (s - b) / (r * d))
        return self.ramp + self.hold + d * (1 - math.sqrt(x))

    def schedule(self, seed: int) -> list[float]:
        """Poisson arrival times (seconds from the start) of the spike, by time rescaling."""
        rnd = random.Random(seed)
        total = self.expected()
        out: list[float] = []
        s = rnd.expovariate(1.0)
        while s < total:
            out.append(self._inverse(s))
            s += rnd.expovariate(1.0)
        return out


# -- HTTP clients -------------------------------------------------------------------------------


class Client(Protocol):
    async def open(self, n: int) -> None: ...

    async def request(self, method: bytes, path: bytes, body: bytes = b"", token: str | None = None) -> tuple[int, bytes]: ...

    async def close(self) -> None: ...


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time (Content-Length bodies only)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = -1
        self.head_end = 0
        self.status = 0
        self.keep = True
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.need < 0:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            i = head.find(b"\r\ncontent-length:")
            if i < 0:
                self._fail(ConnectionError("response without content-length"))
                return
            j = head.find(b"\r\n", i + 17)
            self.status = int(head[9:12])
            self.keep = b"\r\nconnection: close" not in head
            self.head_end = end + 4
            self.need = end + 4 + int(head[i + 17 : j] if j >= 0 else head[i + 17 :])
        if len(buf) >= self.need:
            body = bytes(buf[self.head_end : self.need])
            del buf[: self.need]
            self.need = -1
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result((self.status, body))

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection lost: {exc}"))


class RawClient:
    """A lean keep-alive pool over asyncio protocols: several times cheaper per request than
    aiohttp's client, so that one load core can push a Python server past its saturation."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.host_header = f"{host}:{port}".encode()
        self.idle: list[_Conn] = []
        self.count = 0
        self.waiters: deque[asyncio.Future[_Conn | None]] = deque()
        self.all: set[_Conn] = set()

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, self.host, self.port)
        self.all.add(conn)
        return conn

    async def open(self, n: int) -> None:
        n = min(n, self.limit) - self.count
        if n <= 0:
            return
        self.count += n
        conns = await asyncio.gather(*(self._connect() for _ in range(n)), return_exceptions=True)
        for c in conns:
            if isinstance(c, _Conn):
                self.idle.append(c)
            else:
                self.count -= 1

    async def _acquire(self) -> _Conn:
        while True:
            while self.idle:
                conn = self.idle.pop()
                if not conn.lost:
                    return conn
                self._drop(conn)
            if self.count < self.limit:
                self.count += 1
                try:
                    return await self._connect()
                except BaseException:
                    self.count -= 1
                    raise
            fut: asyncio.Future[_Conn | None] = asyncio.get_running_loop().create_future()
            self.waiters.append(fut)
            got = await fut
            if got is not None:
                return got

    def _drop(self, conn: _Conn) -> None:
        self.all.discard(conn)
        self.count -= 1
        if conn.transport is not None:
            conn.transport.close()

    def _release(self, conn: _Conn, ok: bool) -> None:
        if not ok or conn.lost or not conn.keep:
            self._drop(conn)
            handoff: _Conn | None = None
        else:
            handoff = conn
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(handoff)
                return
        if handoff is not None:
            self.idle.append(handoff)

    async def request(self, method: bytes, path: bytes, body: bytes = b"", token: str | None = None) -> tuple[int, bytes]:
        conn = await self._acquire()
        ok = False
        try:
            fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
            conn.waiter = fut
            auth = b"Authorization: Bearer %s\r\n" % token.encode() if token else b""
            assert conn.transport is not None
            conn.transport.write(
                b"%s %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s"
                % (method, path, self.host_header, auth, len(body), body)
            )
            result = await fut
            ok = True
            return result
        finally:
            self._release(conn, ok)

    async def close(self) -> None:
        for conn in list(self.all):
            if conn.transport is not None:
                conn.transport.close()
        self.all.clear()
        self.idle.clear()


class AiohttpClient:
    """aiohttp's ClientSession over a TCPConnector keep-alive pool (`--client aiohttp`)."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        import aiohttp

        self.base = f"http://{host}:{port}"
        self.limit = limit
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=120),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def open(self, n: int) -> None:
        # Warm the pool: n concurrent requests leave n keep-alive connections behind.
        await asyncio.gather(*(self.request(b"GET", b"/healthz") for _ in range(min(n, self.limit))), return_exceptions=True)

    async def request(self, method: bytes, path: bytes, body: bytes = b"", token: str | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with self.session.request(method.decode(), self.base + path.decode(), data=body or None, headers=headers) as r:
            return r.status, await r.read()

    async def close(self) -> None:
        await self.session.close()


def make_client(kind: str, port: int, limit: int) -> Client:
    return AiohttpClient(HOST, port, limit) if kind == "aiohttp" else RawClient(HOST, port, limit)


# -- the load processes -------------------------------------------------------------------------


class _Why(msgspec.Struct):
    code: str
    subject: str | None = None
    rule_id: str | None = None


class _Answer(msgspec.Struct):
    decision: str
    reasons: list[_Why] = []


_answer = msgspec.json.Decoder(_Answer)


def reason_key(why: _Why) -> str:
    out = why.code
    if why.rule_id:
        out += ":" + why.rule_id
    if why.subject:
        out += "/" + why.subject
    return out


@dataclass(slots=True)
class PhaseSpec:
    system: str
    mode: str  # "closed" (saturation) or "open" (the spike)
    port: int
    workers: int
    client: str
    connections: int  # per load process
    concurrency: int = 256  # closed: checks in flight over all processes
    duration: float = 6.0  # closed: seconds, warm-up included
    warmup: float = 1.0
    schedule: list[float] = field(default_factory=list)  # open: intended send offsets; index = order
    followups: bool = True
    grace: float = 20.0  # open: how long to wait for answers after the last send
    load_core: int | None = 1
    nice: int = 0
    realtime: int = 0


# The bodies, set in the parent before the load processes are forked.
_BODIES: Bodies | None = None


class Tally:
    """What one load process saw."""

    def __init__(self, n: int, start: float) -> None:
        self.start = start
        self.hist: dict[str, Any] = {"check": new_hist(), "confirm": new_hist(), "cancel": new_hist()}
        self.sec_hist: dict[int, Any] = {}
        self.sec_done: Counter[int] = Counter()
        self.lag = new_hist()
        self.decisions: Counter[str] = Counter()
        self.honest: Counter[str] = Counter()
        self.ring: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.honest_refusals: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.outcomes = bytearray(n)
        self.follow = bytearray(n)
        self.sent = 0
        self.checks_done = 0
        self.window_done = 0
        self.follow_done = 0
        self.exhausted = False

    def answer(self, k: int, t_from: float, t_done: float, status: int, body: bytes, measure: bool, ring: bool,
               counted: bool = True) -> bool:
        """Records a check's answer; True when the order is now held."""
        if status != 200:
            self.errors[f"check:{status}"] += 1
            self.outcomes[k] = ERROR
            return False
        try:
            ans = _answer.decode(body)
        except msgspec.DecodeError:
            self.errors["check:bad-body"] += 1
            self.outcomes[k] = ERROR
            return False
        self.checks_done += 1
        self.sec_done[int(t_done - self.start)] += 1
        if counted:
            self.window_done += 1
        if measure:
            record(self.hist["check"], t_done - t_from)
            sec = int(t_from - self.start)
            h = self.sec_hist.get(sec)
            if h is None:
                h = self.sec_hist[sec] = new_hist()
            record(h, t_done - t_from)
        decision = ans.decision
        self.decisions[decision] += 1
        (self.ring if ring else self.honest)[decision] += 1
        keys = {reason_key(w) for w in ans.reasons}
        for key in keys:
            self.reasons[key] += 1
        if decision == "deny" and not ring:
            for key in keys:
                self.honest_refusals[key] += 1
        self.outcomes[k] = OUTCOME.get(decision, ERROR)
        return decision != "deny"

    def result(self, cpu: float) -> dict[str, Any]:
        return {
            "hist": {k: h.encode() for k, h in self.hist.items()},
            "sec_hist": {s: h.encode() for s, h in self.sec_hist.items()},
            "sec_done": dict(self.sec_done),
            "lag": self.lag.encode(),
            "decisions": self.decisions,
            "honest": self.honest,
            "ring": self.ring,
            "reasons": self.reasons,
            "honest_refusals": self.honest_refusals,
            "errors": self.errors,
            "outcomes": self.outcomes,
            "follow": self.follow,
            "sent": self.sent,
            "checks_done": self.checks_done,
            "window_done": self.window_done,
            "follow_done": self.follow_done,
            "exhausted": self.exhausted,
            "cpu": cpu,
        }


def _worker_entry(spec: PhaseSpec, index: int, conn: Connection) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()
    pin(spec.load_core, spec.nice, own_session=True)
    if spec.realtime:
        realtime(spec.realtime)
    gc.collect()
    gc.freeze()
    gc.disable()  # a full collection over the pending requests would stall sends by tens of ms
    try:
        import uvloop

        uvloop.run(_worker(spec, index, conn))
    except ImportError:
        asyncio.run(_worker(spec, index, conn))
    finally:
        conn.close()


async def _worker(spec: PhaseSpec, index: int, conn: Connection) -> None:
    assert _BODIES is not None
    per = spec.connections
    if spec.mode == "closed":
        per = spec.concurrency // spec.workers + (1 if index < spec.concurrency % spec.workers else 0)
    client = make_client(spec.client, spec.port, max(per, 1))
    try:
        await client.open(min(per, 256))
        conn.send("ready")
        start = float(conn.recv())
        n = len(spec.schedule) if spec.mode == "open" else len(_BODIES.data)
        tally = Tally(n, start)
        cpu0 = _cpu_self()
        if spec.mode == "closed":
            await _closed(spec, index, per, client, tally)
        else:
            await _open(spec, index, client, tally)
        conn.send(tally.result(_cpu_self() - cpu0))
    finally:
        await client.close()


def _cpu_self() -> float:
    t = os.times()
    return t.user + t.system


async def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def _closed(spec: PhaseSpec, index: int, slots: int, client: Client, tally: Tally) -> None:
    """`slots` checks in flight, each sent as soon as the previous answer arrives."""
    assert _BODIES is not None
    data, ring = _BODIES.data, _BODIES.ring
    orders: Iterator[int] = iter(range(index, len(data), spec.workers))
    end = tally.start + spec.duration
    measure_from = tally.start + spec.warmup

    async def slot() -> None:
        for k in orders:
            t0 = time.monotonic()
            if t0 >= end:
                return
            tally.sent += 1
            try:
                status, body = await client.request(b"POST", CHECK_PATH, data[k])
            except Exception as e:
                tally.errors[f"check:{type(e).__name__}"] += 1
                tally.outcomes[k] = ERROR
                continue
            t1 = time.monotonic()
            tally.answer(k, t0, t1, status, body, measure_from <= t0 and t1 <= end, bool(ring[k]), measure_from <= t1 <= end)
        tally.exhausted = True

    await _sleep_until(tally.start)
    await asyncio.gather(*(slot() for _ in range(slots)))


async def _post(client: Client, path: bytes, body: bytes, tally: Tally, kind: str, due: float | None = None) -> tuple[int, bytes] | None:
    """POST (at `due`, if given) and return the answer; or count why none came and return None. A
    request still waiting when the grace period ends is cancelled: it counts as unanswered."""
    try:
        if due is not None:
            await _sleep_until(due)
        return await client.request(b"POST", path, body)
    except asyncio.CancelledError:
        tally.errors[f"{kind}:unanswered"] += 1
    except Exception as e:
        tally.errors[f"{kind}:{type(e).__name__}"] += 1
    return None


async def _open(spec: PhaseSpec, index: int, client: Client, tally: Tally) -> None:
    """Send each order at its intended time, whatever is still in flight."""
    assert _BODIES is not None
    data, ring, ids = _BODIES.data, _BODIES.ring, _BODIES.order_ids
    start = tally.start
    pending: set[asyncio.Task[None]] = set()

    async def one(k: int, intended: float) -> None:
        answer = await _post(client, CHECK_PATH, data[k], tally, "check")
        if answer is None:
            tally.outcomes[k] = ERROR
            return
        status, body = answer
        done = time.monotonic()
        if not tally.answer(k, intended, done, status, body, True, bool(ring[k])) or not spec.followups:
            return
        action = followup(k)
        if action is None:
            return
        kind = action.decode()
        due = done + payment_delay(k)
        answer = await _post(client, b"/v1/orders/%s/%s" % (ids[k].encode(), action), b"", tally, kind, due)
        if answer is None:
            tally.follow[k] = F_ERROR
            return
        status, _ = answer
        if status != 200:
            tally.errors[f"{kind}:{status}"] += 1
            tally.follow[k] = F_ERROR
            return
        record(tally.hist[kind], time.monotonic() - due)
        tally.follow_done += 1
        tally.follow[k] = F_CONFIRMED if kind == "confirm" else F_CANCELLED

    for k in range(index, len(spec.schedule), spec.workers):
        intended = start + spec.schedule[k]
        now = time.monotonic()
        if intended > now:
            await asyncio.sleep(intended - now)
            now = time.monotonic()
        record(tally.lag, now - intended)
        tally.sent += 1
        task = asyncio.create_task(one(k, intended))
        pending.add(task)
        task.add_done_callback(pending.discard)
    deadline = time.monotonic() + spec.grace
    while pending and time.monotonic() < deadline:
        await asyncio.wait(set(pending), timeout=max(0.0, deadline - time.monotonic()))
    for task in list(pending):
        task.cancel()
    if pending:
        await asyncio.wait(set(pending), timeout=5)


# -- one phase: load processes against one server -----------------------------------------------


@dataclass(slots=True)
class Phase:
    spec: PhaseSpec
    hist: dict[str, Any]
    sec_hist: dict[int, Any]
    sec_done: Counter[int]
    lag: Any
    decisions: Counter[str]
    honest: Counter[str]
    ring: Counter[str]
    reasons: Counter[str]
    honest_refusals: Counter[str]
    errors: Counter[str]
    outcomes: bytearray
    follow: bytearray
    sent: int
    checks_done: int
    window_done: int
    follow_done: int
    exhausted: bool
    elapsed: float
    load_cpu: float
    server_cpu: float
    other_cpu: dict[str, float]

    def pct_ms(self, kind: str, pct: float) -> float:
        h = self.hist[kind]
        if not h.get_total_count():
            return float("nan")
        return float(h.get_value_at_percentile(pct)) / 1000

    def max_ms(self, kind: str) -> float:
        return float(self.hist[kind].get_max_value()) / 1000

    def error_count(self) -> int:
        return sum(self.errors.values())


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _cores_busy() -> dict[str, float]:
    """Busy seconds of each core since boot (from /proc/stat)."""
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, *vals = line.split()
                if name.startswith("cpu") and name != "cpu":
                    v = [int(x) for x in vals]
                    out[name] = (sum(v[:8]) - v[3] - v[4]) / tick
    except OSError:
        pass
    return out


def run_phase(spec: PhaseSpec, server_pids: list[int], server_core: int | None) -> Phase:
    ctx = mp.get_context("fork")
    procs: list[mp.process.BaseProcess] = []
    pipes: list[Connection] = []
    done = False
    budget = (spec.duration if spec.mode == "closed" else (spec.schedule[-1] if spec.schedule else 0) + spec.grace) + 60
    try:
        for i in range(spec.workers):
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(target=_worker_entry, args=(spec, i, child_end), daemon=True, name=f"load-{i}")
            p.start()
            child_end.close()
            procs.append(p)
            pipes.append(parent_end)
        for c in pipes:
            if not c.poll(60):
                raise RuntimeError("a load process did not get ready in 60 s")
            c.recv()
        start = time.monotonic() + 0.2
        cores0 = _cores_busy()
        server0 = sum(_proc_cpu(p) for p in server_pids)
        self0 = _cpu_self()
        for c in pipes:
            c.send(start)
        results: list[dict[str, Any]] = []
        for c in pipes:
            if not c.poll(budget):
                raise RuntimeError(f"a load process gave no result in {budget:.0f} s")
            results.append(c.recv())
        elapsed = time.monotonic() - start
        cores1 = _cores_busy()
        server_cpu = sum(_proc_cpu(p) for p in server_pids) - server0
        parent_cpu = _cpu_self() - self0
        done = True
    finally:
        for proc in procs:
            if not done and proc.is_alive():
                proc.terminate()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
        for c in pipes:
            c.close()
    load_cpu = sum(float(r["cpu"]) for r in results) + parent_cpu
    other: dict[str, float] = {}
    for name, busy in cores1.items():
        used = busy - cores0.get(name, busy)
        if spec.load_core is not None and name == f"cpu{spec.load_core}":
            used -= load_cpu
        if server_core is not None and name == f"cpu{server_core}":
            used -= server_cpu
        other[name] = round(max(used, 0.0) / max(elapsed, 1e-9), 3)
    return merge(spec, results, elapsed, load_cpu, server_cpu, other)


def merge(spec: PhaseSpec, results: list[dict[str, Any]], elapsed: float, load_cpu: float, server_cpu: float, other: dict[str, float]) -> Phase:
    hist = {k: new_hist() for k in ("check", "confirm", "cancel")}
    sec_hist: dict[int, Any] = {}
    lag = new_hist()
    counters: dict[str, Counter[str]] = {k: Counter() for k in ("decisions", "honest", "ring", "reasons", "honest_refusals", "errors")}
    sec_done: Counter[int] = Counter()
    n = len(results[0]["outcomes"]) if results else 0
    outcomes, follow = bytearray(n), bytearray(n)
    for r in results:
        for k, enc in r["hist"].items():
            hist[k].decode_and_add(enc)
        for s, enc in r["sec_hist"].items():
            if s not in sec_hist:
                sec_hist[s] = new_hist()
            sec_hist[s].decode_and_add(enc)
        lag.decode_and_add(r["lag"])
        for k, counter in counters.items():
            counter.update(r[k])
        sec_done.update(r["sec_done"])
        for i, v in enumerate(r["outcomes"]):
            if v:
                outcomes[i] = v
        for i, v in enumerate(r["follow"]):
            if v:
                follow[i] = v
    return Phase(
        spec=spec,
        hist=hist,
        sec_hist=sec_hist,
        sec_done=sec_done,
        lag=lag,
        decisions=counters["decisions"],
        honest=counters["honest"],
        ring=counters["ring"],
        reasons=counters["reasons"],
        honest_refusals=counters["honest_refusals"],
        errors=counters["errors"],
        outcomes=outcomes,
        follow=follow,
        sent=sum(int(r["sent"]) for r in results),
        checks_done=sum(int(r["checks_done"]) for r in results),
        window_done=sum(int(r["window_done"]) for r in results),
        follow_done=sum(int(r["follow_done"]) for r in results),
        exhausted=any(bool(r["exhausted"]) for r in results),
        elapsed=elapsed,
        load_cpu=load_cpu,
        server_cpu=server_cpu,
        other_cpu=other,
    )


# -- servers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Servers:
    """The processes of one system under test; `stop` ends them all (SIGTERM, then SIGKILL)."""

    def __init__(self, workdir: Path, core: int | None, nice: int = 0, rt: int = 0) -> None:
        self.workdir = workdir
        self.core = core
        self.nice = nice
        self.rt = rt
        self.procs: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def spawn(self, name: str, cmd: list[str], ready: str, env: dict[str, str] | None = None, timeout: float = 60) -> int:
        log = self.workdir / f"{name}-{len(self.procs)}.log"
        prefix = ["taskset", "-c", str(self.core)] if self.core is not None else []
        if self.nice:
            prefix = ["nice", "-n", str(self.nice)] + prefix
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                prefix + cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                preexec_fn=self._prepare,
            )
        self.procs.append((name, proc, log))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready.lower() in log.read_text(errors="replace").lower():
                return proc.pid
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{name} did not start (exit {proc.poll()}); its log ends:\n{tail(log)}")

    def _prepare(self) -> None:
        """In the child, before exec: die with the bench; its new session's group at the bench's nice."""
        die_with_parent()
        if self.nice:
            autogroup_nice(self.nice)
        if self.rt:
            realtime(self.rt)

    def dead(self) -> list[str]:
        return [f"{name} (exit {p.returncode}):\n{tail(log)}" for name, p, log in self.procs if p.poll() is not None]

    def pids(self) -> list[int]:
        return [p.pid for _, p, _ in self.procs]

    def stop(self) -> None:
        for _, p, _ in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for _, p, _ in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        self.procs.clear()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def ensure_redis(install: bool) -> str | None:
    """The redis-server binary; installed with apt-get when missing and allowed (root, Debian)."""
    found = shutil.which("redis-server")
    if found or not install:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("redis-server not found: installing it with apt-get (Debian package redis-server)", file=sys.stderr)
        for cmd in (["apt-get", "install", "-y", "-q", "redis-server"], ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "redis-server"]):
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
            if (found := shutil.which("redis-server")) is not None:
                return found
    return None


def flashguard_cmd() -> list[str]:
    script = Path(sys.executable).with_name("flashguard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gateway.cli"]


def start_system(system: str, servers: Servers, cfg_path: Path, token: str, redis_bin: str | None, tag: str,
                 extra: list[str] | None = None) -> int:
    """Starts one system under test; returns its port."""
    port = free_port()
    if system == "flashguard":
        data = servers.workdir / f"data-{tag}"
        servers.spawn(
            "flashguard",
            flashguard_cmd() + ["serve", "--host", HOST, "--port", str(port), "--data", str(data), "--config", str(cfg_path)]
            + (extra or []),
            "listening on http://",
            env={"FLASHGUARD_ADMIN_TOKEN": token},
        )
    elif system == "ceiling":
        servers.spawn("ceiling", [sys.executable, "-m", "bench.peers", "ceiling", "--host", HOST, "--port", str(port)], "listening on http://")
    elif system == "redis":
        if redis_bin is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (or pass --install-redis)")
        sock = servers.workdir / f"redis-{tag}.sock"
        servers.spawn(
            "redis-server",
            [redis_bin, "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700", "--save", "",
             "--appendonly", "no", "--daemonize", "no", "--dir", str(servers.workdir)],
            "ready to accept connections",
        )
        servers.spawn(
            "redis-peer",
            [sys.executable, "-m", "bench.peers", "redis", "--host", HOST, "--port", str(port),
             "--config", str(cfg_path), "--redis", f"unix://{sock}"],
            "listening on http://",
        )
    else:
        raise ValueError(system)
    return port


# -- the audit ----------------------------------------------------------------------------------


class _Addr(msgspec.Struct):
    province: str | None = None
    city: str | None = None
    district: str | None = None
    town: str | None = None
    detail: str | None = None


class _Recv(msgspec.Struct):
    name: str | None = None
    phone: str | None = None
    address: _Addr | None = None


class _Disc(msgspec.Struct):
    id: str
    amount: int
    activity_id: str | None = None


class _Item(msgspec.Struct):
    sku_id: str
    quantity: int
    discounts: list[_Disc] = []


class _Order(msgspec.Struct):
    order_id: str
    user_id: str
    items: list[_Item]
    device_id: str | None = None
    ip: str | None = None
    receiver: _Recv | None = None


def _fold(text: str) -> str:
    return " ".join(text.split()).casefold()


def subject_keys(o: _Order) -> dict[str, str]:
    """The order's subjects as the SPEC defines them (folded names, digit phones, region prefixes)."""
    keys = {"user": o.user_id}
    if o.device_id:
        keys["device"] = o.device_id
    if o.ip:
        keys["ip"] = o.ip
    r = o.receiver
    if r is not None:
        if r.name:
            keys["receiver_name"] = _fold(r.name)
        if r.phone:
            keys["receiver_phone"] = "".join(c for c in r.phone if c.isdigit())
        a = r.address
        if a is not None:
            parts = [_fold(p or "") for p in (a.province, a.city, a.district, a.town)]
            for depth, level in enumerate(("address:province", "address:city", "address:district", "address:town"), 1):
                if parts[depth - 1]:
                    keys[level] = "/".join(parts[:depth])
            keys["receiver_address"] = "/".join(parts).rstrip("/") + "|" + _fold(a.detail or "")
    return keys


def ring_of(user_id: str) -> int | None:
    if not user_id.startswith("ring"):
        return None
    return int(user_id[4:].split("-", 1)[0])


# Subjects an honest buyer shares with other buyers: only region levels (their device, phone, name,
# address and IP are their own). A refusal of an honest buyer on one of these is a rule meant for
# rings catching an honest buyer.
SHARED_SUBJECTS = ("address:province", "address:city", "address:district", "address:town")


# An order's state at the end of the spike, as the audit sees it.
GONE, HELD, CONFIRMED = 0, 1, 2
_STATE = {"held": HELD, "confirmed": CONFIRMED}


def final_states(phase: Phase) -> tuple[bytearray, list[int]]:
    """Each order's end state from what the load saw, and the orders it cannot know (a check or a
    follow-up without an answer) for the audit to read back from the server."""
    final = bytearray(len(phase.outcomes))
    unknown: list[int] = []
    for k, outcome in enumerate(phase.outcomes):
        follow = phase.follow[k]
        if outcome == ERROR or follow == F_ERROR:
            unknown.append(k)
        elif outcome in (ALLOW, DEGRADE) and follow != F_CANCELLED:
            final[k] = CONFIRMED if follow == F_CONFIRMED else HELD
    return final, unknown


def audit_expected(cfg: dict[str, Any], final: bytearray) -> dict[str, Any]:
    """Recomputes every limit from the orders the server holds at the end (held or confirmed)."""
    assert _BODIES is not None
    skus = {s["sku_id"]: s for s in cfg["skus"]}
    spus = {s["spu_id"]: s for s in cfg["spus"]}
    activities = {a["activity_id"]: a for a in cfg["activities"]}
    mult = float(cfg["settings"].get("risk_multiplier", "1"))
    rules = [r for r in cfg["rules"] if r.get("mode", "enforce") == "enforce"]
    use: Counter[tuple[str, ...]] = Counter()
    limit_of: dict[tuple[str, ...], int] = {}
    ring_use: dict[int, Counter[tuple[str, ...]]] = defaultdict(Counter)
    ring_units: Counter[int] = Counter()
    spend: Counter[str] = Counter()
    held_spend: Counter[str] = Counter()
    user_counters: dict[str, Counter[str]] = defaultdict(Counter)
    user_windows: dict[str, Counter[str]] = defaultdict(Counter)
    held_orders = 0
    decoder = msgspec.json.Decoder(_Order)

    def add(key: tuple[str, ...], q: int, limit: int, ring: int | None) -> None:
        use[key] += q
        limit_of[key] = limit
        if ring is not None:
            ring_use[ring][key] += q

    for k, state in enumerate(final):
        if state == GONE:
            continue
        held_orders += 1
        o = decoder.decode(_BODIES.data[k])
        subj = subject_keys(o)
        ring = ring_of(o.user_id)
        sku_q: Counter[str] = Counter()
        spu_q: Counter[str] = Counter()
        act_q: Counter[str] = Counter()
        act_sku_q: Counter[tuple[str, str]] = Counter()
        for item in o.items:
            sku_q[item.sku_id] += item.quantity
            sku = skus.get(item.sku_id)
            if sku and sku.get("spu_id"):
                spu_q[sku["spu_id"]] += item.quantity
            acts = {d.activity_id for d in item.discounts if d.activity_id}
            for aid in acts:
                act_q[aid] += item.quantity
                act_sku_q[(aid, item.sku_id)] += item.quantity
            for d in item.discounts:
                if d.activity_id:
                    (spend if state == CONFIRMED else held_spend)[d.activity_id] += d.amount
        if ring is not None:
            ring_units[ring] += sum(sku_q.values())
        uc = user_counters[o.user_id]
        for sku_id, q in sku_q.items():
            uc["sku/" + sku_id] += q
            for subject, limit in skus.get(sku_id, {}).get("limits", {}).items():
                if subject in subj:
                    add(("SKU_LIMIT", subject, subj[subject], sku_id), q, int(limit), ring)
        for spu_id, q in spu_q.items():
            uc["spu/" + spu_id] += q
            for subject, limit in spus.get(spu_id, {}).get("limits", {}).items():
                if subject in subj:
                    add(("SPU_LIMIT", subject, subj[subject], spu_id), q, int(limit), ring)
        for aid, q in act_q.items():
            uc["activity/" + aid] += q
            a = activities.get(aid)
            if a and a.get("user_limit") is not None:
                add(("ACTIVITY_USER_LIMIT", "user", o.user_id, aid), q, int(a["user_limit"]), ring)
        for (aid, sku_id), q in act_sku_q.items():
            uc[f"activity_sku/{aid}/{sku_id}"] += q
            a = activities.get(aid)
            lim = (a or {}).get("sku_limits", {}).get(sku_id)
            if lim is not None:
                add(("ACTIVITY_SKU_LIMIT", "user", o.user_id, f"{aid}/{sku_id}"), q, int(lim), ring)
        for rule in rules:
            key = subj.get(rule["subject"])
            if key is None:
                continue
            scope = rule.get("scope") or {}
            q = 0
            for item in o.items:
                sku = skus.get(item.sku_id, {})
                if all((item.sku_id if f == "sku_id" else sku.get(f)) == v for f, v in scope.items()):
                    q += item.quantity
            if q:
                add(("RISK_RULE", rule["subject"], key, rule["rule_id"]), q, math.floor(int(rule["max_quantity"]) * mult), ring)
                if rule["subject"] == "user":
                    user_windows[o.user_id][rule["rule_id"]] += q
    violations = [
        {"limit": key[0], "subject": key[1], "key": key[2], "of": key[3], "used": q, "max": limit_of[key]}
        for key, q in use.items()
        if q > limit_of[key]
    ]
    rings: dict[int, dict[str, Any]] = {}
    for r, counter in sorted(ring_use.items()):
        worst = max(counter.items(), key=lambda kv: kv[1] / limit_of[kv[0]])
        town = [(key, q) for key, q in counter.items() if key[1] == "address:town"]
        rings[r] = {
            "units_held": ring_units[r],
            "over_limit": sum(1 for key, q in counter.items() if q > limit_of[key]),
            "tightest": f"{worst[0][0]} {worst[0][3]} on {worst[0][1]}: {worst[1]}/{limit_of[worst[0]]}",
            "town_max": max((q for _, q in town), default=0),
        }
    budgets: dict[str, dict[str, int | None]] = {}
    for aid, a in activities.items():
        budgets[aid] = {"budget": a.get("budget"), "spent": spend[aid], "held": held_spend[aid]}
    return {
        "held_orders": held_orders,
        "limits_checked": len(use),
        "violations": violations,
        "rings": rings,
        "budgets": budgets,
        "user_counters": user_counters,
        "user_windows": user_windows,
    }


async def audit_server(port: int, token: str, cfg: dict[str, Any], phase: Phase, sample_orders: int) -> dict[str, Any]:
    """Reads the orders the load could not know back from the server, recomputes every limit from
    the orders held at the end, and checks the server's own state (user counters, the activity
    budgets, a sample of orders) against the limits and against those orders."""
    assert _BODIES is not None
    client = RawClient(HOST, port, 32)
    problems: list[str] = []
    final, unknown = final_states(phase)
    resolved: Counter[str] = Counter()
    unresolved = 0
    skus = {s["sku_id"]: s for s in cfg["skus"]}
    spus = {s["spu_id"]: s for s in cfg["spus"]}
    activities = {a["activity_id"]: a for a in cfg["activities"]}
    user_rules = [r for r in cfg["rules"] if r["subject"] == "user" and r.get("mode", "enforce") == "enforce"]
    try:
        await client.open(32)
        # Orders without an answer (or whose confirm/cancel got none): ask the server what they are.
        todo = deque(unknown)

        async def resolve() -> None:
            nonlocal unresolved
            while todo:
                k = todo.popleft()
                status, body = await client.request(b"GET", b"/v1/orders/" + _BODIES.order_ids[k].encode())
                if status == 404:
                    resolved["never checked"] += 1
                    final[k] = GONE
                elif status == 200:
                    state = json.loads(body)["state"]
                    resolved[state] += 1
                    final[k] = _STATE.get(state, GONE)
                else:
                    unresolved += 1

        await asyncio.gather(*(resolve() for _ in range(32)))
        expected = audit_expected(cfg, final)
        exact = unresolved == 0
        # The activities' budgets.
        act_out: dict[str, Any] = {}
        for aid, exp in expected["budgets"].items():
            status, body = await client.request(b"GET", f"/v1/admin/activities/{aid}".encode(), token=token)
            if status != 200:
                problems.append(f"GET activity {aid}: HTTP {status}")
                continue
            got = json.loads(body)
            act_out[aid] = {k: got.get(k) for k in ("budget", "spent", "held", "fused")}
            if got["budget"] is not None and got["spent"] + got["held"] > got["budget"]:
                problems.append(f"activity {aid}: spent {got['spent']} + held {got['held']} > budget {got['budget']}")
            if exact and (got["spent"], got["held"]) != (exp["spent"], exp["held"]):
                problems.append(f"activity {aid}: server spent/held {got['spent']}/{got['held']}, the load saw {exp['spent']}/{exp['held']}")
        # Every user who holds something, and every ring account that ordered.
        users = set(expected["user_counters"])
        for k, outcome in enumerate(phase.outcomes):
            if outcome in (ALLOW, DEGRADE, DENY) and _BODIES.ring[k]:
                users.add(json.loads(_BODIES.data[k])["user_id"])
        queue = deque(sorted(users))
        checked = 0
        mismatched = 0

        async def audit_user() -> None:
            nonlocal checked, mismatched
            while queue:
                uid = queue.popleft()
                status, body = await client.request(b"GET", b"/v1/admin/users/" + uid.encode(), token=token)
                if status != 200:
                    problems.append(f"GET user {uid}: HTTP {status}")
                    continue
                got = json.loads(body)
                checked += 1
                c = got["counters"]
                server = Counter({f"sku/{k}": v for k, v in c["sku"].items() if v})
                server.update({f"spu/{k}": v for k, v in c["spu"].items() if v})
                server.update({f"activity/{k}": v for k, v in c["activity"].items() if v})
                server.update({f"activity_sku/{k}": v for k, v in c["activity_sku"].items() if v})
                for sku_id, v in c["sku"].items():
                    lim = skus.get(sku_id, {}).get("limits", {}).get("user")
                    if lim is not None and v > lim:
                        problems.append(f"user {uid}: SKU {sku_id} {v} > limit {lim}")
                for spu_id, v in c["spu"].items():
                    lim = spus.get(spu_id, {}).get("limits", {}).get("user")
                    if lim is not None and v > lim:
                        problems.append(f"user {uid}: SPU {spu_id} {v} > limit {lim}")
                for aid, v in c["activity"].items():
                    lim = activities.get(aid, {}).get("user_limit")
                    if lim is not None and v > lim:
                        problems.append(f"user {uid}: activity {aid} {v} > user_limit {lim}")
                for pair, v in c["activity_sku"].items():
                    aid, _, sku_id = pair.partition("/")
                    lim = activities.get(aid, {}).get("sku_limits", {}).get(sku_id)
                    if lim is not None and v > lim:
                        problems.append(f"user {uid}: activity {aid} SKU {sku_id} {v} > limit {lim}")
                for w in got["windows"]:
                    for rule in user_rules:
                        scope = rule.get("scope") or {}
                        if w["scope"] == scope and w["window"] == _seconds(rule["window"]) and w["quantity"] > rule["max_quantity"]:
                            problems.append(f"user {uid}: rule {rule['rule_id']} window {w['quantity']} > {rule['max_quantity']}")
                if exact and server != expected["user_counters"].get(uid, Counter()):
                    mismatched += 1
                    if mismatched <= 5:
                        problems.append(f"user {uid}: server counters {dict(server)} != held orders {dict(expected['user_counters'].get(uid, {}))}")

        await asyncio.gather(*(audit_user() for _ in range(32)))
        # A sample of orders: their state on the server is what checkout made of them.
        rnd = random.Random(11)
        picked = [k for k in range(len(phase.outcomes)) if phase.outcomes[k] in (ALLOW, DEGRADE, DENY)]
        sample = rnd.sample(picked, min(sample_orders, len(picked)))
        want = {F_CONFIRMED: "confirmed", F_CANCELLED: "cancelled"}
        states: Counter[str] = Counter()
        wrong = 0
        for k in sample:
            status, body = await client.request(b"GET", b"/v1/orders/" + _BODIES.order_ids[k].encode())
            if status != 200:
                problems.append(f"GET order {_BODIES.order_ids[k]}: HTTP {status}")
                continue
            state = json.loads(body)["state"]
            states[state] += 1
            if phase.follow[k] == F_ERROR:
                continue
            expect = "denied" if phase.outcomes[k] == DENY else want.get(phase.follow[k], "held")
            if state != expect:
                wrong += 1
                if wrong <= 5:
                    problems.append(f"order {_BODIES.order_ids[k]}: state {state}, expected {expect}")
    finally:
        await client.close()
    return {
        "expected": expected,
        "resolved": dict(resolved),
        "unresolved": unresolved,
        "activities": act_out,
        "users_checked": checked,
        "users_mismatched": mismatched,
        "orders_sampled": len(sample),
        "order_states": dict(states),
        "orders_wrong_state": wrong,
        "problems": problems,
    }


def _seconds(window: str | int) -> int:
    if isinstance(window, int):
        return window
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return int(window[:-1]) * unit[window[-1]] if window[-1] in unit else int(window)


def audit(port: int, token: str, cfg: dict[str, Any], phase: Phase, sample_orders: int) -> dict[str, Any]:
    started = time.monotonic()
    server = asyncio.run(audit_server(port, token, cfg, phase, sample_orders))
    expected = server.pop("expected")
    # Honest buyers: every refusal, and those by rules meant for rings (shared subjects).
    ring_rule_refusals = {
        k: v for k, v in phase.honest_refusals.items() if any(k.endswith("/" + s) for s in SHARED_SUBJECTS)
    }
    rings = expected["rings"]
    rings_over = [r for r, v in rings.items() if v["over_limit"]]
    clean = not expected["violations"] and not server["problems"] and not ring_rule_refusals and not rings_over
    return {
        "clean": clean,
        "held_orders": expected["held_orders"],
        "unknown_orders": sum(server["resolved"].values()) + server["unresolved"],
        "resolved": server["resolved"],
        "limits_checked": expected["limits_checked"],
        "violations": expected["violations"][:20],
        "violation_count": len(expected["violations"]),
        "budgets": expected["budgets"],
        "server": server,
        "rings": {
            "count": len(rings),
            "over_limit": rings_over,
            "max_units_held": max((v["units_held"] for v in rings.values()), default=0),
            "max_town_units": max((v["town_max"] for v in rings.values()), default=0),
            "detail": rings,
        },
        "honest_refusals": dict(phase.honest_refusals.most_common()),
        "honest_ring_rule_refusals": ring_rule_refusals,
        "seconds": round(time.monotonic() - started, 1),
    }


# -- the run ------------------------------------------------------------------------------------


def spike_summary(p: Phase, rate: float) -> dict[str, Any]:
    return {
        "peak_rate": round(rate),
        "checks_sent": p.sent,
        "checks_answered": p.checks_done,
        "followups_answered": p.follow_done,
        "peak_throughput": max(p.sec_done.values(), default=0),
        "p50_ms": _num(p.pct_ms("check", 50)),
        "p99_ms": _num(p.pct_ms("check", 99)),
        "p999_ms": _num(p.pct_ms("check", 99.9)),
        "max_ms": _num(p.max_ms("check")),
        "confirm_p99_ms": _num(p.pct_ms("confirm", 99)),
        "cancel_p99_ms": _num(p.pct_ms("cancel", 99)),
        "errors": dict(p.errors),
        "decisions": dict(p.decisions),
        "reasons": dict(p.reasons.most_common()),
        "send_lag_p99_ms": round(float(p.lag.get_value_at_percentile(99)) / 1000, 3),
        "send_lag_max_ms": round(float(p.lag.get_max_value()) / 1000, 3),
        "server_cpu": round(p.server_cpu / p.elapsed, 2),
        "load_cpu": round(p.load_cpu / p.elapsed, 2),
        "other_cpu": p.other_cpu,
    }


@dataclass(slots=True)
class SystemRun:
    system: str
    saturate: Phase | None = None
    spike: Phase | None = None
    spike_rate: float = 0.0
    audit: dict[str, Any] | None = None
    crashed: list[str] = field(default_factory=list)
    shape: Spike | None = None  # the spike it ran (the ceiling sets it from its saturated rate)
    own_spike: Phase | None = None  # flashguard: a spike at a share of its own saturated rate
    own_rate: float = 0.0

    def sat_rate(self) -> float:
        p = self.saturate
        if p is None:
            return float("nan")
        window = p.spec.duration - p.spec.warmup
        return p.window_done / window if window > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"bench": "flash_sale", "system": self.system}
        if self.saturate is not None:
            p = self.saturate
            out["saturated"] = {
                "checks_per_s": round(self.sat_rate()),
                "checks_per_server_cpu_s": round(self.sat_rate() / max(p.server_cpu / p.elapsed, 1e-9)),
                "concurrency": p.spec.concurrency,
                "seconds": p.spec.duration - p.spec.warmup,
                "p50_ms": _num(p.pct_ms("check", 50)),
                "p99_ms": _num(p.pct_ms("check", 99)),
                "errors": dict(p.errors),
                "server_cpu": round(p.server_cpu / p.elapsed, 2),
                "load_cpu": round(p.load_cpu / p.elapsed, 2),
                "other_cpu": p.other_cpu,
                "ran_out_of_bodies": p.exhausted,
            }
        if self.spike is not None:
            out["spike"] = spike_summary(self.spike, self.spike_rate)
        if self.own_spike is not None:
            out["spike_own"] = spike_summary(self.own_spike, self.own_rate)
        if self.audit is not None:
            a = self.audit
            if "error" in a:
                out["audit"] = {"clean": False, "error": a["error"]}
            else:
                out["audit"] = {
                    "clean": a["clean"],
                    "violations": a["violation_count"],
                    "server_problems": len(a["server"]["problems"]),
                    "users_checked": a["server"]["users_checked"],
                    "rings_over_limit": len(a["rings"]["over_limit"]),
                    "honest_ring_rule_refusals": sum(a["honest_ring_rule_refusals"].values()),
                }
        if self.crashed:
            out["crashed"] = self.crashed
        return out


def run_system(system: str, args: argparse.Namespace, bodies: Bodies, workdir: Path, token: str,
               redis_bin: str | None, spike: Spike | None, log: Callable[[str], None]) -> SystemRun:
    run = SystemRun(system)

    def spec(mode: str, port: int, **kw: Any) -> PhaseSpec:
        return PhaseSpec(system=system, mode=mode, port=port, workers=args.workers, client=args.client,
                         connections=args.connections, load_core=args.load_core, nice=args.nice,
                         realtime=args.realtime, **kw)
    if not args.rate:
        cfg_path = workdir / f"config-{system}-sat.json"
        cfg_path.write_text(json.dumps(bench_config(args.users, None)))
        servers = Servers(workdir, args.server_core, args.nice, args.realtime)
        try:
            port = start_system(system, servers, cfg_path, token, redis_bin, f"{system}-sat", args.flashguard_args.split())
            closed = spec("closed", port, concurrency=args.concurrency, duration=args.sat_seconds + args.warmup,
                          warmup=args.warmup, followups=False)
            log(f"{system}: saturation, {args.concurrency} in flight for {args.warmup:g}+{args.sat_seconds:g} s")
            run.saturate = run_phase(closed, servers.pids(), args.server_core)
            run.crashed += servers.dead()
        finally:
            servers.stop()
        log(f"{system}: saturated at {run.sat_rate():,.0f} checks/s (p99 {run.saturate.pct_ms('check', 99):.2f} ms)")
    if spike is None and system == "ceiling" and not args.saturate and not args.rate:
        rate = run.sat_rate()
        if math.isnan(rate) or rate < 1:
            raise RuntimeError("the ceiling answered nothing: no rate to set the spike from")
        spike = Spike(round(rate * args.open_fraction), args.ramp, args.hold, args.decay)
    run.shape = spike

    def spike_phase(shape: Spike, tag: str, audit_it: bool) -> tuple[Phase, dict[str, Any] | None, list[str]]:
        schedule = shape.schedule(args.seed)
        bodies.ensure(len(schedule))
        budget = int(sum(bodies.budget_spend[: len(schedule)]) * args.budget_share)
        cfg = bench_config(args.users, budget)
        cfg_path = workdir / f"config-{system}-{tag}.json"
        cfg_path.write_text(json.dumps(cfg))
        servers = Servers(workdir, args.server_core, args.nice, args.realtime)
        result: dict[str, Any] | None = None
        try:
            port = start_system(system, servers, cfg_path, token, redis_bin, f"{system}-{tag}", args.flashguard_args.split())
            log(f"{system}: spike to {shape.peak:,.0f} checks/s ({len(schedule):,} checks over {shape.duration:g} s)")
            p = run_phase(spec("open", port, schedule=schedule, followups=True, grace=args.grace), servers.pids(), args.server_core)
            log(f"{system}: p50 {p.pct_ms('check', 50):.2f} ms, p99 {p.pct_ms('check', 99):.2f} ms, "
                f"p99.9 {p.pct_ms('check', 99.9):.2f} ms, max {p.max_ms('check'):.1f} ms, errors {p.error_count()}")
            if audit_it:
                if servers.dead():
                    result = {"clean": False, "error": "the server died", "violation_count": 0}
                else:
                    log(f"{system}: auditing")
                    result = audit(port, token, cfg, p, args.audit_orders)
                    log(f"{system}: audit {'clean' if result['clean'] else 'DIRTY'} "
                        f"({result['server']['users_checked']:,} users, {result['limits_checked']:,} limits, {result['seconds']} s)")
                    for problem in result["server"]["problems"][:10]:
                        log(f"  audit: {problem}")
                    for v in result["violations"][:10]:
                        log(f"  audit: limit passed: {v}")
            dead = servers.dead()
        finally:
            servers.stop()
        return p, result, dead

    if spike is not None and not args.saturate:
        run.spike_rate = spike.peak
        run.spike, run.audit, dead = spike_phase(spike, "spike", system == "flashguard" and not args.no_audit)
        run.crashed += dead
    if system == "flashguard" and args.own_fraction > 0 and run.saturate is not None and not args.saturate:
        own = Spike(round(run.sat_rate() * args.own_fraction), args.ramp, args.hold, args.decay)
        run.own_rate = own.peak
        run.own_spike, _, dead = spike_phase(own, "own", False)
        run.crashed += dead
    return run


# -- the report ---------------------------------------------------------------------------------


def plot(runs: list[SystemRun], spike: Spike | None, path: Path) -> bool:
    try:
        importlib.import_module("matplotlib").use("Agg")
        plt: Any = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        print("matplotlib is not installed (pip install -r bench/requirements.txt): no plot", file=sys.stderr)
        return False
    colors = {"ceiling": "tab:gray", "flashguard": "tab:blue", "redis": "tab:red"}
    fig, axes = plt.subplots(3, 1, figsize=(10, 11), constrained_layout=True)
    ax_tp, ax_lat, ax_sat = axes
    for run in runs:
        c = colors.get(run.system, None)
        for p, name, style in ((run.spike, run.system, "-"), (run.own_spike, f"{run.system} at {run.own_rate:,.0f}/s", "--")):
            if p is None or not p.sec_done:
                continue
            secs = range(0, max(p.sec_done) + 1)
            ax_tp.plot(list(secs), [p.sec_done.get(s, 0) for s in secs], marker="o", ms=3, ls=style, color=c, label=f"{name} answered")
            ss = sorted(p.sec_hist)
            ax_lat.plot(ss, [p.sec_hist[s].get_value_at_percentile(99) / 1000 for s in ss], marker="o", ms=3, ls=style, color=c,
                        label=f"{name} p99")
            ax_lat.plot(ss, [p.sec_hist[s].get_value_at_percentile(99.9) / 1000 for s in ss], ls=":", color=c, lw=1,
                        label=f"{name} p99.9")
        s = run.saturate
        if s is not None and s.sec_done:
            secs = range(0, min(max(s.sec_done) + 1, int(s.spec.duration)))  # not the stragglers after the end
            ax_sat.plot(list(secs), [s.sec_done.get(t, 0) for t in secs], marker="o", ms=3, color=c, label=run.system)
    if spike is not None:
        ts = [i / 10 for i in range(int(spike.duration * 10) + 1)]
        ax_tp.plot(ts, [spike.rate(t) for t in ts], ls="--", color="black", label="offered checks/s")
        for run in runs:
            if run.own_spike is not None:
                own = Spike(run.own_rate, spike.ramp, spike.hold, spike.decay)
                ax_tp.plot(ts, [own.rate(t) for t in ts], ls=":", color="black", label=f"offered ({run.system} own)")
        ax_lat.axhline(T_P99_MS, color="tab:green", ls="--", lw=1, label=f"p99 target {T_P99_MS:g} ms")
    ax_tp.set(title="Spike, open loop: checks answered per second", xlabel="seconds", ylabel="checks/s")
    ax_lat.set(title="Spike: check latency from the intended send time, per second sent", xlabel="seconds", ylabel="ms")
    ax_lat.set_yscale("log")
    ax_sat.set(title="Saturation, closed loop: checks answered per second", xlabel="seconds", ylabel="checks/s")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, ncol=2)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _num(v: float, digits: int = 3) -> float | None:
    """A JSON-safe figure: None when there is none."""
    return None if math.isnan(v) else round(v, digits)


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.2f}"


def _git(*cmd: str) -> str:
    try:
        return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def targets(runs: dict[str, SystemRun]) -> list[tuple[str, str, bool | None]]:
    out: list[tuple[str, str, bool | None]] = []
    fg = runs.get("flashguard")
    if fg is None:
        return out
    ceiling, redis = runs.get("ceiling"), runs.get("redis")
    if fg.saturate is not None and ceiling is not None and ceiling.saturate is not None:
        r = fg.sat_rate() / ceiling.sat_rate()
        out.append((f"saturated throughput >= {T_CEILING_RATIO:.0%} of the ceiling's", f"{r:.1%}", r >= T_CEILING_RATIO))
    if fg.saturate is not None and redis is not None and redis.saturate is not None:
        r = fg.sat_rate() / redis.sat_rate()
        out.append((f"saturated throughput >= {T_REDIS_RATIO:g}x the Redis+Lua peer's", f"{r:.2f}x", r >= T_REDIS_RATIO))
    if fg.spike is not None:
        p = fg.spike
        p99, p999 = p.pct_ms("check", 99), p.pct_ms("check", 99.9)
        out.append((f"spike p99 < {T_P99_MS:g} ms", f"{p99:.2f} ms", p99 < T_P99_MS))
        out.append((f"spike p99.9 < {T_P999_MS:g} ms", f"{p999:.2f} ms", p999 < T_P999_MS))
        out.append(("zero errors", str(p.error_count()), p.error_count() == 0 and not fg.crashed))
    if fg.audit is not None:
        out.append(("audit clean", "clean" if fg.audit["clean"] else "dirty", bool(fg.audit["clean"])))
    if fg.own_spike is not None:
        p = fg.own_spike
        share = fg.own_rate / fg.sat_rate() if fg.saturate is not None else float("nan")
        out.append((f"(not a target) spike at {fg.own_rate:,.0f}/s, {share:.0%} of flashguard's own saturated rate: "
                    "p99 / p99.9 / errors",
                    f"{p.pct_ms('check', 99):.2f} ms / {p.pct_ms('check', 99.9):.2f} ms / {p.error_count()}", None))
    return out


def write_report(path: Path, png: Path | None, runs: list[SystemRun], spike: Spike | None, args: argparse.Namespace,
                 lines: list[str], started: float) -> None:
    by = {r.system: r for r in runs}
    w: list[str] = []
    w.append("# flashguard flash-sale HTTP benchmark: last run\n")
    w.append(f"Written by `python -m bench.flash_sale` on {time.strftime('%Y-%m-%d %H:%M:%S %Z')} "
             f"(commit `{_git('rev-parse', '--short', 'HEAD') or '?'}`{', uncommitted changes' if _git('status', '--porcelain') else ''}), "
             f"in {time.monotonic() - started:.0f} s. See `bench/README.md` for what each figure means.\n")
    w.append(f"- machine: {os.cpu_count()} cores ({_cpu_model()}), Python {platform.python_version()}, "
             f"servers pinned to core {args.server_core}, load to core {args.load_core}"
             + (f"; every bench process at nice {args.nice} (its own autogroup)" if args.nice else "")
             + (f", servers and load under SCHED_RR priority {args.realtime}" if args.realtime else ""))
    w.append(f"- load: {args.workers} processes, {args.client} client, {args.connections} keep-alive connections each (spike), "
             f"{args.concurrency} in flight (saturation, check-only, {args.sat_seconds:g} s after {args.warmup:g} s warm-up)")
    if spike is not None:
        w.append(f"- spike: Poisson arrivals, 0 -> {spike.peak:,.0f} checks/s in {spike.ramp:g} s, hold {spike.hold:g} s, "
                 f"decay to 0 in {spike.decay:g} s; 70% of holds confirmed, 10% cancelled, 0.3-2.3 s after the hold")
    w.append(f"- scenario: {args.users:,} users, 200 SKUs (Zipf), 50 scalper rings of 40 accounts (1 order in 5), "
             f"10 risk rules, activity A1's budget = {args.budget_share:.0%} of what the spike's orders ask of it\n")
    w.append("## Targets (issue 5)\n")
    w.append("| target | measured | |")
    w.append("|---|---|---|")
    for name, value, ok in targets(by):
        w.append(f"| {name} | {value} | {'' if ok is None else 'PASS' if ok else 'FAIL'} |")
    w.append("")
    w.append("## Figures\n")
    w.append("| system | saturated checks/s | per server core-s | sat. p50 / p99 ms | spike peak | spike p50 ms | p99 ms | p99.9 ms "
             "| max ms | errors | allow / deny |")
    w.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        s = r.saturate
        sat = f"{r.sat_rate():,.0f}" if s else "-"
        per_core = f"{r.sat_rate() / max(s.server_cpu / s.elapsed, 1e-9):,.0f}" if s else "-"
        satl = f"{_ms(s.pct_ms('check', 50))} / {_ms(s.pct_ms('check', 99))}" if s else "-"
        rows = [(r.system, r.spike, r.spike_rate, s)]
        if r.own_spike is not None:
            rows.append((f"{r.system} (spike at {args.own_fraction:.0%} of its own rate)", r.own_spike, r.own_rate, None))
        for name, p, rate, sp in rows:
            head = f"| {name} | {sat} | {per_core} | {satl}" if sp is s else f"| {name} | | |"
            errs = (sp.error_count() if sp is not None else 0) + (p.error_count() if p is not None else 0)
            if p is not None:
                mix = f"{p.decisions.get('allow', 0):,} / {p.decisions.get('deny', 0):,}"
                w.append(f"{head} | {rate:,.0f}/s | {_ms(p.pct_ms('check', 50))} | {_ms(p.pct_ms('check', 99))} | "
                         f"{_ms(p.pct_ms('check', 99.9))} | {_ms(p.max_ms('check'))} | {errs} | {mix} |")
            else:
                w.append(f"{head} | - | - | - | - | - | {errs} | - |")
    w.append("")
    if png is not None:
        w.append(f"![throughput and p99 latency over time]({png.name})\n")
    w.append("## Conditions\n")
    w.append("CPU used per second of each phase (1.0 = one core). `other` is what the rest of the machine used on each "
             "core meanwhile: the cores are shared with whatever else runs here, and a busy neighbour on the server's core "
             "lowers that system's figures.\n")
    busy = [f"{r.system} saturation" for r in runs if r.saturate is not None and args.server_core is not None
            and r.saturate.other_cpu.get(f"cpu{args.server_core}", 0.0) > 0.15]
    if busy:
        w.append(f"**Warning**: other work took more than 0.15 of the server's core during {', '.join(busy)}: those "
                 "saturated figures are low. On a shared machine, run with `--nice -15 --realtime 10` (root).\n")
    w.append("| system | phase | server | load | other (per core) | send lag p99 ms | out of bodies |")
    w.append("|---|---|---:|---:|---|---:|---|")
    for r in runs:
        for name, p in (("saturation", r.saturate), ("spike", r.spike), ("own-rate spike", r.own_spike)):
            if p is None:
                continue
            lag = _ms(float(p.lag.get_value_at_percentile(99)) / 1000) if p.lag.get_total_count() else "-"
            other = ", ".join(f"{k} {v:.2f}" for k, v in sorted(p.other_cpu.items()))
            w.append(f"| {r.system} | {name} | {p.server_cpu / p.elapsed:.2f} | {p.load_cpu / p.elapsed:.2f} | {other} | {lag} | {'yes' if p.exhausted else 'no'} |")
    w.append("")
    w.append("## Decisions and reasons (spike)\n")
    for r in runs:
        p = r.spike
        if p is None:
            continue
        w.append(f"**{r.system}** at {r.spike_rate:,.0f}/s: {p.checks_done:,} checks answered of {p.sent:,} sent, {p.follow_done:,} confirms/cancels; "
                 f"honest {dict(p.honest)}, rings {dict(p.ring)}")
        if p.reasons:
            w.append("")
            w.append("| reason (code:rule/subject) | orders |")
            w.append("|---|---:|")
            for key, n in p.reasons.most_common():
                w.append(f"| {key} | {n:,} |")
        if p.errors:
            w.append(f"\nerrors: {dict(p.errors)}")
        w.append("")
    fg = by.get("flashguard")
    if fg is not None and fg.audit is not None:
        a = fg.audit
        w.append("## Audit (flashguard, after the spike)\n")
        w.append(f"**{'CLEAN' if a.get('clean') else 'DIRTY'}**\n")
        if "error" in a:
            w.append(f"- {a['error']}")
        else:
            srv = a["server"]
            w.append(f"- orders held or confirmed at the end: {a['held_orders']:,}; orders whose check or follow-up got no answer, "
                     f"read back from the server: {a['unknown_orders']:,} {a['resolved'] or ''} (unreadable: {srv['unresolved']})")
            w.append(f"- limits recomputed from those orders (every SKU/SPU subject limit, activity limit, enforced risk rule "
                     f"per subject): {a['limits_checked']:,}, passed: {a['violation_count']}")
            for v in a["violations"][:10]:
                w.append(f"  - {v}")
            for aid, act in srv["activities"].items():
                w.append(f"- activity {aid}: budget {act['budget']:,}, spent {act['spent']:,} + held {act['held']:,} = "
                         f"{act['spent'] + act['held']:,} ({'fused' if act['fused'] else 'not fused'}); the load saw spent "
                         f"{a['budgets'][aid]['spent']:,} + held {a['budgets'][aid]['held']:,}")
            w.append(f"- users read back through `GET /v1/admin/users/{{id}}`: {srv['users_checked']:,}; counters above a limit or "
                     f"different from the held orders: {srv['users_mismatched']} mismatched")
            w.append(f"- orders sampled through `GET /v1/orders/{{id}}`: {srv['orders_sampled']:,}, states {srv['order_states']}, "
                     f"wrong state: {srv['orders_wrong_state']}")
            for prob in srv["problems"][:10]:
                w.append(f"  - {prob}")
            rings = a["rings"]
            w.append(f"- scalper rings: {rings['count']}, over a limit: {len(rings['over_limit'])}; most units one ring holds: "
                     f"{rings['max_units_held']}; most units in one ring town: {rings['max_town_units']}")
            tight = Counter(v["tightest"].split(":")[0] for v in rings["detail"].values())
            w.append(f"  - each ring's tightest limit: {dict(tight.most_common(5))}")
            w.append(f"- honest buyers' refusals (orders, by reason): {a['honest_refusals'] or 'none'}")
            w.append(f"- honest buyers refused by a rule on a subject they share (region rules meant for rings): "
                     f"{a['honest_ring_rule_refusals'] or 'none'}")
        w.append("")
    crashed = [(r.system, c) for r in runs for c in r.crashed]
    if crashed:
        w.append("## Servers that died\n")
        for system, c in crashed:
            w.append(f"- {system}: ```{c}```")
        w.append("")
    w.append("## JSON lines\n")
    w.append("```")
    w.extend(lines)
    w.append("```")
    path.write_text("\n".join(w) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.flash_sale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, of: ceiling, flashguard, redis")
    p.add_argument("--users", type=int, default=100_000, help="honest buyers")
    p.add_argument("--seed", type=int, default=7)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--saturate", action="store_true", help="only the saturation phase")
    mode.add_argument("--rate", type=float, help="only the spike, at this peak (checks/s)")
    p.add_argument("--open-fraction", type=float, default=0.5, help="spike peak as a share of the ceiling's saturated rate")
    p.add_argument("--own-fraction", type=float, default=0.5,
                   help="flashguard also runs a spike at this share of its own saturated rate (0: not)")
    p.add_argument("--concurrency", type=int, default=256, help="saturation: checks in flight")
    p.add_argument("--sat-seconds", type=float, default=5.0, help="saturation: measured seconds (after the warm-up)")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--ramp", type=float, default=1.0)
    p.add_argument("--hold", type=float, default=10.0)
    p.add_argument("--decay", type=float, default=3.0)
    p.add_argument("--grace", type=float, default=30.0, help="spike: seconds to wait for the last answers")
    p.add_argument("--workers", type=int, default=2, help="load processes")
    p.add_argument("--connections", type=int, default=256, help="keep-alive connections per load process (spike)")
    p.add_argument("--client", choices=["raw", "aiohttp"], default="raw")
    p.add_argument("--bodies", type=int, default=160_000, help="check bodies generated up front")
    p.add_argument("--budget-share", type=float, default=0.7, help="A1's budget as a share of what the spike's orders ask")
    p.add_argument("--server-core", type=int, default=0)
    p.add_argument("--load-core", type=int, default=1)
    p.add_argument("--no-pin", action="store_true", help="do not pin servers and load to cores")
    p.add_argument("--realtime", type=int, default=0, metavar="PRIORITY",
                   help="run servers and load under SCHED_RR at this priority (1-99; root): the closest to dedicated cores "
                        "on a machine where other work runs")
    p.add_argument("--nice", type=int, default=0,
                   help="scheduling priority of every bench process, e.g. -10 on a machine where other work runs (root)")
    p.add_argument("--install-redis", action=argparse.BooleanOptionalAction, default=True, help="apt-get install redis-server when missing")
    p.add_argument("--no-audit", action="store_true")
    p.add_argument("--flashguard-args", default="", help="extra `flashguard serve` arguments, e.g. '--fsync off'")
    p.add_argument("--audit-orders", type=int, default=2000, help="orders whose state the audit reads back")
    p.add_argument("--report", type=Path, help="default: bench/report.md for the default run, none with --saturate "
                   "or --rate; '-' for none")
    p.add_argument("--png", type=Path, help="default: latency.png beside the report")
    args = p.parse_args(argv)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    for s in systems:
        if s not in SYSTEMS:
            p.error(f"unknown system {s!r}")
    if "ceiling" in systems:  # its saturated rate sets the spike's peak
        systems = ["ceiling"] + [s for s in systems if s != "ceiling"]
    if not args.saturate and not args.rate and "ceiling" not in systems:
        p.error("the spike's peak is a share of the ceiling's saturated rate: include ceiling, or give --rate")
    if args.no_pin or not shutil.which("taskset") or (os.cpu_count() or 1) < 2:
        if not args.no_pin:
            print("taskset (util-linux) missing or one core only: not pinning", file=sys.stderr)
        args.server_core = args.load_core = None
    redis_bin = ensure_redis(args.install_redis) if "redis" in systems else None
    if "redis" in systems and redis_bin is None:
        print("redis-server is not installed and could not be installed (apt-get install redis-server); skipping the redis peer",
              file=sys.stderr)
        systems.remove("redis")

    def on_term(signum: int, frame: object) -> None:
        print("terminated: stopping the servers and load processes", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    pin(args.load_core, args.nice)
    global _BODIES
    bodies = Bodies(users=args.users, seed=args.seed)
    log(f"generating {args.bodies:,} check bodies")
    bodies.ensure(args.bodies)
    _BODIES = bodies
    gc.collect()
    gc.freeze()
    token = secrets.token_urlsafe(16)
    runs: list[SystemRun] = []
    lines: list[str] = []
    spike = Spike(args.rate, args.ramp, args.hold, args.decay) if args.rate else None
    with tempfile.TemporaryDirectory(prefix="flash_sale-") as tmp:
        workdir = Path(tmp)
        for system in systems:
            try:
                run = run_system(system, args, bodies, workdir, token, redis_bin, spike, log)
            except Exception as e:  # one system failing must not lose the others' figures
                log(f"{system}: FAILED: {e}")
                run = SystemRun(system, crashed=[f"bench error: {e}"])
            runs.append(run)
            if spike is None and run.shape is not None:
                spike = run.shape
            line = json.dumps(run.summary())
            lines.append(line)
            print(line, flush=True)
    report: Path | None = args.report
    if report is None and not args.saturate and not args.rate:
        report = BENCH_DIR / "report.md"
    if report is None or str(report) == "-":
        return 0
    png: Path | None = args.png or report.with_name("latency.png")
    if png is not None and not plot(runs, spike, png):
        png = None
    write_report(report, png, runs, spike, args, lines, started)
    log(f"wrote {report}" + (f" and {png}" if png else ""))
    by = {r.system: r for r in runs}
    for name, value, ok in targets(by):
        log(f"{'INFO' if ok is None else 'PASS' if ok else 'FAIL'}  {name}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
