"""Checks per second of the coordinator in-process (no HTTP), on the scenario's realistic mix.

Prints one JSON line: checks/s for the coordinator alone (requests already decoded) and for the
whole in-process path (decode JSON + check + encode the answer), the decision mix, and the
resident memory. Time advances one second every `--per-second` checks so holds expire and
windows slide as they would in a sale.

    python -m bench.engine [--checks 200000] [--rules 10] [--users 100000]
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
from collections import Counter

import msgspec

from bench.scenario import Scenario
from domain.clock import ManualClock
from gateway.codec import digest
from node.coordinator import Coordinator
from domain.document import build_config
from domain.schema import CheckRequest

T0 = 1_800_000_000


def run(checks: int, rules: int, users: int, per_second: int) -> dict[str, object]:
    scenario = Scenario(users=users, rules=rules)
    bodies = [msgspec.json.encode(b) for b in scenario.bodies(checks)]
    requests = [msgspec.json.decode(b, type=CheckRequest) for b in bodies]
    digests = [digest(r) for r in requests]
    encoder = msgspec.json.Encoder()

    def fresh() -> tuple[Coordinator, ManualClock]:
        clock = ManualClock(T0)
        return Coordinator(build_config(scenario.config()), clock), clock

    gc.collect()
    gc.freeze()

    # The coordinator alone.
    coordinator, clock = fresh()
    decisions: Counter[str] = Counter()
    start = time.perf_counter()
    for i, (req, dig) in enumerate(zip(requests, digests)):
        if i % per_second == 0:
            clock.advance(1)
        decisions[coordinator.check(req, dig)[0].decision.value] += 1
    core = time.perf_counter() - start

    # The whole in-process path: decode, digest, check, encode.
    coordinator, clock = fresh()
    start = time.perf_counter()
    for i, body in enumerate(bodies):
        if i % per_second == 0:
            clock.advance(1)
        req = msgspec.json.decode(body, type=CheckRequest)
        encoder.encode(coordinator.check(req, digest(req))[0])
    full = time.perf_counter() - start

    return {
        "bench": "engine",
        "checks": checks,
        "users": users,
        "rules": rules,
        "checks_per_s": round(checks / core),
        "us_per_check": round(core / checks * 1e6, 2),
        "with_codec_checks_per_s": round(checks / full),
        "decisions": dict(decisions),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", type=int, default=200_000)
    parser.add_argument("--rules", type=int, default=10)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--per-second", type=int, default=20_000, help="checks per simulated second")
    args = parser.parse_args()
    print(json.dumps(run(args.checks, args.rules, args.users, args.per_second)))


if __name__ == "__main__":
    main()
