"""A discrete-event simulation of cluster mode: gateways and Redis primaries, sized for a peak.

The model (plain heapq, no dependency):

- a **gateway** is one single-threaded process. A check costs it `gw_fixed` CPU-µs split evenly over
  its rounds + 1 slices (one before each round, one to answer), plus `gw_batch` per batch it sends
  (one per primary a round touches);
- a check's **rounds**: a held check reads (one call per actor slot + the order's claim), reserves
  (one per slot changed + the attempt), holds (one per slot changed) and commits (one); a denied
  check reads and commits. A round's calls go as one batch per primary, all primaries in parallel,
  each way taking half the network round trip (`rtt_us`); the round ends with its last answer;
- the **slots**: every check reads `slots` actor slots (user, device, receiver, ...: each on a
  uniformly random primary), one of them the hot activity's budget (one primary, or its home bucket's
  among `buckets`, placed on random primaries like any slot), plus the order record's bucket;
- a **primary** is one single-threaded process: a batch costs `r_batch + calls x r_call` CPU-µs,
  first come first served. Replicas (optional) pay `replica_call` per call, off the answer's path;
- **cores**: with `cores` set, every process (gateways, primaries, replicas, the load generator,
  a background load) shares that many cores, one job at a time each, first come first served (this
  2-core box); without, each process has its own core.

Validation: the measured rows of `bench.cluster` (MEASURED, or `--measured FILE` of its JSON lines)
give the costs (fitted over all rows: gateway and Redis CPU per batch and per call, slots from the
calls and round trips per check); each row is then simulated as a closed loop of the bench's
concurrency on 2 shared cores, with the row's own background CPU, and its checks/s compared.

    .venv/bin/python -m bench.simulate                 # validation, then the 583k sizing (~1-2 min)
    .venv/bin/python -m bench.simulate --measured rows.jsonl --rate 583000
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
from collections import deque
from dataclasses import dataclass, replace
from functools import partial
from itertools import count
from typing import Any, Callable

TARGET = 583_000.0  # checks/s: Tmall's 2020 peak of orders
P99_GOAL_MS = 10.0


@dataclass(frozen=True)
class Costs:
    gw_fixed: float  # gateway CPU-µs per check
    gw_batch: float  # gateway CPU-µs per batch sent
    r_call: float  # primary CPU-µs per Function call
    r_batch: float = 0.0  # primary CPU-µs per batch
    replica_call: float = 0.0  # replica CPU-µs per call (shared cores only)
    client: float = 0.0  # load generator CPU-µs per check (closed loop on shared cores)
    slots: float = 10.0  # actor slots read, and changed, per check (fractional: rounded at random)
    held: float = 1.0  # share of checks held (4 rounds); the rest are denied (2)


@dataclass(frozen=True)
class Topology:
    gateways: int
    primaries: int
    buckets: int = 1  # the hot activity's budget buckets
    hot: bool = True  # every check touches the hot activity
    cores: int | None = None  # shared cores; None: each process its own
    rtt_us: float = 100.0
    replicas: bool = False
    background: float = 0.0  # cores a neighbour takes (shared cores only)


class Sim:
    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = count()
        self.stopped = False

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn))

    def run(self, until: float = math.inf) -> None:
        while self._heap and self._heap[0][0] <= until and not self.stopped:
            self.now, _, fn = heapq.heappop(self._heap)
            fn()


class Machine:
    """`cores` cores shared by processes, granted first come first served, one job at a time."""

    def __init__(self, cores: int) -> None:
        self.free = cores
        self.ready: deque[Proc] = deque()

    def request(self, proc: Proc) -> None:
        if self.free:
            self.free -= 1
            proc.run()
        else:
            self.ready.append(proc)

    def release(self) -> None:
        if self.ready:
            self.ready.popleft().run()
        else:
            self.free += 1


class Proc:
    """A single-threaded process: its jobs run one after the other, first come first served."""

    def __init__(self, sim: Sim, machine: Machine | None) -> None:
        self.sim, self.machine = sim, machine
        self.jobs: deque[tuple[float, Callable[[], None]]] = deque()
        self.active = False  # running or waiting for a core
        self.busy = 0.0

    def submit(self, cost: float, done: Callable[[], None]) -> None:
        self.jobs.append((cost, done))
        if not self.active:
            self._ask()

    def _ask(self) -> None:
        self.active = True
        if self.machine is None:
            self.run()
        else:
            self.machine.request(self)

    def run(self) -> None:
        cost, done = self.jobs.popleft()
        self.busy += cost
        self.sim.at(self.sim.now + cost, lambda: self._finish(done))

    def _finish(self, done: Callable[[], None]) -> None:
        self.active = False
        if self.machine is not None:
            self.machine.release()
        done()
        if self.jobs and not self.active:
            self._ask()


Rounds = list[dict[int, int]]  # per round: primary -> calls


class Router:
    """Where a check's calls go: its actor slots on random primaries, the hot activity's (home)
    bucket on its primary, the order record's bucket on a random one."""

    def __init__(self, costs: Costs, topo: Topology, rng: random.Random) -> None:
        self.costs, self.topo, self.rng = costs, topo, rng
        self.bucket_at = [0] + [rng.randrange(topo.primaries) for _ in range(topo.buckets - 1)]

    def plan(self) -> Rounds:
        rng, p, c = self.rng, self.topo.primaries, self.costs
        n = int(c.slots) + (rng.random() < c.slots - int(c.slots))
        slots = [rng.randrange(p) for _ in range(n - self.topo.hot)]
        if self.topo.hot:
            slots.append(self.bucket_at[rng.randrange(self.topo.buckets)])
        order = rng.randrange(p)
        read: dict[int, int] = {order: 1}
        for s in slots:
            read[s] = read.get(s, 0) + 1
        if rng.random() >= c.held:
            return [read, {order: 1}]
        hold: dict[int, int] = {}
        for s in slots:
            hold[s] = hold.get(s, 0) + 1
        reserve = dict(hold)
        reserve[order] = reserve.get(order, 0) + 1
        return [read, reserve, hold, {order: 1}]


