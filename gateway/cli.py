"""The command line (SPEC section 6): `flashguard serve` and `flashguard check-config`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from gateway.app import DEFAULT_MAX_INFLIGHT, make_app
from gateway.clock import Clock, ManualClock, SystemClock
from gateway.config import Config
from gateway.coordinator import Coordinator
from gateway.document import ConfigError, demo_config, load_config
from gateway.replay import print_report, replay
from snapshots.store import RestoreError, Store

log = logging.getLogger("flashguard")


def _within(kind: type[int] | type[float], low: float, high: float | None = None) -> Callable[[str], float]:
    """An argparse type for a number in [low, high]: a port of 99999 or a negative interval is a
    usage error at start, not a surprise later."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, not {text}")
        return value

    return parse


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flashguard", description="Order anti-abuse gateway for flash sales.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the gateway")
    serve.add_argument("--config", type=Path, help="TOML or JSON configuration (default: the embedded demo)")
    serve.add_argument("--data", type=Path, default=Path("data"), help="data directory (default: ./data)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_within(int, 1, 65535), default=8080)
    serve.add_argument("--manual-clock", action="store_true", help="time moves only by POST /v1/admin/clock")
    serve.add_argument("--reload-config", action="store_true", help="apply --config over a restored configuration")
    serve.add_argument("--max-inflight", type=_within(int, 1), default=DEFAULT_MAX_INFLIGHT, help="requests in flight before 429")
    serve.add_argument(
        "--fsync", choices=["always", "batch", "off"], default="batch", help="journal durability (see README)"
    )
    serve.add_argument("--snapshot-every", type=_within(float, 0), default=60.0, help="seconds between snapshots (0: only at stop)")
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", type=Path)
    rerun = sub.add_parser("replay", help="re-run logged orders against another configuration")
    rerun.add_argument("--config", type=Path, required=True, help="the configuration to try")
    rerun.add_argument("logs", type=Path, nargs="+", help="decision log files (DATA/decisions/*.jsonl)")
    return parser


def check_config(path: Path) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        for error in e.errors:
            print(f"{path}: {error}", file=sys.stderr)
        print(f"{path}: {len(e.errors)} error(s)", file=sys.stderr)
        return 1
    print(
        f"{path}: ok ({len(cfg.skus)} skus, {len(cfg.spus)} spus, {len(cfg.activities)} activities, "
        f"{len(cfg.coupons)} coupons, {len(cfg.rules)} rules)"
    )
    return 0


async def serve(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config) if args.config else demo_config()
    except ConfigError as e:
        for error in e.errors:
            log.error("%s: %s", args.config, error)
        return 2
    clock: Clock = ManualClock() if args.manual_clock else SystemClock()
    coordinator = Coordinator(Config(), clock)
    app = make_app(
        coordinator,
        store=Store(args.data, args.fsync),
        seed=cfg,
        reload_config=args.reload_config,
        snapshot_every=args.snapshot_every,
        max_inflight=args.max_inflight,
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    try:
        await runner.setup()
    except RestoreError as e:
        log.error("%s", e)
        return 3
    site = web.TCPSite(runner, args.host, args.port, backlog=4096)
    await site.start()
    log.info("listening on http://%s:%d", args.host, args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and args.reload_config and not args.config:
        # Without a file, the only thing to apply would be the demo: never over an operator's state.
        parser.error("--reload-config applies the --config file; name one")
    if args.command == "check-config":
        return check_config(args.file)
    if args.command == "replay":
        try:
            cfg = load_config(args.config)
        except ConfigError as e:
            print("\n".join(f"{args.config}: {err}" for err in e.errors), file=sys.stderr)
            return 1
        try:
            report = replay(cfg, args.logs)
        except OSError as e:
            print(f"{e.filename}: {e.strerror}", file=sys.stderr)
            return 1
        print_report(report)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    try:
        import uvloop

        return uvloop.run(serve(args))
    except ImportError:
        return asyncio.run(serve(args))


if __name__ == "__main__":
    sys.exit(main())
