"""Cluster mode under the flash-sale load: 1, 2 and 4 gateways on a local Redis Cluster, beside the single node.

Each row starts from fresh state: the single node (`flashguard serve` without --redis); for each
`--primaries` count (1 and 3) and each `--gateways` count (1, 2, 4) a new Redis Cluster on loopback
(appendonly yes, appendfsync everysec, `--replicas` 1 per primary: 3 primaries by `redis-cli
--cluster create --cluster-replicas 1`, 1 primary holding all 16384 slots by `CLUSTER
ADDSLOTSRANGE 0 16383` with its replica attached by `CLUSTER MEET` + `CLUSTER REPLICATE`) with
that many gateways; then 1 gateway with `--redis-wait-replicas 1` on 3+3. Load: a closed loop of `--concurrency` checks in
flight (`bench.scenario` orders asking `on_refusal = degrade`), round-robin over the gateways (one
keep-alive pool each), `--warmup` s then `--seconds` s measured. A1's budget runs out mid-row.
The audit then reads back every order whose check got no 200, recomputes from the orders held at
the end each user's quantity under A1 (`user_limit`), under A1 per SKU (`sku_limits`), per SKU (the
SKU's user limit) and A1's total discount (budget), and checks that every gateway's
`GET /v1/admin/activities/{id}` spent + held equals those orders' discounts. One JSON line per row,
then a markdown table. Gateways, Redis nodes and load share the cores: the figures are a floor.

Costs per check: at both ends of the measured window the bench samples each party's CPU
(/proc/PID/stat: gateways, primaries, replicas, itself), the gateways' /metrics (flashguard_checks,
_cluster_calls, _cluster_round_trips, _cluster_contention) and each primary's INFO commandstats
(FCALL calls and usec); the deltas divided by the checks the gateways counted give gateway CPU-µs,
Redis CPU-µs, Function calls and round trips per check (the input of bench/simulate.py).

    .venv/bin/python -m bench.cluster                     # the default run, ~3 minutes
    .venv/bin/python -m bench.cluster --gateways 1,2 --seconds 5 --no-single --no-wait-row
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import os
import platform
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import msgspec

try:
    import uvloop

    _run: Any = uvloop.run
except ImportError:  # pragma: no cover
    _run = asyncio.run

from bench.flash_sale import (CHECK_PATH, HOST, Bodies, RawClient, Servers, _cores_busy, _proc_cpu, bench_config,
                              flashguard_cmd, free_port, new_hist, record)

ALLOW, DEGRADE, DENY, CONTENTION, SHED, ERROR = 1, 2, 3, 4, 5, 6
OUTCOME = {"allow": ALLOW, "degrade": DEGRADE, "deny": DENY}
REDIS_PORTS = range(25000, 30000)  # bus port = port + 10000; tests/redis_servers.py uses 20000-24999


class _Why(msgspec.Struct):
    code: str


class _Answer(msgspec.Struct):
    decision: str
    reasons: list[_Why] = []
    stripped: list[str] = []


_answer = msgspec.json.Decoder(_Answer)


def _error_code(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    gateways: int
    redis: bool
    wait: int = 0
    primaries: int = 3
    replicas: int = 1  # per primary


_BODIES: list[bytes] = []  # the check bodies, made once in main


class Tally:
    """What the load saw: per order its outcome, the latencies and counts of the measured window."""

    def __init__(self, n: int) -> None:
        self.outcomes = bytearray(n)
        self.stripped: dict[int, list[str]] = {}
        self.hist = new_hist()
        self.decisions: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.done = 0  # 200 answers within the measured window
        self.budget_out_at: float | None = None
        self.out_of_bodies = False
        self.cpu: dict[str, float] = {}
        self.window: list[Sample] = []  # at the start and at the end of the measured window


_METRIC = re.compile(rb"^(flashguard_checks|flashguard_cluster_round_trips|flashguard_cluster_calls|flashguard_cluster_contention)"
                     rb"_total(?:\{[^}]*\})? ([0-9.e+]+)$", re.M)


@dataclass(slots=True)
class Sample:
    """What every party had used and counted at one moment: CPU seconds by group (gateways,
    primaries, replicas, load: this process, busy: the whole machine), the gateways' counters
    summed (checks, round trips, calls, contention rounds) and each primary's FCALLs (calls, usec)."""

    t: float
    cpu: dict[str, float]
    metrics: dict[str, float]
    fcall: dict[int, tuple[float, float]]


