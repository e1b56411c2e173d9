"""The connection to Redis: one node or a Redis Cluster, the Functions library, and calls.

`connect` finds out which the URL names (a node that says `cluster_enabled:1` is asked for its
cluster), makes sure the library this gateway was built with is the one loaded (loading it into
an empty store; refusing another version), and returns a `Redis` whose `batch` sends many
Function calls in one round: one pipeline per node, the nodes in parallel.

Every failure to reach Redis becomes `RedisDown`, which the HTTP layer answers with 503: a check
fails closed, and the caller retries once Redis is back (the client reconnects by itself).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError
from redis.maint_notifications import MaintNotificationsConfig

LIBRARY = (Path(__file__).parent / "flashguard.lua").read_text()
LIBRARY_NAME = "flashguard"
TIMEOUT = 2.0  # seconds for one call: past it, Redis counts as unreachable for this request
# Batches in flight at once; the others wait their turn. Each holds one connection per node it
# calls, so the pools (CONNECTIONS per node) never run dry: redis-py's cluster client answers a dry
# pool with an error that makes it drop every connection, failing the calls in flight with them.
BATCHES = 64
CONNECTIONS = BATCHES + 16  # the configuration poll, the sweeper, admin reads
WAIT_MS = 1000  # how long a write waits for its replicas with --redis-wait-replicas

Call = tuple[str, Sequence[str], Sequence[Any]]


class RedisDown(Exception):
    """Redis could not be reached, or answered with an error: nothing was acknowledged."""


class LibraryMismatch(RuntimeError):
    """The store holds another version of the Functions library."""


class _Cluster(RedisCluster):
    """redis-py asks a node `COMMAND GETKEYS` to route every FCALL (a round trip per call); an
    FCALL names its keys itself (`FCALL fn numkeys key...`), so read them from the arguments."""

    async def _determine_slot(self, command: str, *args: Any) -> int:
        if command.upper() == "FCALL":
            keys = args[2 : 2 + int(args[1])]
            slots = {self.keyslot(k) for k in keys}
            if len(slots) == 1:
                return slots.pop()
        return await super()._determine_slot(command, *args)


class Redis:
    def __init__(self, client: aioredis.Redis | _Cluster, clustered: bool, wait_replicas: int = 0) -> None:
        self.client = client
        self.clustered = clustered
        self.wait_replicas = wait_replicas
        self._slots = asyncio.Semaphore(BATCHES)

    async def call(self, fn: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return (await self.batch([(fn, keys, args)]))[0]

    async def batch(self, calls: list[Call]) -> list[Any]:
        """Every call's answer, in order. A call that Redis refused raises (after all were sent)."""
        if not calls:
            return []
        try:
            pipe = self.client.pipeline(transaction=False)
            for fn, keys, args in calls:
                pipe.execute_command("FCALL", fn, len(keys), *keys, *args)
            waits = self._wait(pipe, calls)
            async with self._slots, asyncio.timeout(TIMEOUT):
                answers = list(await pipe.execute())
        except (RedisError, OSError, TimeoutError) as e:
            raise RedisDown(f"{type(e).__name__}: {e}") from None
        if waits:
            acked = min(answers[-waits:])
            if acked < self.wait_replicas:
                raise RedisDown(f"only {acked} of {self.wait_replicas} replicas acknowledged the write within {WAIT_MS} ms")
            del answers[-waits:]
        return answers

    def _wait(self, pipe: Any, calls: list[Call]) -> int:
        """With `wait_replicas`, end each primary's part of the pipeline with WAIT: it runs on the
        connection that sent the calls, after them (a Function cannot wait inside itself), and
        answers how many replicas have them. Returns how many WAITs were added."""
        if not self.wait_replicas:
            return 0
        if not isinstance(self.client, _Cluster):
            pipe.execute_command("WAIT", self.wait_replicas, WAIT_MS)
            return 1
        primaries = {}
        for _, keys, _ in calls:
            node = self.client.get_node_from_key(keys[0])
            if node is None:
                raise RedisDown(f"no primary serves the slot of {keys[0]!r}")
            primaries[node.name] = node
        for node in primaries.values():
            pipe.execute_command("WAIT", self.wait_replicas, WAIT_MS, target_nodes=node)
        return len(primaries)

    async def get(self, key: str) -> bytes | None:
        try:
            async with asyncio.timeout(TIMEOUT):
                value = await self.client.get(key)
                return value.encode() if isinstance(value, str) else value
        except (RedisError, OSError, TimeoutError) as e:
            raise RedisDown(f"{type(e).__name__}: {e}") from None

    async def set(self, key: str, value: bytes | str | int) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                await self.client.set(key, value)
        except (RedisError, OSError, TimeoutError) as e:
            raise RedisDown(f"{type(e).__name__}: {e}") from None

    async def close(self) -> None:
        await self.client.aclose()


