"""The command line (SPEC section 6): `flashguard serve`, `check-config` and `replay`."""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib.metadata
import json
import logging
import math
import os
import shlex
import signal
import socket
import sys
import tomllib
from collections.abc import Callable, Coroutine
from typing import Any
from pathlib import Path

from aiohttp import web

from cluster.config_store import ConfigStore
from cluster.connection import LibraryMismatch, RedisDown, connect
from cluster.coordinator import ClusterCoordinator
from gateway.app import DEFAULT_MAX_INFLIGHT, make_app
from domain.clock import Clock, ManualClock, SystemClock
from domain.config import Config
from node.coordinator import Coordinator
from domain.document import ConfigError, load_config
from gateway.replay import print_report, replay
from gateway.workers import supervise
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


DEMO_CONFIG = Path(__file__).with_name("demo.toml")


def demo_config() -> Config:
    """The embedded demo configuration that `flashguard serve` runs on when given no --config."""
    return load_config(DEMO_CONFIG)


def _version() -> str:
    """The installed distribution's version; from a source tree that was never installed, pyproject's."""
    try:
        return importlib.metadata.version("flashguard")
    except importlib.metadata.PackageNotFoundError:
        with open(Path(__file__).parent.parent / "pyproject.toml", "rb") as f:
            return str(tomllib.load(f)["project"]["version"])