async def _redis_info(port: int, section: str) -> str:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"INFO {section}\r\n".encode())
        await writer.drain()
        head = await reader.readline()
        return (await reader.readexactly(int(head[1:]) + 2)).decode()
    finally:
        writer.close()


async def sample(ports: list[int], groups: dict[str, list[int]], primaries: list[int]) -> Sample:
    metrics: dict[str, float] = defaultdict(float)
    for _, text in await asyncio.gather(*(_get(port, "/metrics") for port in ports)):
        for name, value in _METRIC.findall(text):
            metrics[name.decode().removeprefix("flashguard_").removeprefix("cluster_")] += float(value)
    cpu = {name: float(sum(map(_proc_cpu, pids))) for name, pids in groups.items()}
    cpu["load"], cpu["busy"], t = sum(os.times()[:2]), sum(_cores_busy().values()), time.monotonic()
    fcall = {}
    for port in primaries:
        m = re.search(r"^cmdstat_fcall:calls=(\d+),usec=(\d+)", await _redis_info(port, "commandstats"), re.M)
        fcall[port] = (float(m.group(1)), float(m.group(2))) if m else (0.0, 0.0)
    return Sample(t, cpu, dict(metrics), fcall)


async def closed_loop(ports: list[int], concurrency: int, warmup: float, seconds: float,
                      probe: Callable[[], Awaitable[Sample]] | None = None) -> Tally:
    """`concurrency` checks in flight, each sent as soon as the previous answer came, round-robin
    over the gateways (one keep-alive pool each); `probe` samples at both ends of the window."""
    clients = [RawClient(HOST, port, concurrency) for port in ports]
    for c in clients:
        await c.open(concurrency // len(clients) + 1)
    tally, orders, turn = Tally(len(_BODIES)), iter(range(len(_BODIES))), itertools.count()
    start = time.monotonic()
    measure_from, end = start + warmup, start + warmup + seconds

    async def slot() -> None:
        for k in orders:
            t0 = time.monotonic()
            if t0 >= end:
                return
            try:
                status, body = await clients[next(turn) % len(clients)].request(b"POST", CHECK_PATH, _BODIES[k])
            except Exception as e:
                tally.errors[type(e).__name__] += 1
                tally.outcomes[k] = ERROR
                continue
            t1 = time.monotonic()
            if measure_from <= t0 and t1 <= end:
                record(tally.hist, t1 - t0)  # every answer, 503s and 429s included
            if status != 200:
                code = _error_code(body)
                tally.outcomes[k] = CONTENTION if status == 503 and code == "contention" else SHED if status == 429 else ERROR
                tally.errors[f"{status} {code}".strip()] += 1
                continue
            ans = _answer.decode(body)
            tally.outcomes[k] = OUTCOME[ans.decision]
            tally.decisions[ans.decision] += 1
            tally.done += measure_from <= t1 <= end
            codes = {w.code for w in ans.reasons}
            tally.reasons.update(codes)
            if ans.stripped:
                tally.stripped[k] = ans.stripped
            if tally.budget_out_at is None and "ACTIVITY_BUDGET_EXHAUSTED" in codes:
                tally.budget_out_at = round(t1 - start, 2)
        tally.out_of_bodies = True

    async def window() -> None:
        if probe is None:
            return
        await asyncio.sleep(max(0.0, measure_from - time.monotonic()))
        tally.window.append(await probe())
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        tally.window.append(await probe())

    try:
        await asyncio.gather(window(), *(slot() for _ in range(concurrency)))
    finally:
        for c in clients:
            await c.close()
    return tally


# -- the servers --------------------------------------------------------------------------------


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
            return True
        except OSError:
            return False


def redis_cli(cli: str, port: int, *args: str) -> str:
    got = subprocess.run([cli, "-h", HOST, "-p", str(port), *args], capture_output=True, text=True, timeout=10,
                         stdin=subprocess.DEVNULL, check=False)
    return got.stdout


def start_redis(servers: Servers, workdir: Path, redis_bin: str, cli: str, primaries: int = 3,
                replicas: int = 1) -> dict[int, tuple[str, int]]:
    """`primaries` x (1 + `replicas`) redis-server nodes made into a Redis Cluster; waits until
    every node says the cluster is ok and every replica's link is up. Returns port -> (role, pid).
    3 or more primaries: `redis-cli --cluster create`; 1 primary: it takes every slot
    (`CLUSTER ADDSLOTSRANGE 0 16383`) and each replica meets it and replicates it."""
    ports: list[int] = []
    pids: dict[int, int] = {}
    while len(ports) < primaries * (1 + replicas):
        p = random.choice(REDIS_PORTS)
        if p not in ports and _bindable(p) and _bindable(p + 10000):
            ports.append(p)
    for port in ports:
        node = workdir / f"redis-{port}"
        node.mkdir()
        pids[port] = servers.spawn("redis", [redis_bin, "--port", str(port), "--bind", HOST, "--dir", str(node), "--daemonize", "no",
                                             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--cluster-enabled", "yes",
                                             "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "5000",
                                             "--cluster-announce-ip", HOST], "ready to accept connections")
    if primaries == 1:
        first = ports[0]
        redis_cli(cli, first, "cluster", "addslotsrange", "0", "16383")
        me = redis_cli(cli, first, "cluster", "myid").strip()
        for port in ports[1:]:
            redis_cli(cli, port, "cluster", "meet", HOST, str(first))
        deadline = time.monotonic() + 30
        for port in ports[1:]:
            while "OK" not in redis_cli(cli, port, "cluster", "replicate", me):  # once it knows the primary
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis :{port} could not replicate the primary :{first}")
                time.sleep(0.1)
    else:
        create = subprocess.run([cli, "--cluster", "create", *(f"{HOST}:{p}" for p in ports), "--cluster-replicas", str(replicas),
                                 "--cluster-yes"], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{create.stdout}\n{create.stderr}")
    deadline = time.monotonic() + 30
    while True:
        roles = {p: redis_cli(cli, p, "role").split("\n", 1)[0] for p in ports}
        ok = all("cluster_state:ok" in redis_cli(cli, p, "cluster", "info") for p in ports) and all(
            "master_link_status:up" in redis_cli(cli, p, "info", "replication") for p, r in roles.items() if r == "slave")
        if ok and list(roles.values()).count("master") == primaries:
            return {p: ("primary" if r == "master" else "replica", pids[p]) for p, r in roles.items()}
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Redis Cluster did not settle in 30 s (roles {roles})")
        time.sleep(0.1)


def start_cluster(servers: Servers, workdir: Path, redis_bin: str, cli: str) -> list[int]:
    """3 primaries + 3 replicas (bench.hotkey's cluster); returns the primaries' ports."""
    return [p for p, (role, _) in start_redis(servers, workdir, redis_bin, cli).items() if role == "primary"]


def start_gateways(servers: Servers, row: Row, workdir: Path, cfg: Path, token: str, primaries: list[int]) -> list[int]:
    """The row's gateways, one after the other: the first seeds the configuration into Redis."""
    ports = []
    for i in range(row.gateways):
        port = free_port()
        cmd = flashguard_cmd() + ["serve", "--host", HOST, "--port", str(port), "--data", str(workdir / f"gw-{i}"),
                                  "--config", str(cfg)]
        if row.redis:
            cmd += ["--redis", f"redis://{HOST}:{primaries[i % len(primaries)]}"]
        if row.wait:
            cmd += ["--redis-wait-replicas", str(row.wait)]
        servers.spawn("gateway", cmd, "listening on http://", env={"FLASHGUARD_ADMIN_TOKEN": token})
        ports.append(port)
    return ports


async def _get(port: int, path: str, token: str | None = None) -> tuple[int, Any]:
    client = RawClient(HOST, port, 1)
    try:
        status, body = await client.request(b"GET", path.encode(), token=token)
    finally:
        await client.close()
    return status, json.loads(body) if body and path != "/metrics" else body


# -- the audit ----------------------------------------------------------------------------------


async def audit(ports: list[int], token: str, cfg: dict[str, Any], tally: Tally) -> dict[str, Any]:
    """Every limit and budget recomputed from the orders held at the end, against the config and
    against each gateway's activity counters."""
    stripped = dict(tally.stripped)
    held = [k for k, o in enumerate(tally.outcomes) if o in (ALLOW, DEGRADE)]
    problems: list[str] = []
    resolved: Counter[str] = Counter()
    todo = iter([k for k, o in enumerate(tally.outcomes) if o >= CONTENTION])

    async def resolve(port: int) -> None:  # an order whose check got no 200: what does the server say?
        for k in todo:
            status, view = await _get(port, f"/v1/orders/{json.loads(_BODIES[k])['order_id']}")
            state = "not found" if status == 404 else view["state"] if status == 200 else f"HTTP {status}"
            resolved[state] += 1
            if state in ("held", "confirmed"):
                held.append(k)
                stripped[k] = view["stripped"]
            elif status not in (200, 404):
                problems.append(f"GET order {k}: HTTP {status}")

    await asyncio.gather(*(resolve(ports[i % len(ports)]) for i in range(8)))
    acts = {a["activity_id"]: a for a in cfg["activities"]}
    limits: dict[tuple[str, str], int | None] = {("sku", s["sku_id"]): s["limits"].get("user") for s in cfg["skus"]}
    for aid, a in acts.items():
        limits["activity", aid] = a.get("user_limit")
        limits.update({("activity-sku", f"{aid}/{sku}"): q for sku, q in a.get("sku_limits", {}).items()})
    spend: Counter[str] = Counter()
    units: Counter[tuple[str, str, str]] = Counter()  # (limit kind, user, what)
    for k in held:
        order = json.loads(_BODIES[k])
        user, gone = order["user_id"], set(stripped.get(k, ()))
        for item in order["items"]:
            units["sku", user, item["sku_id"]] += item["quantity"]
            under = {d["activity_id"] for d in item.get("discounts", []) if d.get("activity_id") and d["id"] not in gone}
            spend.update({aid: sum(d["amount"] for d in item["discounts"] if d.get("activity_id") == aid and d["id"] not in gone)
                          for aid in under})
            for aid in under:
                units["activity", user, aid] += item["quantity"]
                units["activity-sku", user, f"{aid}/{item['sku_id']}"] += item["quantity"]
    passed = [f"{kind} {user} {what}: {q} > {limits[kind, what]}" for (kind, user, what), q in units.items()
              if (limit := limits.get((kind, what))) is not None and q > limit]
    for aid, a in acts.items():
        if a.get("budget") is not None and spend[aid] > a["budget"]:
            passed.append(f"activity {aid}: held discounts {spend[aid]} > budget {a['budget']}")
        for port in ports:
            status, got = await _get(port, f"/v1/admin/activities/{aid}", token)
            if status != 200:
                problems.append(f"gateway :{port} GET activity {aid}: HTTP {status}")
            elif got["spent"] + got["held"] != spend[aid]:
                problems.append(f"gateway :{port} activity {aid}: spent {got['spent']} + held {got['held']} != {spend[aid]}, "
                                "the held orders' discounts")
            elif got["budget"] is not None and got["spent"] + got["held"] > got["budget"]:
                passed.append(f"gateway :{port} activity {aid}: {got['spent'] + got['held']} > budget {got['budget']}")
    return {"clean": not passed and not problems, "held_orders": len(held), "a1_spend": spend["A1"],
            "a1_budget": acts["A1"].get("budget"), "limits_checked": len(units), "passed": passed[:20],
            "problems": problems[:20], "unanswered_read_back": dict(resolved)}


# -- one row ------------------------------------------------------------------------------------


async def load_and_audit(ports: list[int], args: argparse.Namespace, cfg: dict[str, Any], token: str,
                         servers: list[Servers], nodes: dict[int, tuple[str, int]]) -> tuple[Tally, dict[str, Any], dict[str, Any]]:
    """The load, with the CPU each party used and the gateways' and primaries' counters sampled at
    both ends of the measured window; then the audit. Returns the tally, the audit and the costs."""
    groups = {"gateways": servers[0].pids(), "primaries": [pid for role, pid in nodes.values() if role == "primary"],
              "replicas": [pid for role, pid in nodes.values() if role == "replica"]}
    primaries = [port for port, (role, _) in nodes.items() if role == "primary"]
    gc.disable()  # a full collection would stall every check in flight
    try:
        tally = await closed_loop(ports, args.concurrency, args.warmup, args.seconds, lambda: sample(ports, groups, primaries))
    finally:
        gc.enable()
    costs = per_check(*tally.window)
    tally.cpu = costs.pop("cores")
    dead = [d for s in servers for d in s.dead()]
    if dead:
        return tally, {"clean": False, "problems": dead}, costs
    return tally, await audit(ports, token, cfg, tally), costs


def per_check(s0: Sample, s1: Sample) -> dict[str, Any]:
    """From two samples: cores used by each party, and per check (the gateways' own count) the CPU
    each side used, the calls and round trips, and the primaries' FCALL time and busiest share."""
    dt = s1.t - s0.t
    used = {k: s1.cpu[k] - s0.cpu[k] for k in s1.cpu}
    d = {k: s1.metrics.get(k, 0.0) - s0.metrics.get(k, 0.0) for k in ("checks", "round_trips", "calls", "contention")}
    calls = {p: s1.fcall[p][0] - s0.fcall[p][0] for p in s1.fcall}
    usec = sum(s1.fcall[p][1] - s0.fcall[p][1] for p in s1.fcall)
    n = max(d["checks"], 1.0)
    cores = {k: round(used[k] / dt, 2) for k in ("gateways", "primaries", "replicas", "load")}
    cores["redis"] = round(cores["primaries"] + cores["replicas"], 2)
    cores["other"] = round(max(0.0, used["busy"] / dt - sum(cores[k] for k in ("gateways", "redis", "load"))), 2)
    total_calls = sum(calls.values())
    return {"cores": cores, "window_s": round(dt, 2), "gateway_checks": int(d["checks"]), "contention_rounds": int(d["contention"]),
            "gateway_us_per_check": round(used["gateways"] / n * 1e6), "primaries_us_per_check": round(used["primaries"] / n * 1e6),
            "replicas_us_per_check": round(used["replicas"] / n * 1e6), "load_us_per_check": round(used["load"] / n * 1e6),
            "redis_us_per_check": round((used["primaries"] + used["replicas"]) / n * 1e6),
            "calls_per_check": round(d["calls"] / n, 2), "round_trips_per_check": round(d["round_trips"] / n, 2),
            "fcalls_per_check": round(total_calls / n, 2), "fcall_usec_per_call": round(usec / total_calls, 1) if total_calls else None,
            "primary_us_per_call": round(used["primaries"] / total_calls * 1e6, 1) if total_calls else None,
            "busiest_primary_share": round(max(calls.values()) / total_calls, 3) if total_calls else None}


def run_row(row: Row, args: argparse.Namespace, cfg: dict[str, Any], token: str, tools: tuple[str, str] | None,
            workdir: Path, log: Any) -> dict[str, Any]:
    rowdir = workdir / re.sub(r"\W+", "-", row.name)
    rowdir.mkdir()
    cfg_path = rowdir / "config.json"
    cfg_path.write_text(json.dumps(cfg))
    gateways, redis = Servers(rowdir, None), Servers(rowdir, None)
    try:
        nodes: dict[int, tuple[str, int]] = {}
        if row.redis:
            assert tools is not None
            began = time.monotonic()
            nodes = start_redis(redis, rowdir, *tools, primaries=row.primaries, replicas=row.replicas)
            log(f"{row.name}: Redis Cluster up in {time.monotonic() - began:.1f} s ({row.primaries}+{row.primaries * row.replicas})")
        primaries = [port for port, (role, _) in nodes.items() if role == "primary"]
        ports = start_gateways(gateways, row, rowdir, cfg_path, token, primaries)
        log(f"{row.name}: {args.concurrency} in flight for {args.warmup:g}+{args.seconds:g} s")
        tally, result, costs = _run(load_and_audit(ports, args, cfg, token, [gateways, redis], nodes))
    finally:
        gateways.stop()
        redis.stop()
    hist, errors = tally.hist, tally.errors
    ms = {f"p{str(q).replace('.', '')}_ms": round(hist.get_value_at_percentile(q) / 1000, 2) for q in (50, 99, 99.9)}
    return {"row": row.name, "gateways": row.gateways, "redis": row.redis, "primaries": row.primaries if row.redis else 0,
            "replicas": row.replicas if row.redis else 0, "wait_replicas": row.wait, "concurrency": args.concurrency,
            "checks_per_s": round(tally.done / args.seconds), **ms, "max_ms": round(hist.get_max_value() / 1000, 2),
            "decisions": dict(tally.decisions), "reasons": dict(tally.reasons.most_common()),
            "contention_503": errors.get("503 contention", 0), "shed_429": sum(v for k, v in errors.items() if k.startswith("429")),
            "errors": dict(errors), "budget_out_at_s": tally.budget_out_at, "out_of_bodies": tally.out_of_bodies,
            "cpu_cores": tally.cpu, **costs, "audit": result}


def machine(redis_bin: str | None) -> str:
    model = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    out = subprocess.run([redis_bin, "--version"], capture_output=True, text=True).stdout if redis_bin else ""
    version = re.search(r"v=(\S+)", out)
    return (f"{os.cpu_count()} cores ({model.group(1) if model else '?'}), {os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE') / 2**30:.0f} GB, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, redis-server {version.group(1) if version else '?'}")


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| configuration | checks/s | p50 ms | p99 ms | allow / degrade / deny | 503 contention | other errors | "
           "CPU cores: gateways / Redis / load / other | gateway CPU-µs per check | Redis CPU-µs per check (primaries + replicas) | "
           "calls / round trips per check | audit |",
           "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"]
    for r in rows:
        d = r["decisions"]
        other = sum(r["errors"].values()) - r["contention_503"]
        a = r["audit"]
        verdict = "clean" if a["clean"] else "**FAILED**: " + "; ".join((a.get("passed", []) + a.get("problems", []))[:3])
        cpu = r["cpu_cores"]
        redis = (f"{r['redis_us_per_check']:,} ({r['primaries_us_per_check']:,} + {r['replicas_us_per_check']:,})" if r["redis"] else "–")
        calls = f"{r['calls_per_check']} / {r['round_trips_per_check']}" if r["redis"] else "–"
        out.append(f"| {r['row']} | {r['checks_per_s']:,} | {r['p50_ms']} | {r['p99_ms']} | "
                   f"{d.get('allow', 0):,} / {d.get('degrade', 0):,} / {d.get('deny', 0):,} | {r['contention_503']:,} | {other:,} | "
                   f"{cpu['gateways']} / {cpu['redis']} / {cpu['load']} / {cpu['other']} | {r['gateway_us_per_check']:,} | {redis} | "
                   f"{calls} | {verdict} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gateways", default="1,2,4", help="gateway counts of the cluster rows")
    p.add_argument("--primaries", default="1,3", help="Redis primary counts of the cluster rows (1, or 3 and more)")
    p.add_argument("--replicas", type=int, default=1, help="replicas per primary")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per row")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--concurrency", type=int, default=64, help="checks in flight over all gateways")
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--bodies", type=int, default=120_000, help="check bodies made up front (each row starts at the first)")
    p.add_argument("--budget-orders", type=int, default=1_500, help="A1's budget: --budget-share of what this many orders ask")
    p.add_argument("--budget-share", type=float, default=0.7)
    p.add_argument("--on-refusal", choices=["degrade", "deny"], default="degrade")
    p.add_argument("--no-single", action="store_true", help="skip the single-node row")
    p.add_argument("--no-wait-row", action="store_true", help="skip the --redis-wait-replicas 1 row")
    args = p.parse_args(argv)
    counts = [int(x) for x in args.gateways.split(",") if x.strip()]
    shards = [int(x) for x in args.primaries.split(",") if x.strip()]
    if any(n == 2 for n in shards):
        p.error("--primaries: 1, or 3 and more (redis-cli --cluster create wants 3)")
    rows = [] if args.no_single else [Row("single node", 1, False)]
    rows += [Row(f"{m}+{m * args.replicas} Redis, {n} gateway{'s' if n > 1 else ''}", n, True, 0, m, args.replicas)
             for m in shards for n in counts]
    if not args.no_wait_row:
        rows.append(Row(f"3+{3 * max(args.replicas, 1)} Redis, 1 gateway, --redis-wait-replicas 1", 1, True, 1, 3, max(args.replicas, 1)))
    redis_bin, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if any(r.redis for r in rows) and (redis_bin is None or cli is None):
        p.error("redis-server and redis-cli must be on PATH (Debian: apt-get install redis-server)")
    tools = (redis_bin, cli) if redis_bin and cli else None

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    log(machine(redis_bin))
    bodies = Bodies(users=args.users, seed=args.seed)
    bodies.ensure(args.bodies)
    suffix = b',"on_refusal":"degrade"}' if args.on_refusal == "degrade" else b"}"
    _BODIES[:] = [b[:-1] + suffix for b in bodies.data[: args.bodies]]
    budget = int(sum(bodies.budget_spend[: args.budget_orders]) * args.budget_share)
    cfg = bench_config(args.users, budget)
    log(f"{len(_BODIES):,} bodies; A1 budget {budget:,} ({args.budget_share:g} of what the first {args.budget_orders:,} orders ask)")
    gc.collect()
    gc.freeze()
    token = secrets.token_urlsafe(16)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        for row in rows:
            try:
                r = run_row(row, args, cfg, token, tools, Path(tmp), log)
            except Exception as e:  # one row failing must not lose the others
                log(f"{row.name}: FAILED: {e}")
                continue
            a = r["audit"]
            log(f"{row.name}: {r['checks_per_s']:,} checks/s, p99 {r['p99_ms']} ms, 503 contention {r['contention_503']}, "
                f"gateway {r['gateway_us_per_check']} us/check, Redis {r['redis_us_per_check']} us/check, "
                f"{r['calls_per_check']} calls / {r['round_trips_per_check']} round trips per check, "
                f"audit {'clean' if a['clean'] else 'FAILED ' + str(a.get('passed', [])[:5] + a.get('problems', [])[:5])}")
            results.append(r)
            print(json.dumps(r), flush=True)
    print(table(results))
    log(f"done in {time.monotonic() - started:.0f} s")
    return 0 if len(results) == len(rows) and all(r["audit"]["clean"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
