"""Real redis-server processes for tests: a standalone server, a one-node cluster, a 3+3 cluster.

Loaded by tests/conftest.py as a pytest plugin. Every server is a real `redis-server` (Debian's, or
whatever is first on PATH) started on a free loopback port in a pytest tmp dir, awaited until it
answers PING, and ended after its scope (SIGTERM, then SIGKILL after `STOP_TIMEOUT`). Ports come
from 20000-24999 (below the kernel's ephemeral range; a cluster's bus port is port + 10000), never
6379, so a system redis-server left running by the Debian package cannot collide with them.

Fixtures:
  redis_single        session: one standalone server, appendonly yes, appendfsync everysec.
  redis_url           function: FLUSHALL + FUNCTION FLUSH on `redis_single`, then its redis:// URL.
  redis_cluster_1     session: a one-node cluster holding all 16,384 slots (it still refuses
                      cross-slot commands and function calls, as a real cluster does).
  redis_cluster_1_url function: the same flush on `redis_cluster_1`, then its URL.
  redis_cluster_6     module: 3 primaries + 3 replicas made by `redis-cli --cluster create`,
                      cluster-node-timeout 1000; only for tests marked `@pytest.mark.cluster6`.
                      `Cluster.kill_primary` and `Cluster.wait_failover` break and heal it; a killed
                      node stays down for the rest of the module.

Nothing here sleeps except between the tries of a bounded polling loop (`poll`).
"""

from __future__ import annotations

import atexit
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

try:
    import redis
except ImportError as e:  # pragma: no cover - a setup error, said plainly
    raise ImportError("tests/redis_servers.py needs redis-py (pip install redis); it belongs in the "
                      "[dev] extras of pyproject.toml so that `.ci/run` installs it") from e

HOST = "127.0.0.1"
SLOTS = 16384
PORTS = range(20000, 25000)
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
CLUSTER_TIMEOUT = 20.0
FAILOVER_TIMEOUT = 15.0
NODE_TIMEOUT_MS = 1000

MISSING = (
    "{name} is not on PATH: the Redis tests need Debian's redis-server and redis-tools. "
    "`.ci/run` installs them (bash .ci/redis-deps.sh); run that script, or apt-get install "
    "redis-server redis-tools, and run the tests again"
)

T = TypeVar("T")

_started: list[subprocess.Popen[bytes]] = []


class NotReady(Exception):
    """Raised by a `poll` check: not there yet, with the reason shown if time runs out."""


def poll(what: str, check: Callable[[], T], timeout: float, interval: float = 0.02) -> T:
    """`check()` until it returns without raising NotReady, a Redis error or an OSError; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (NotReady, redis.RedisError, OSError) as e:
            reason = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s (last: {reason})")
        time.sleep(interval)


def executable(name: str) -> str:
    """The path of `name`, or a test failure that says how to install it (never a skip)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(MISSING.format(name=name) + (" (CI is set: this is an error)" if os.environ.get("CI") else ""),
                    pytrace=False)
    return path


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A loopback port that is free now, and whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = random.choice(PORTS)
        if _bindable(port) and _bindable(port + 10000):
            return port
    raise RuntimeError(f"no free loopback port pair in {PORTS.start}-{PORTS.stop - 1}")


def _parent_death_signal() -> Callable[[], None] | None:
    """On Linux, a pre-exec hook that has the kernel SIGTERM the server if pytest itself dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1

    def hook() -> None:
        prctl(pr_set_pdeathsig, int(signal.SIGTERM))

    return hook


_PREEXEC = _parent_death_signal()


def _end(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process in _started:
        _started.remove(process)


@atexit.register
def _end_all() -> None:
    """Last resort should a fixture's finalizer not run (an interrupted session)."""
    for process in list(_started):
        _end(process)


def parse_fields(text: str) -> dict[str, str]:
    """`key:value` lines (CLUSTER INFO) as a dict."""
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)