def _parser() -> argparse.ArgumentParser:
    """Every option's help says its default, so `--help` answers what a bare `serve` does."""
    parser = argparse.ArgumentParser(prog="flashguard", description="Order anti-abuse gateway for flash sales.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the gateway")
    serve.add_argument("--config", type=Path, help="TOML or JSON configuration (default: the embedded demo)")
    serve.add_argument("--data", type=Path, default=Path("data"), help="data directory (default: ./data)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    serve.add_argument("--port", type=_within(int, 1, 65535), default=8080, help="port to listen on (default: %(default)s)")
    serve.add_argument(
        "--manual-clock", action="store_true", help="time moves only by POST /v1/admin/clock (default: the system clock)"
    )
    serve.add_argument(
        "--reload-config", action="store_true",
        help="apply --config over a restored configuration (default: the restored one stands)",
    )
    serve.add_argument(
        "--max-inflight", type=_within(int, 1), default=DEFAULT_MAX_INFLIGHT,
        help="requests in flight before 429 (default: %(default)s)",
    )
    serve.add_argument(
        "--fsync", choices=["always", "batch", "off"], default="batch",
        help="journal durability, see README (default: %(default)s)",
    )
    serve.add_argument(
        "--snapshot-every", type=_within(float, 0), default=60.0,
        help="seconds between snapshots, 0: only at stop (default: %(default)s)",
    )
    serve.add_argument(
        "--redis", metavar="URL",
        help="cluster mode: keep the state in this Redis or Redis Cluster (any node), e.g. redis://10.0.0.5:7000;"
        " --data then holds only the decision log (default: single node, state in memory)",
    )
    serve.add_argument(
        "--workers", type=_within(int, 1, 256), default=1, metavar="N",
        help="cluster mode: N gateway processes on the one port, one per core (default: %(default)s)",
    )
    serve.add_argument(
        "--redis-wait-replicas", type=_within(int, 0), default=0, metavar="N",
        help="cluster mode: acknowledge a decision only once N replicas of each primary hold it, by WAIT (default: %(default)s)",
    )
    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", type=Path)
    rerun = sub.add_parser("replay", help="re-run logged orders against another configuration")
    rerun.add_argument("--config", type=Path, required=True, help="the configuration to try (required)")
    rerun.add_argument("--json", action="store_true", help="print the report as one JSON document (default: a readable report)")
    rerun.add_argument("logs", type=Path, nargs="+", help="decision log files (DATA/decisions/*.jsonl)")
    return parser


def check_config(path: Path) -> int:
    """Every error and warning of the file at once; only errors fail it (the server refuses them)."""
    from domain.document import read_config, read_document

    try:
        cfg, warnings = read_config(read_document(path))
    except ConfigError as e:
        for line in [*e.errors, *(f"warning: {w}" for w in e.warnings), f"{len(e.errors)} error(s)"]:
            print(f"{path}: {line}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"{path}: warning: {warning}", file=sys.stderr)
    print(
        f"{path}: ok ({len(cfg.skus)} skus, {len(cfg.spus)} spus, {len(cfg.activities)} activities, "
        f"{len(cfg.coupons)} coupons, {len(cfg.rules)} rules)" + (f" ({len(warnings)} warning(s))" if warnings else "")
    )
    return 0


def _port_holder(port: int) -> int | None:
    """The pid of a process listening on `port`, when /proc shows it (Linux, and only processes
    this user may inspect): the socket's inode from /proc/net/tcp*, then whose descriptor it is."""
    sockets = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()  # sl local_address rem_address st ... inode
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                sockets.add(f"socket:[{fields[9]}]")
    for pid in filter(str.isdigit, os.listdir("/proc") if sockets else []):
        try:
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") in sockets for fd in os.listdir(f"/proc/{pid}/fd")):
                return int(pid)
        except OSError:
            continue
    return None


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, made before anything touches the data directory: a start that cannot
    listen must not seed it (a later start's --config would then be ignored as a restart's)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does: a restart need not wait out TIME_WAIT
        sock.bind(address)
        sock.listen(4096)
    except OSError:
        sock.close()
        raise
    return sock


def _cannot_listen(host: str, port: int, error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        pid = _port_holder(port)
        return f"port {port} is in use{f' (pid {pid})' if pid else ''}; choose another with --port"
    return f"cannot listen on {host}:{port}: {error.strerror or error}"


def serve(args: argparse.Namespace, argv: list[str]) -> int:
    """Load the configuration and bind the socket, then serve in this process or in `--workers`."""
    try:
        cfg = load_config(args.config) if args.config else demo_config()
    except ConfigError as e:
        for error in e.errors:
            log.error("%s: %s", args.config, error)
        return 2
    if args.workers > 1 and not args.redis:
        log.error("--workers needs --redis: a single node keeps its state in one process")
        return 2
    try:
        sock = _listen(args.host, args.port)
    except OSError as e:
        log.error("%s", _cannot_listen(args.host, args.port, e))
        return 2
    if args.workers == 1:
        return _run(_serve(args, argv, cfg, sock, None))
    return supervise(args.workers, sock, lambda shared, index: _run(_serve(args, argv, cfg, shared, index)))


def _run(main: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return uvloop.run(main)
    except ImportError:
        return asyncio.run(main)


async def _serve(args: argparse.Namespace, argv: list[str], cfg: Config, sock: socket.socket, worker: int | None) -> int:
    """One gateway on `sock` until SIGTERM or SIGINT (`worker`: its index under --workers)."""
    if args.redis:
        try:
            redis = await connect(args.redis, args.redis_wait_replicas)
        except (RedisDown, LibraryMismatch) as e:
            log.error("%s", e)
            sock.close()
            return 2
        cluster = ClusterCoordinator(redis, ConfigStore(redis), SystemClock(), manual_clock=args.manual_clock)
        app = make_app(
            cluster,
            seed=cfg,
            reload_config=args.reload_config,
            max_inflight=args.max_inflight,
            log_dir=args.data / "decisions" / f"worker-{worker}" if worker is not None else args.data / "decisions",
        )
    else:
        clock: Clock = ManualClock() if args.manual_clock else SystemClock()
        # Without --config the start-up configuration is the demo: on a restart there is nothing to apply.
        reload_command = shlex.join(["flashguard", *argv, "--reload-config"]) if args.config else None
        app = make_app(
            Coordinator(Config(), clock),
            store=Store(args.data, args.fsync, reload_command=reload_command),
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
        sock.close()
        return 3
    except RedisDown as e:
        log.error("%s", e)
        sock.close()
        return 2
    except ConfigError as e:  # --reload-config over a stored configuration it cannot replace
        for error in e.errors:
            log.error("%s: %s", args.config, error)
        sock.close()
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before "listening": from then on a SIGTERM stops cleanly
        loop.add_signal_handler(sig, stop.set)
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    log.info("listening on http://%s:%d%s", args.host, args.port, f" (worker {worker})" if worker is not None else "")
    await stop.wait()
    log.info("stopping")
    await runner.cleanup()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
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
        if args.json:
            print(json.dumps(report.to_json()))
        else:
            print_report(report)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    return serve(args, argv)


if __name__ == "__main__":
    sys.exit(main())