@dataclass
class Result:
    checks_per_s: float
    p50_ms: float
    p99_ms: float
    gateway_util: float  # the busiest gateway's
    primary_util: float  # the busiest primary's
    busiest_primary_share: float  # of all calls
    batches_per_check: float
    calls_per_check: float


def simulate(costs: Costs, topo: Topology, *, rate: float | None = None, concurrency: int = 64,
             checks: int = 20_000, warmup: int = 4_000, seed: int = 1) -> Result:
    """Closed loop of `concurrency` checks (rate None), or open loop: Poisson arrivals at `rate`
    checks/s, round-robin over the gateways. Latency: from the gateway's receipt to its answer."""
    sim, rng = Sim(), random.Random(seed)
    machine = Machine(topo.cores) if topo.cores else None
    gws = [Proc(sim, machine) for _ in range(topo.gateways)]
    prims = [Proc(sim, machine) for _ in range(topo.primaries)]
    reps = [Proc(sim, machine) for _ in range(topo.primaries)] if topo.replicas and machine else []
    client = Proc(sim, machine)
    router, half = Router(costs, topo, rng), topo.rtt_us / 2
    calls = [0] * topo.primaries
    lat: list[float] = []
    tally = {"started": 0, "done": 0, "answers": 0, "batches": 0, "calls": 0}
    window = [0.0, 0.0]  # when the measured checks began and ended
    turn = count()

    def check(t0: float) -> None:
        k = tally["started"]
        tally["started"] += 1
        gw, rounds = gws[next(turn) % len(gws)], router.plan()
        slice_ = costs.gw_fixed / (len(rounds) + 1)

        def step(i: int) -> None:
            if i == len(rounds):
                gw.submit(slice_, lambda: answer(k, t0))
                return
            gw.submit(slice_ + costs.gw_batch * len(rounds[i]), lambda: send(i))

        def send(i: int) -> None:
            batch, left = rounds[i], [len(rounds[i])]
            if k >= warmup:
                tally["batches"] += len(batch)
                tally["calls"] += sum(batch.values())

            def reply() -> None:
                left[0] -= 1
                if not left[0]:
                    step(i + 1)

            def arrive(p: int, n: int) -> Callable[[], None]:
                return lambda: prims[p].submit(costs.r_batch + costs.r_call * n, lambda: done(p, n))

            def done(p: int, n: int) -> None:
                if reps:
                    reps[p].submit(costs.replica_call * n, lambda: None)
                sim.at(sim.now + half, reply)

            for p, n in batch.items():
                calls[p] += n
                sim.at(sim.now + half, arrive(p, n))

        step(0)

    def answer(k: int, t0: float) -> None:
        tally["answers"] += 1
        if tally["answers"] == warmup:  # throughput: answers after the warmup-th, whichever checks they end
            window[0] = sim.now
        window[1] = sim.now
        if k >= warmup:
            lat.append(sim.now - t0)
            tally["done"] += 1
            sim.stopped = tally["done"] == checks  # a background load would go on for ever
        if rate is None and tally["started"] < warmup + checks:
            client.submit(costs.client, lambda: check(sim.now))

    if topo.background and machine:
        bg = Proc(sim, machine)

        def chunk() -> None:
            bg.submit(1000.0, lambda: sim.at(sim.now + 1000.0 * (1 / topo.background - 1), chunk))

        chunk()
    if rate is None:
        for _ in range(concurrency):
            client.submit(costs.client, lambda: check(sim.now))
    else:
        t = 0.0
        for _ in range(warmup + checks):
            t += rng.expovariate(rate / 1e6)
            sim.at(t, partial(check, t))
    sim.run()
    lat.sort()
    span = max(window[1] - window[0], 1e-9) if rate is None else max(sim.now, 1e-9)
    measured = max(tally["done"], 1)
    return Result(checks_per_s=(tally["answers"] - warmup) / span * 1e6 if rate is None else rate,
                  p50_ms=lat[len(lat) // 2] / 1000, p99_ms=lat[int(len(lat) * 0.99)] / 1000,
                  gateway_util=max(g.busy for g in gws) / sim.now, primary_util=max(p.busy for p in prims) / sim.now,
                  busiest_primary_share=max(calls) / max(sum(calls), 1), batches_per_check=tally["batches"] / measured,
                  calls_per_check=tally["calls"] / measured)


# -- the measured rows and the costs they give ---------------------------------------------------

# bench.cluster, default run (see bench/README.md "Cluster mode"): one dict per cluster row
# (2026-12-03, 2 shared cores; cpu_cores.other: what the rest of the machine took meanwhile)
MEASURED: list[dict[str, Any]] = [
    {"row": "1+1 Redis, 1 gateway", "gateways": 1, "primaries": 1, "replicas": 1, "concurrency": 64, "checks_per_s": 230, "gateway_us_per_check": 2237, "primaries_us_per_check": 1500, "replicas_us_per_check": 438, "load_us_per_check": 134, "calls_per_check": 29.52, "round_trips_per_check": 3.74, "busiest_primary_share": 1.0, "cpu_cores": {"other": 0.93}},
    {"row": "1+1 Redis, 2 gateways", "gateways": 2, "primaries": 1, "replicas": 1, "concurrency": 64, "checks_per_s": 286, "gateway_us_per_check": 2592, "primaries_us_per_check": 1490, "replicas_us_per_check": 392, "load_us_per_check": 177, "calls_per_check": 29.34, "round_trips_per_check": 3.75, "busiest_primary_share": 1.0, "cpu_cores": {"other": 0.65}},
    {"row": "1+1 Redis, 4 gateways", "gateways": 4, "primaries": 1, "replicas": 1, "concurrency": 64, "checks_per_s": 404, "gateway_us_per_check": 2673, "primaries_us_per_check": 1322, "replicas_us_per_check": 365, "load_us_per_check": 163, "calls_per_check": 28.82, "round_trips_per_check": 3.69, "busiest_primary_share": 1.0, "cpu_cores": {"other": 0.0}},
    {"row": "3+3 Redis, 1 gateway", "gateways": 1, "primaries": 3, "replicas": 1, "concurrency": 64, "checks_per_s": 315, "gateway_us_per_check": 2611, "primaries_us_per_check": 1839, "replicas_us_per_check": 537, "load_us_per_check": 139, "calls_per_check": 29.16, "round_trips_per_check": 3.72, "busiest_primary_share": 0.384, "cpu_cores": {"other": 0.03}},
    {"row": "3+3 Redis, 2 gateways", "gateways": 2, "primaries": 3, "replicas": 1, "concurrency": 64, "checks_per_s": 299, "gateway_us_per_check": 3477, "primaries_us_per_check": 2164, "replicas_us_per_check": 680, "load_us_per_check": 191, "calls_per_check": 29.43, "round_trips_per_check": 3.74, "busiest_primary_share": 0.384, "cpu_cores": {"other": 0.02}},
    {"row": "3+3 Redis, 4 gateways", "gateways": 4, "primaries": 3, "replicas": 1, "concurrency": 64, "checks_per_s": 304, "gateway_us_per_check": 3621, "primaries_us_per_check": 2012, "replicas_us_per_check": 538, "load_us_per_check": 194, "calls_per_check": 29.73, "round_trips_per_check": 3.77, "busiest_primary_share": 0.385, "cpu_cores": {"other": 0.01}},
]


def batches_per_check(costs: Costs, primaries: int, buckets: int = 1) -> float:
    router = Router(costs, Topology(1, primaries, buckets), random.Random(3))
    plans = [router.plan() for _ in range(4000)]
    return sum(len(r) for p in plans for r in p) / len(plans)


def _fit(xs: list[tuple[float, float]], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a*x0 + b*x1 (no intercept), both kept >= 0."""
    s00, s01, s11 = (sum(x[i] * x[j] for x in xs) for i, j in ((0, 0), (0, 1), (1, 1)))
    t0, t1 = sum(x[0] * y for x, y in zip(xs, ys)), sum(x[1] * y for x, y in zip(xs, ys))
    det = s00 * s11 - s01 * s01
    a, b = ((t0 * s11 - t1 * s01) / det, (t1 * s00 - t0 * s01) / det) if det else (0.0, 0.0)
    if a < 0 or b < 0 or not det:  # one term only
        if sum(x[0] for x in xs) and (b < 0 or not det):
            return sum(ys) / sum(x[0] for x in xs), 0.0
        return 0.0, sum(ys) / sum(x[1] for x in xs)
    return a, b


def fit(rows: list[dict[str, Any]]) -> Costs:
    """Costs from the measured cluster rows: slots from calls and round trips per check; gateway
    CPU = fixed + per batch, primary CPU = per batch + per call, least squares over the rows."""
    n = len(rows)
    rt, calls = sum(r["round_trips_per_check"] for r in rows) / n, sum(r["calls_per_check"] for r in rows) / n
    held = min(max((rt - 2) / 2, 0.0), 1.0)
    base = Costs(0, 0, 0, slots=(calls - 2 - held) / (1 + 2 * held), held=held)
    b = [batches_per_check(base, r["primaries"]) for r in rows]
    gw_fixed, gw_batch = _fit([(1.0, x) for x in b], [r["gateway_us_per_check"] for r in rows])
    r_batch, r_call = _fit([(x, r["calls_per_check"]) for x, r in zip(b, rows)], [r["primaries_us_per_check"] for r in rows])
    return replace(base, gw_fixed=gw_fixed, gw_batch=gw_batch, r_call=r_call, r_batch=r_batch,
                   replica_call=sum(r["replicas_us_per_check"] / r["calls_per_check"] for r in rows) / n,
                   client=sum(r["load_us_per_check"] for r in rows) / n)


def validate(costs: Costs, rows: list[dict[str, Any]], checks: int) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        topo = Topology(r["gateways"], r["primaries"], cores=2, rtt_us=20.0, replicas=r["replicas"] > 0,
                        background=r["cpu_cores"]["other"])
        got = simulate(costs, topo, concurrency=r["concurrency"], checks=checks, warmup=checks // 5)
        out.append({"row": r["row"], "measured": r["checks_per_s"], "predicted": round(got.checks_per_s),
                    "error_pct": round((got.checks_per_s / r["checks_per_s"] - 1) * 100, 1),
                    "busiest_primary_share": (r.get("busiest_primary_share"), round(got.busiest_primary_share, 3))})
    return out


def sizing(costs: Costs, rate: float, checks: int, rtt: float, slice_gateways: int = 32) -> list[dict[str, Any]]:
    """Configurations around what the costs imply at `rate` (gateway and primary cores at a target
    busy share; the hot activity as 1 bucket, 64, or as many as keep its primaries half busy).
    A hot bucket offered more than its core is saturated: no run. Otherwise simulated as a slice:
    gateways, primaries, buckets and rate all times f (each process keeps its load; f ~ 32 gateways)."""
    b = batches_per_check(costs, 1000)
    gw_cores = rate * (costs.gw_fixed + costs.gw_batch * b) / 1e6
    calls = costs.slots + 2 + costs.held * (2 * costs.slots + 1)
    redis_cores = rate * (costs.r_batch * b + costs.r_call * calls) / 1e6
    hot = rate * (1 + 2 * costs.held) * (costs.r_batch + costs.r_call) / 1e6  # read, reserve and hold of its bucket
    need = math.ceil(hot / 0.5)
    rows = []
    for gw_util, redis_util, buckets in ((0.7, 0.7, 1), (0.7, 0.7, 64), (0.7, 0.7, need), (0.5, 0.5, need), (0.3, 0.5, need),
                                         (0.3, 0.3, need * 2)):
        g, p = math.ceil(gw_cores / gw_util), math.ceil(redis_cores / redis_util)
        row: dict[str, Any] = {"gateway_cores": g, "primaries": p, "buckets": buckets, "hot_bucket_util": round(hot / buckets, 2),
                               "p50_ms": math.inf, "p99_ms": math.inf, "gateway_util": gw_util, "primary_util": 1.0}
        if hot / buckets < 1:
            slice_b = max(2, round(buckets * slice_gateways / g))
            f = slice_b / buckets
            res = simulate(costs, Topology(max(1, round(g * f)), max(2, round(p * f)), slice_b, rtt_us=rtt), rate=rate * f,
                           checks=checks, warmup=checks // 5)
            row.update(p50_ms=round(res.p50_ms, 2), p99_ms=round(res.p99_ms, 2), gateway_util=round(res.gateway_util, 2),
                       primary_util=round(res.primary_util, 2))
        row["ok"] = row["p99_ms"] < P99_GOAL_MS
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measured", help="bench.cluster's JSON lines (default: MEASURED, the last run in bench/README.md)")
    ap.add_argument("--rate", type=float, default=TARGET)
    ap.add_argument("--rtt-us", type=float, default=100.0, help="network round trip gateway <-> Redis")
    ap.add_argument("--checks", type=int, default=10_000, help="checks simulated per sizing row (plus a fifth as warm-up)")
    args = ap.parse_args(argv)
    rows = MEASURED
    if args.measured:
        with open(args.measured) as f:
            rows = [r for line in f if line.startswith("{") and (r := json.loads(line))["redis"] and not r["wait_replicas"]]
    costs = fit(rows)
    print("costs fitted from", len(rows), "measured rows:", json.dumps({k: round(v, 2) for k, v in vars(costs).items()}))
    report = validate(costs, rows, 3000)
    print("\n| row | measured checks/s | predicted | error | busiest primary's share of calls: measured / predicted |\n|---|---:|---:|---:|---:|")
    for v in report:
        print(f"| {v['row']} | {v['measured']:,} | {v['predicted']:,} | {v['error_pct']:+}% | "
              f"{v['busiest_primary_share'][0]} / {v['busiest_primary_share'][1]} |")
    worst = max(abs(v["error_pct"]) for v in report)
    if worst > 20:
        print(f"\nthe model misses a measured row by {worst}% (> 20%): no sizing from it")
        return 1
    print(f"\nworst error {worst}%: within 20%. Sizing at {args.rate:,.0f} checks/s, RTT {args.rtt_us:g} µs, each process its own core:")
    print("\n| gateway cores | primaries | hot activity buckets | p50 ms | p99 ms | busiest gateway | busiest primary | hot bucket's primary (offered) | p99 < 10 ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for s in sizing(costs, args.rate, args.checks, args.rtt_us):
        lat = f"{s['p50_ms']} | {s['p99_ms']}" if s["p99_ms"] < math.inf else "saturated | saturated"
        print(f"| {s['gateway_cores']:,} | {s['primaries']:,} | {s['buckets']} | {lat} | "
              f"{s['gateway_util']:.0%} | {s['primary_util']:.0%} | {s['hot_bucket_util']:.0%} | {'yes' if s['ok'] else 'no'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