class RedisServer:
    """One redis-server process: its port, directory and pid, and a few admin calls."""

    def __init__(self, directory: Path, port: int, config: dict[str, str]) -> None:
        self.directory = directory
        self.port = port
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self.node_id = ""
        self.startup_seconds = 0.0

    def __repr__(self) -> str:
        return f"RedisServer({HOST}:{self.port}, pid={self.pid})"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_timeout=2.0,
                           socket_connect_timeout=1.0)

    def call(self, *args: Any) -> Any:
        """One command on a fresh connection (closed after)."""
        with self.client() as r:
            return r.execute_command(*args)

    def info(self, section: str) -> dict[str, Any]:
        with self.client() as r:
            info: dict[str, Any] = r.info(section)
            return info

    @property
    def role(self) -> str:
        """'primary', 'replica', or 'down' when the process is not running."""
        if not self.alive:
            return "down"
        return "primary" if self.info("replication")["role"] == "master" else "replica"

    def start(self) -> None:
        """Start the process (again, with the same port, directory and data) and await PING."""
        assert not self.alive, f"{self} is running already"
        lines = [f"{key} {value}" for key, value in self.config.items()]
        (self.directory / "redis.conf").write_text("\n".join(lines) + "\n")
        began = time.monotonic()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [executable("redis-server"), str(self.directory / "redis.conf")],
                cwd=self.directory, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_PREEXEC,
            )
        _started.append(self.process)

        def answers() -> None:
            if self.process is not None and self.process.poll() is not None:
                raise ServerExited(f"{self} exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.call("PING") is not True:
                raise NotReady("no PONG")

        try:
            poll(f"{self} answering PING", answers, START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        if self.config.get("cluster-enabled") == "yes":
            self.node_id = self.call("CLUSTER", "MYID")
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT; waits for the process to end."""
        if self.process is not None:
            _end(self.process)

    def kill(self) -> None:
        """kill -9, and wait until the process is gone (its port closes with it)."""
        assert self.process is not None and self.alive, f"{self} is not running"
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT)
        if self.process in _started:
            _started.remove(self.process)


class ServerExited(RuntimeError):
    """The redis-server process ended while it was being started."""


def server_config(directory: Path, port: int, *, cluster: bool) -> dict[str, str]:
    config = {
        "port": str(port),
        "bind": HOST,
        "protected-mode": "yes",
        "daemonize": "no",
        "dir": f'"{directory}"',
        "logfile": '""',
        "save": '""',
        "appendonly": "yes",
        "appendfsync": "everysec",
        "repl-diskless-sync-delay": "0",
    }
    if cluster:
        config |= {
            "cluster-enabled": "yes",
            "cluster-config-file": "nodes.conf",
            "cluster-node-timeout": str(NODE_TIMEOUT_MS),
            "cluster-announce-ip": HOST,
        }
    return config


def start_server(directory: Path, *, cluster: bool = False, attempts: int = 5) -> RedisServer:
    """A started server on a free port in `directory`; another port if one was taken meanwhile."""
    executable("redis-server")
    for attempt in range(attempts):
        port = free_port()
        server = RedisServer(directory, port, server_config(directory, port, cluster=cluster))
        try:
            server.start()
        except ServerExited:
            if "Address already in use" not in server.log_tail() or attempt == attempts - 1:
                raise
            server.log.unlink(missing_ok=True)
            continue
        return server
    raise AssertionError("unreachable")


def flush(server: RedisServer) -> None:
    """Every key and every function library gone, synchronously."""
    if not server.alive:
        pytest.fail(f"{server} is not running (a test ended it?):\n{server.log_tail()}", pytrace=False)
    server.call("FLUSHALL", "SYNC")
    server.call("FUNCTION", "FLUSH", "SYNC")
    server.call("SCRIPT", "FLUSH", "SYNC")


@dataclass(frozen=True)
class NodeView:
    """One line of CLUSTER NODES: a node as one member of the cluster sees it."""

    node_id: str
    port: int
    flags: frozenset[str]
    primary_id: str
    connected: bool
    slots: int

    @property
    def is_primary(self) -> bool:
        return "master" in self.flags

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?", "handshake", "noaddr"})


def _slot_count(ranges: list[str]) -> int:
    count = 0
    for item in ranges:
        if item.startswith("["):  # a slot being imported or migrated
            continue
        low, _, high = item.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def cluster_nodes(server: RedisServer) -> dict[str, NodeView]:
    views = {}
    for line in str(server.call("CLUSTER", "NODES")).splitlines():
        fields = line.split()
        address = fields[1].split("@", 1)[0]
        views[fields[0]] = NodeView(
            node_id=fields[0],
            port=int(address.rsplit(":", 1)[1]),
            flags=frozenset(fields[2].split(",")),
            primary_id=fields[3],
            connected=fields[7] == "connected",
            slots=_slot_count(fields[8:]),
        )
    return views


def cluster_state_ok(server: RedisServer) -> None:
    """NotReady unless this node says cluster_state:ok with all 16,384 slots ok."""
    info = parse_fields(str(server.call("CLUSTER", "INFO")))
    if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
        raise NotReady(f"{server}: cluster_state:{info.get('cluster_state')} "
                       f"cluster_slots_ok:{info.get('cluster_slots_ok')}")


class Cluster:
    """A Redis Cluster of real processes: its nodes, their live roles, and ways to break it."""

    def __init__(self, nodes: list[RedisServer], primaries: int) -> None:
        self.nodes = nodes
        self.expected_primaries = primaries
        self.startup_seconds = 0.0
        self._heirs: list[RedisServer] = []

    def __repr__(self) -> str:
        return "Cluster(" + ", ".join(f"{n.port}:{n.role}" for n in self.nodes) + ")"

    @property
    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.alive]

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every running node, for a cluster client."""
        return [(HOST, n.port) for n in self.live]

    @property
    def url(self) -> str:
        return self.live[0].url

    def roles(self) -> list[tuple[RedisServer, str, int]]:
        """(node, 'primary' | 'replica' | 'down', pid) for every node, asked of each process now."""
        return [(n, n.role, n.pid) for n in self.nodes]

    def primaries(self) -> list[RedisServer]:
        return [n for n in self.live if n.role == "primary"]

    def replicas(self) -> list[RedisServer]:
        return [n for n in self.live if n.role == "replica"]

    def by_id(self, node_id: str) -> RedisServer:
        return next(n for n in self.nodes if n.node_id == node_id)

    def replicas_of(self, primary: RedisServer) -> list[RedisServer]:
        views = cluster_nodes(primary)
        return [self.by_id(v.node_id) for v in views.values()
                if v.primary_id == primary.node_id and not v.is_primary]

    def primary_for_slot(self, slot: int) -> RedisServer:
        """The node that serves `slot`, as the first running node's CLUSTER SHARDS says."""
        for shard in self.live[0].call("CLUSTER", "SHARDS"):
            ranges = shard["slots"] if isinstance(shard, dict) else shard[1]
            if any(low <= slot <= high for low, high in zip(ranges[::2], ranges[1::2])):
                nodes = shard["nodes"] if isinstance(shard, dict) else shard[3]
                for node in nodes:
                    node = node if isinstance(node, dict) else dict(zip(node[::2], node[1::2]))
                    if node["role"] == "master":
                        return self.by_id(node["id"])
        raise LookupError(f"slot {slot} is served by no node")

    def settled(self) -> None:
        """NotReady unless every running node is in agreement on a healthy cluster.

        Each running node says cluster_state:ok with all slots ok; each one's CLUSTER NODES knows
        every running node, none failing, with the role that node has itself; exactly the running
        primaries hold slots, `expected_primaries` of them; and every running replica has its link
        to its primary up, with no sync in progress.
        """
        live = self.live
        for node in live:
            cluster_state_ok(node)
        roles = {n.node_id: n.role for n in live}
        owners = {n.node_id for n in live if roles[n.node_id] == "primary"}
        if len(owners) != self.expected_primaries:
            raise NotReady(f"{len(owners)} running primaries, not {self.expected_primaries}")
        for node in live:
            views = cluster_nodes(node)
            for node_id, role in roles.items():
                view = views.get(node_id)
                if view is None or view.failing or (node_id != node.node_id and not view.connected):
                    raise NotReady(f"{node} sees {self.by_id(node_id)} as {view}")
                if view.is_primary != (role == "primary"):
                    raise NotReady(f"{node} sees {self.by_id(node_id)} as {sorted(view.flags)}, not {role}")
            holders = {v.node_id for v in views.values() if v.slots}
            if holders != owners:
                raise NotReady(f"{node} sees slots on {holders}, the running primaries are {owners}")
        for node in live:
            if roles[node.node_id] == "replica":
                info = node.info("replication")
                if info.get("master_link_status") != "up" or info.get("master_sync_in_progress") != 0:
                    raise NotReady(f"{node}: master_link_status:{info.get('master_link_status')} "
                                   f"master_sync_in_progress:{info.get('master_sync_in_progress')}")

    def wait_ok(self, timeout: float = CLUSTER_TIMEOUT) -> None:
        poll(f"{self} settled", self.settled, timeout)

    def kill_primary(self, node: RedisServer) -> None:
        """kill -9 a primary's process; `wait_failover` then awaits one of its replicas promoted."""
        assert node.role == "primary", f"{node} is {node.role}, not a primary"
        heirs = self.replicas_of(node)
        assert heirs, f"{node} has no replica to take over"
        node.kill()
        self._heirs = heirs

    def wait_failover(self, timeout: float = FAILOVER_TIMEOUT) -> RedisServer:
        """After `kill_primary`: wait (bounded) until one of its replicas is a primary and the
        cluster is settled again; returns the promoted node."""
        assert self._heirs, "no primary was killed"

        def promoted() -> RedisServer:
            heir = next((n for n in self._heirs if n.alive and n.role == "primary"), None)
            if heir is None:
                raise NotReady("no replica of the killed primary promoted yet")
            self.settled()
            return heir

        heir = poll(f"failover to one of {self._heirs}", promoted, timeout, interval=0.05)
        self._heirs = []
        return heir

    def flush(self) -> None:
        """FLUSHALL + FUNCTION FLUSH on every running primary (replicas follow)."""
        for node in self.primaries():
            flush(node)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def start_cluster_1(directory: Path) -> RedisServer:
    """A one-node cluster holding every slot, awaited until cluster_state:ok."""
    began = time.monotonic()
    server = start_server(directory, cluster=True)
    try:
        server.call("CLUSTER", "ADDSLOTSRANGE", 0, SLOTS - 1)
        poll(f"{server} cluster_state:ok", lambda: cluster_state_ok(server), CLUSTER_TIMEOUT)
    except BaseException:
        server.stop()
        raise
    server.startup_seconds = time.monotonic() - began
    return server


def start_cluster_6(directory: Path) -> Cluster:
    """3 primaries + 3 replicas by `redis-cli --cluster create`, awaited until settled."""
    began = time.monotonic()
    cli = executable("redis-cli")
    cluster = Cluster([], primaries=3)
    try:
        for i in range(6):
            node_dir = directory / f"node-{i}"
            node_dir.mkdir()
            cluster.nodes.append(start_server(node_dir, cluster=True))
        create = subprocess.run(
            [cli, "--cluster", "create", *(f"{HOST}:{n.port}" for n in cluster.nodes),
             "--cluster-replicas", "1", "--cluster-yes"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
        )
        if create.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed ({create.returncode}):\n"
                               f"{create.stdout}\n{create.stderr}")
        cluster.wait_ok()
    except BaseException:
        cluster.stop()
        raise
    cluster.startup_seconds = time.monotonic() - began
    return cluster


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def redis_single(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One standalone redis-server for the session; use `redis_url` to get it flushed."""
    server = start_server(tmp_path_factory.mktemp("redis-single"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_single: RedisServer) -> str:
    """`redis_single`'s URL, with no key and no function library left from an earlier test."""
    flush(redis_single)
    return redis_single.url


@pytest.fixture(scope="session")
def redis_cluster_1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A one-node Redis Cluster (all 16,384 slots on it) for the session."""
    server = start_cluster_1(tmp_path_factory.mktemp("redis-cluster-1"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_cluster_1_url(redis_cluster_1: RedisServer) -> str:
    """`redis_cluster_1`'s URL, flushed of keys and function libraries."""
    flush(redis_cluster_1)
    return redis_cluster_1.url


@pytest.fixture(scope="module")
def redis_cluster_6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3+3 Redis Cluster for one test module (slow: only for tests marked cluster6)."""
    cluster = start_cluster_6(tmp_path_factory.mktemp("redis-cluster-6"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The 6-node cluster is slow: a test that uses it must say so, so `-m 'not cluster6'` works."""
    if "redis_cluster_6" in getattr(item, "fixturenames", ()) and item.get_closest_marker("cluster6") is None:
        pytest.fail(f"{item.nodeid} uses redis_cluster_6 but is not marked @pytest.mark.cluster6", pytrace=False)