async def connect(url: str, wait_replicas: int = 0) -> Redis:
    """Connect, detect a cluster, and make sure our Functions library is the one loaded. With
    `wait_replicas`, every batch returns only once that many replicas of each primary it wrote to
    hold it (else it fails as `RedisDown`: not acknowledged)."""
    # Maintenance notifications (redis-py 8's default with RESP3) are a Redis 8 handshake: against
    # 7.0 it fails on every new connection, and under a burst of them left closed transports in
    # the pool (RuntimeError on the next call). Off: a failover is followed through MOVED anyway.
    options: dict[str, Any] = {
        "socket_timeout": TIMEOUT,
        "socket_connect_timeout": TIMEOUT,
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
        "max_connections": CONNECTIONS,
    }
    probe = aioredis.Redis.from_url(url, **options)
    try:
        info = await probe.info("cluster")
    except (RedisError, OSError) as e:
        await probe.aclose()
        raise RedisDown(f"cannot reach Redis at {url}: {e}") from None
    if info.get("cluster_enabled"):
        await probe.aclose()
        cluster = _Cluster.from_url(url, **options)
        assert isinstance(cluster, _Cluster)
        redis = Redis(cluster, clustered=True, wait_replicas=wait_replicas)
    else:
        redis = Redis(probe, clustered=False, wait_replicas=wait_replicas)
    try:
        await _load_library(redis)
    except BaseException:
        await redis.close()
        raise
    return redis


async def _load_library(redis: Redis) -> None:
    """Load the library where it is missing; refuse to run beside another version of it. (On a
    cluster the library is loaded on every primary; replicas get it by replication.)"""
    client = redis.client
    try:
        codes = _codes(await client.function_list(library=LIBRARY_NAME, withcode=True))
        if not codes:
            await client.function_load(LIBRARY)
            return
    except ResponseError as e:
        raise RedisDown(f"Redis refused the Functions library (Redis 7 or later is needed): {e}") from None
    except (RedisError, OSError) as e:
        raise RedisDown(str(e)) from None
    if any(code != LIBRARY for code in codes):
        theirs = next((_version(c) for c in codes if c != LIBRARY), "?")
        raise LibraryMismatch(
            f"Redis holds flashguard's Functions library version {theirs}; this gateway runs version "
            f"{_version(LIBRARY)}. Stop the gateways of the other version, then load this one with "
            f"'redis-cli FUNCTION DELETE {LIBRARY_NAME}' (on every primary) and start again"
        )


def _codes(listed: Any) -> list[str]:
    """The library code from a FUNCTION LIST answer: one entry per node on a cluster (a dict of
    node -> answer), or one answer."""
    answers = listed.values() if isinstance(listed, dict) else [listed]
    codes: list[str] = []
    for answer in answers:
        for lib in answer or []:
            fields = dict(zip(lib[::2], lib[1::2])) if isinstance(lib, list) else lib
            code = fields.get(b"library_code", fields.get("library_code"))
            if code is not None:
                codes.append(code.decode() if isinstance(code, bytes) else code)
    return codes


def _version(code: str) -> str:
    """The library's VERSION and a digest of its code: two builds of one version still differ."""
    version = next((line.split("=", 1)[1].strip().strip("'\"") for line in code.splitlines() if line.startswith("local VERSION")), "?")
    return f"{version} ({hashlib.sha1(code.encode()).hexdigest()[:8]})"
