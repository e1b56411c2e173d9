"""What each piece of the HTTP check path costs, alone, per request (issue 15).

The HTTP benchmark (`flash_sale`) gives the whole: a check's server time is 1 / its saturated
rate. This splits that time into the pieces our code adds on top of what aiohttp does for any
request, each run alone over the scenario's check bodies, best of `--repeat` rounds:

- `decode`: the body validated into a CheckRequest, and its digest (idempotency);
- `rules`: the coordinator's check with no journal (decide, hold), the idempotency encode included;
- `idempotency_encode`: of that, the msgpack encode of the first answer the order keeps;
- `journal_append`: the check's journal record encoded and buffered;
- `answer_encode`: the JSON answer;
- `stats`: the decision counters and the latency histogram (part of the decision log's drain);
- `decision_log_on_request`: what a check pays for its decision-log line and figures (it queues them);
- `decision_log_per_tick`: what the once-per-tick drain then pays per check: the figures counted,
  the line encoded (its JSON body spliced in as it came) and buffered;
- `middlewares`: the app's middleware around a handler that does nothing, less that handler
  called bare (aiohttp's own per-request work is the ceiling's, measured by `flash_sale`).

    python -m bench.hotpath [--checks 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from bench.scenario import Scenario
from domain.clock import ManualClock
from domain.document import build_config
from domain.schema import CheckRequest
from gateway.app import make_app
from gateway.codec import _json_encoder, digest
from gateway.decisions import DecisionLog
from gateway.stats import Stats
from node.coordinator import Coordinator
from rules.decide import _response_encoder
from snapshots.journal_files import encode as journal_encode

T0 = 1_800_000_000
PER_SECOND = 2_000  # checks per simulated second: holds expire and windows slide as in a sale


def best(repeat: int, n: int, run: Callable[[], object]) -> float:
    """Microseconds per item of the fastest of `repeat` rounds over `n` items."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return round(min(times) / n * 1e6, 2)


def measure(checks: int, repeat: int) -> dict[str, Any]:
    scenario = Scenario(users=100_000)
    bodies = [msgspec.json.encode(b) for b in scenario.bodies(checks)]
    requests = [msgspec.json.decode(b, type=CheckRequest) for b in bodies]
    digests = [digest(r) for r in requests]
    config = build_config(scenario.config())
    gc.collect()
    gc.freeze()

    def decode() -> None:
        for body in bodies:
            digest(msgspec.json.decode(body, type=CheckRequest))

    answers: list[Any] = []

    def rules() -> None:
        clock = ManualClock(T0)
        coordinator = Coordinator(config, clock)
        answers.clear()
        for i, (req, dig) in enumerate(zip(requests, digests)):
            if i % PER_SECOND == 0:
                clock.advance(1)
            answers.append(coordinator.check(req, dig)[0])

    figures: dict[str, Any] = {"rules": best(repeat, checks, rules)}
    figures["decode"] = best(repeat, checks, decode)
    figures["idempotency_encode"] = best(repeat, checks, lambda: [_response_encoder.encode(a) for a in answers])
    orders = Coordinator(config, ManualClock(T0))
    for req, dig in zip(requests, digests):
        orders.check(req, dig)
    records = [("check", o) for o in orders.orders.values()]
    figures["journal_append"] = best(repeat, checks, lambda: [journal_encode(i, r) for i, r in enumerate(records)])
    figures["answer_encode"] = best(repeat, checks, lambda: [_json_encoder.encode(a) for a in answers])

    def stats() -> None:
        s = Stats()
        for req, a in zip(requests, answers):
            s.observe_check(a, 0.0007, req)

    figures["stats"] = best(repeat, checks, stats)
    hot, drain = asyncio.run(_decision_log(requests, answers, bodies, repeat))
    figures["decision_log_on_request"], figures["decision_log_per_tick"] = hot, drain
    figures["middlewares"] = asyncio.run(_middlewares(config, checks, repeat))
    figures["ours_total"] = round(sum(v for k, v in figures.items() if k not in ("idempotency_encode", "stats")), 2)
    return {"bench": "hotpath", "checks": checks, "us_per_check": figures}


async def _decision_log(requests: list[CheckRequest], answers: list[Any], bodies: list[bytes], repeat: int) -> tuple[float, float]:
    """What a check's request pays (`DecisionLog.check`) and what the tick's `drain` pays for it
    (counting the figures included: `stats` is part of it)."""
    hot, drain = [], []
    for _ in range(repeat):
        log = DecisionLog(None, Stats())
        start = time.perf_counter()
        for req, a, body in zip(requests, answers, bodies):
            log.check(req, a, "v1", T0, 1, 0.0007, body)
        mid = time.perf_counter()
        log.drain()
        hot.append(mid - start)
        drain.append(time.perf_counter() - mid)
    n = len(requests)
    return round(min(hot) / n * 1e6, 2), round(min(drain) / n * 1e6, 2)


async def _middlewares(config: Any, n: int, repeat: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        app = make_app(Coordinator(config, ManualClock(T0)), log_dir=Path(tmp))
        ok = web.Response()

        async def nothing(request: web.Request) -> web.StreamResponse:
            return ok

        chain: Callable[[web.Request], Any] = nothing
        for m in reversed(app.middlewares):  # as aiohttp builds it
            chain = partial(m, handler=chain)
        request = make_mocked_request("POST", "/v1/orders/check", app=app)

        async def rounds(handler: Callable[[web.Request], Any]) -> float:
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                for _ in range(n):
                    await handler(request)
                times.append(time.perf_counter() - start)
            return min(times) / n * 1e6

        return round(await rounds(chain) - await rounds(nothing), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args.checks, args.repeat)))


if __name__ == "__main__":
    main()
